"""Kafka for the fleet: how clients connect, the producer port, and topic administration.

    connection  ``KafkaConnection`` (bootstrap, TLS, SASL): the one source of every client's options
    producer    ``ProducerPort``, its aiokafka implementations and ``FakeProducer``
    topics      create the catalog, report drift, fix what is safe
    groups      describe consumer groups (DescribeGroups, with an aiokafka pairing fixed)

Consuming and offsets are not here: they belong to ``workers.runtime`` alone.
"""

from adapters.kafka.connection import (
    KafkaConnection,
    KafkaSecurityError,
    KafkaTarget,
    as_connection,
    diagnose,
    start_client,
)
from adapters.kafka.producer import (
    AiokafkaProducer,
    BatchingProducer,
    Delivered,
    FakeProducer,
    Headers,
    ProducerPort,
    durable_producer,
)
from adapters.kafka.topics import (
    Change,
    Fix,
    TopicPlan,
    TopicPlanError,
    admin_client,
    apply_plan,
    delete_topics,
    ensure_topics,
    list_topics,
    plan_topics,
)

__all__ = [
    "AiokafkaProducer",
    "BatchingProducer",
    "Change",
    "Delivered",
    "FakeProducer",
    "Fix",
    "Headers",
    "KafkaConnection",
    "KafkaSecurityError",
    "KafkaTarget",
    "ProducerPort",
    "TopicPlan",
    "TopicPlanError",
    "admin_client",
    "apply_plan",
    "as_connection",
    "delete_topics",
    "diagnose",
    "durable_producer",
    "ensure_topics",
    "list_topics",
    "plan_topics",
    "start_client",
]
