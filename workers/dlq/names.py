"""What ``fleet dlq -g NAME`` names: a consumer group (its ``<group>.dlq``) or ``ingress`` (``ingress.dlq.v1``).

Owns the mapping from a name to its dead-letter topic. ``ingress`` is not a consumer group: its
records were refused by an ingress worker before any group saw them (``workers.dlq.ingress``).
Must not do I/O.
"""

from __future__ import annotations

from events.topics import ConsumerGroup, Topic, dlq_topic

#: the dead letters of the ingress workers (``Topic.INGRESS_DLQ``), as ``fleet dlq -g ingress``
INGRESS = "ingress"


def dead_letter_topic(name: str) -> str:
    return str(Topic.INGRESS_DLQ) if name == INGRESS else dlq_topic(name)


def every_name() -> list[str]:
    """What ``fleet dlq list`` covers without ``-g``: every consumer group, then ``ingress``."""
    return [*(g.value for g in ConsumerGroup), INGRESS]
