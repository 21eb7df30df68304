"""Ingress workers: what turns vendor pushes into domain events on Kafka.

WHMCS webhooks: ``webhook_server`` (the receiver; ``fleet run whmcs-webhooks`` calls its ``serve``),
``whmcs_webhooks`` (translate), ``dedupe`` (webhook-id marks). Salesforce CDC: ``sf_cdc`` (the
worker), ``cdc_source``, ``cdc_translate``, ``checkpoints``. Must not: consume Kafka (that is
``workers.runtime``).
"""
