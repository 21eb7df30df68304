"""The order fulfillment saga: a per-order state machine persisted in PostgreSQL.

``model`` (steps, states, error codes, outcomes), ``plan`` (validation of the Salesforce order),
``policy`` (what a rejection means, polling cadence), ``writeback`` (Salesforce field commands),
``run`` (one delivery's working copy), ``saga`` (the engine), ``wakeup`` (durable delays on the
group's retry tiers). The step functions and message handlers live in
``workers.handlers.fulfillment``; ``docs/fulfillment.md`` is the prose.
"""
