"""The topic catalog: the only place topic names and consumer-group names are written.

Names are dotted and versioned (``<domain>.<stream>.v<N>``). Per-group failure topics are
derived, never spelled elsewhere: ``<group>.retry.<n>``, ``<group>.dlq``, ``<group>.parked``.
A failure topic belongs to one consumer group, because a source topic is read by several groups
and only the group that failed must see the failure again (karafka's per-route DLQ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

DAY_MS = 24 * 60 * 60 * 1000


class Topic(StrEnum):
    """Domain topics (shared by every group that reads them)."""

    SF_ORDER = "sf.order.v1"  # order/SIM activation requests, order changes; key = SF Order id
    SF_CATALOG = "sf.catalog.v1"  # Product2 / PricebookEntry changes; key = record id
    SF_ACCOUNT = "sf.account.v1"  # account eligibility changes; key = SF Account id
    SF_RESYNC = "sf.resync.v1"  # requests to re-read a window of records; key = entity name
    WHMCS_BILLING = "whmcs.billing.v1"  # invoice/service/client/pay-method/order; key = WHMCS client id
    FULFILLMENT_OUTCOME = "fulfillment.outcome.v1"  # started / fulfilled / failed / parked; key = SF Order id
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


class TopicClass(StrEnum):
    """Topics are provisioned per class: one replication, partition and retention policy each."""

    DOMAIN = "domain"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    PARKED = "parked"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""
    topic_class: TopicClass = TopicClass.DOMAIN
    replication_factor: int = 1
    min_insync_replicas: int = 1
    #: consumers rely on one key's records staying in order on one partition; adding partitions
    #: moves keys (murmur2 modulo the count), so a key's new records could overtake its old ones
    key_ordered: bool = True

    def configs(self) -> dict[str, str]:
        """The topic-level configs the fleet manages (``fleet topics ensure`` compares and fixes these)."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
        }


@dataclass(frozen=True)
class ClassPolicy:
    """Overrides for one topic class; None keeps the catalog's value."""

    partitions: int | None = None
    retention_ms: int | None = None


@dataclass(frozen=True)
class TopicPolicy:
    """How the catalog is provisioned on a given cluster (built from ``Settings.topics``).

    The default is the embedded single-broker stack: one replica, min ISR 1, the catalog's counts.
    """

    replication_factor: int = 1
    min_insync_replicas: int = 1
    classes: Mapping[TopicClass, ClassPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(
                f"min.insync.replicas {self.min_insync_replicas} must be between 1 and the replication "
                f"factor {self.replication_factor}"
            )

    def partitions(self, topic_class: TopicClass, default: int) -> int:
        chosen = self.classes.get(topic_class, ClassPolicy()).partitions
        return chosen if chosen is not None else default

    def apply(self, spec: TopicSpec) -> TopicSpec:
        override = self.classes.get(spec.topic_class, ClassPolicy())
        return replace(
            spec,
            partitions=override.partitions if override.partitions is not None else spec.partitions,
            retention_ms=override.retention_ms if override.retention_ms is not None else spec.retention_ms,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )


LOCAL_POLICY = TopicPolicy()


DOMAIN_TOPICS: dict[Topic, TopicSpec] = {
    Topic.SF_ORDER: TopicSpec(Topic.SF_ORDER, 4, 7 * DAY_MS, description="Order domain events from CDC"),
    Topic.SF_CATALOG: TopicSpec(Topic.SF_CATALOG, 2, 7 * DAY_MS, description="Catalog changes"),
    Topic.SF_ACCOUNT: TopicSpec(Topic.SF_ACCOUNT, 2, 7 * DAY_MS, description="Account eligibility"),
    Topic.SF_RESYNC: TopicSpec(Topic.SF_RESYNC, 1, 7 * DAY_MS, description="Resync requests"),
    Topic.WHMCS_BILLING: TopicSpec(Topic.WHMCS_BILLING, 4, 7 * DAY_MS, description="WHMCS webhooks"),
    Topic.FULFILLMENT_OUTCOME: TopicSpec(Topic.FULFILLMENT_OUTCOME, 4, 14 * DAY_MS, description="Fulfillment outcomes"),
    Topic.SF_WRITEBACK: TopicSpec(Topic.SF_WRITEBACK, 4, 7 * DAY_MS, description="Salesforce updates"),
    Topic.INGRESS_DLQ: TopicSpec(
        Topic.INGRESS_DLQ,
        1,
        30 * DAY_MS,
        description="Unparseable ingress",
        topic_class=TopicClass.DEAD_LETTER,
        key_ordered=False,
    ),
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


def group_topics(group: str, partitions: int = 4, policy: TopicPolicy = LOCAL_POLICY) -> list[TopicSpec]:
    """Retry tiers, dead-letter and parked topics of one group.

    Partitioned like the widest source (``partitions``) so a dead letter keeps its key's partition
    affinity, unless the policy sets a count for the class.
    """
    specs = [
        TopicSpec(
            retry_topic(group, i + 1),
            partitions,
            7 * DAY_MS,
            description=f"retry tier {i + 1}",
            topic_class=TopicClass.RETRY,
        )
        for i in range(len(RETRY_TIER_DELAYS_MS))
    ]
    # Dead letters and parked records are read by offset ranges and filters (``fleet dlq``), never
    # in key order: partitions may be added to them at any time.
    specs.append(
        TopicSpec(
            dlq_topic(group),
            partitions,
            30 * DAY_MS,
            description="dead letters",
            topic_class=TopicClass.DEAD_LETTER,
            key_ordered=False,
        )
    )
    specs.append(
        TopicSpec(
            parked_topic(group),
            partitions,
            90 * DAY_MS,
            description="parked",
            topic_class=TopicClass.PARKED,
            key_ordered=False,
        )
    )
    return [policy.apply(spec) for spec in specs]


def catalog(policy: TopicPolicy = LOCAL_POLICY) -> list[TopicSpec]:
    """Every topic the fleet needs, as ``fleet topics ensure`` creates them under ``policy``."""
    domain = {topic: policy.apply(spec) for topic, spec in DOMAIN_TOPICS.items()}
    specs = list(domain.values())
    for group in ConsumerGroup:
        widest = max(domain[topic].partitions for topic in GROUP_SOURCES[group])
        specs.extend(group_topics(group, widest, policy))
    return specs
