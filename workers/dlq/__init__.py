"""Dead-letter operations behind ``fleet dlq``: read, list, show, replay and purge a group's DLQ.

Owns the operator's side of the failure path: reading ``<group>.dlq`` without joining any consumer
group, re-sending dead letters into the failed group's own retry path, the replay loop guard, and
the audit trail (``audit``); replay progress, purge marks and the group lock are kept by
``adapters.dlq_store``. Must not consume source topics, commit any consumer group's offsets, or
produce to a shared source topic (other groups already succeeded).
"""
