"""The cache-invalidator flow (``fleet run cache-invalidator``): events → the portal keys they make stale → UNLINK.

``directory`` (which portal users an event is about, via ``id_mappings``), ``plan`` (which event
busts which key: one pure planner per event type, the table docs/cache-keys.md mirrors), ``status``
(which fulfillment outcome the portal's live order view shows as Activating / Activated / Failed:
the order-status notice, published after the event's keys are gone), ``batch``
(a batch's round trips to Postgres and Redis, and each record's outcome), ``route`` (the dispatch
table and ``bind(deps)``, which ``workers.routes`` imports). Must not spell key strings
(``workers.cache_keys``) nor talk to Redis or Postgres but through the ports; must not import
``workers.routes`` or ``workers.bootstrap``.
"""
