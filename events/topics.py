"""The topic catalog: the only place topic names and consumer-group names are written.

Names are dotted and versioned (``<domain>.<stream>.v<N>``). Per-group failure topics are
derived, never spelled elsewhere: ``<group>.retry.<n>``, ``<group>.dlq``, ``<group>.parked``.
A failure topic belongs to one consumer group, because a source topic is read by several groups
and only the group that failed must see the failure again (karafka's per-route DLQ).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 60 * 60 * 1000


class Topic(StrEnum):
    """Domain topics (shared by every group that reads them)."""

    SF_ORDER = "sf.order.v1"  # order/SIM activation requests, order changes; key = SF Order id
    SF_CATALOG = "sf.catalog.v1"  # Product2 / PricebookEntry changes; key = record id
    SF_ACCOUNT = "sf.account.v1"  # account eligibility changes; key = SF Account id
    SF_RESYNC = "sf.resync.v1"  # requests to re-read a window of records; key = entity name
    WHMCS_BILLING = "whmcs.billing.v1"  # invoice/service/client/pay-method/order; key = WHMCS client id
    FULFILLMENT_OUTCOME = "fulfillment.outcome.v1"  # fulfilled / failed / parked; key = SF Order id
    SF_WRITEBACK = "sf.writeback.v1"  # record-update commands for the sf-writer; key = record id
    INGRESS_DLQ = "ingress.dlq.v1"  # raw payloads an ingress worker could not parse


class ConsumerGroup(StrEnum):
    """Consumer groups of the fleet; each owns its retry, dead-letter and parked topics."""

    FULFILLMENT = "fleet.fulfillment"
    SF_WRITER = "fleet.sf-writer"
    CACHE_INVALIDATOR = "fleet.cache-invalidator"


#: in-place attempts are followed by these retry tiers; index i is ``<group>.retry.<i+1>``
RETRY_TIER_DELAYS_MS: tuple[int, ...] = (5_000, 30_000)


def retry_topic(group: str, tier: int) -> str:
    """Retry tier ``tier`` (1-based) of ``group``."""
    if tier < 1:
        raise ValueError("retry tiers are 1-based")
    return f"{group}.retry.{tier}"


def dlq_topic(group: str) -> str:
    return f"{group}.dlq"


def parked_topic(group: str) -> str:
    """Where a dead letter goes when replaying it failed too often (the replay loop guard)."""
    return f"{group}.parked"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


DOMAIN_TOPICS: dict[Topic, TopicSpec] = {
    Topic.SF_ORDER: TopicSpec(Topic.SF_ORDER, 4, 7 * DAY_MS, description="Order domain events from CDC"),
    Topic.SF_CATALOG: TopicSpec(Topic.SF_CATALOG, 2, 7 * DAY_MS, description="Catalog changes"),
    Topic.SF_ACCOUNT: TopicSpec(Topic.SF_ACCOUNT, 2, 7 * DAY_MS, description="Account eligibility"),
    Topic.SF_RESYNC: TopicSpec(Topic.SF_RESYNC, 1, 7 * DAY_MS, description="Resync requests"),
    Topic.WHMCS_BILLING: TopicSpec(Topic.WHMCS_BILLING, 4, 7 * DAY_MS, description="WHMCS webhooks"),
    Topic.FULFILLMENT_OUTCOME: TopicSpec(Topic.FULFILLMENT_OUTCOME, 4, 14 * DAY_MS, description="Fulfillment outcomes"),
    Topic.SF_WRITEBACK: TopicSpec(Topic.SF_WRITEBACK, 4, 7 * DAY_MS, description="Salesforce updates"),
    Topic.INGRESS_DLQ: TopicSpec(Topic.INGRESS_DLQ, 1, 30 * DAY_MS, description="Unparseable ingress"),
}

#: which domain topics each group consumes (the runtime's routes refer to these)
GROUP_SOURCES: dict[ConsumerGroup, tuple[Topic, ...]] = {
    ConsumerGroup.FULFILLMENT: (Topic.SF_ORDER, Topic.WHMCS_BILLING),
    ConsumerGroup.SF_WRITER: (Topic.SF_WRITEBACK,),
    ConsumerGroup.CACHE_INVALIDATOR: (
        Topic.SF_ORDER,
        Topic.SF_CATALOG,
        Topic.SF_ACCOUNT,
        Topic.WHMCS_BILLING,
        Topic.FULFILLMENT_OUTCOME,
    ),
}


def group_topics(group: str, partitions: int = 4) -> list[TopicSpec]:
    """Retry tiers, dead-letter and parked topics of one group.

    Partitioned like the widest source so a dead letter keeps its key's partition affinity.
    """
    specs = [
        TopicSpec(retry_topic(group, i + 1), partitions, 7 * DAY_MS, description=f"retry tier {i + 1}")
        for i in range(len(RETRY_TIER_DELAYS_MS))
    ]
    specs.append(TopicSpec(dlq_topic(group), partitions, 30 * DAY_MS, description="dead letters"))
    specs.append(TopicSpec(parked_topic(group), partitions, 90 * DAY_MS, description="parked"))
    return specs


def catalog() -> list[TopicSpec]:
    """Every topic the fleet needs, as ``fleet topics ensure`` creates them."""
    specs = list(DOMAIN_TOPICS.values())
    for group in ConsumerGroup:
        specs.extend(group_topics(group))
    return specs
