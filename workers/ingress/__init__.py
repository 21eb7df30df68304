"""Ingress workers: what turns vendor pushes into domain events on Kafka.

WHMCS webhooks: ``webhook_server`` (the receiver; ``fleet run whmcs-webhooks`` calls its ``serve``),
``whmcs_webhooks`` (translate); its webhook-id marks are ``adapters.webhook_dedupe``. Salesforce CDC:
``sf_cdc`` (the worker), ``cdc_source``, ``cdc_translate``, ``watermark`` (what may be checkpointed);
the checkpoint rows are ``adapters.cdc_checkpoints``. Must not: consume Kafka (that is
``workers.runtime``) or hold the SQL or Redis commands of its stores (``adapters/``).
"""
