"""The order fulfillment flow (``fleet run fulfillment``): a per-order saga persisted in PostgreSQL.

``model`` (steps, states, error codes, outcomes), ``plan`` (validation of the Salesforce order),
``policy`` (what a rejection means, polling cadence), ``steps`` (what each step does at the
vendors), ``writeback`` (Salesforce field commands), ``run`` (one delivery's working copy), ``saga``
(the engine), ``wakeup`` (durable delays on the group's retry tiers), ``route`` (the message
handlers, the dispatch table and ``bind(deps)``, which ``workers.routes`` imports);
``docs/fulfillment.md`` is the prose. Must not import ``workers.routes`` or ``workers.bootstrap``.
"""
