"""The catalog is provisioned per topic class from Settings: RF 3 / min ISR 2 in production, 1/1 locally."""

from __future__ import annotations

import pytest

from events.topics import DOMAIN_TOPICS, ClassPolicy, Topic, TopicClass, TopicPolicy, catalog, dlq_topic
from workers.config import ConfigError, load_settings


def test_local_catalog_is_single_replica_with_the_catalog_counts() -> None:
    specs = catalog(load_settings(env_file=None).topic_policy())
    assert {(s.replication_factor, s.min_insync_replicas) for s in specs} == {(1, 1)}
    order = next(s for s in specs if s.name == Topic.SF_ORDER)
    assert order.partitions == DOMAIN_TOPICS[Topic.SF_ORDER].partitions
    assert order.configs()["min.insync.replicas"] == "1"


def test_production_defaults_to_three_replicas_and_min_isr_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENV", "production")
    policy = load_settings(env_file=None).topic_policy()
    assert (policy.replication_factor, policy.min_insync_replicas) == (3, 2)
    assert {s.configs()["min.insync.replicas"] for s in catalog(policy)} == {"2"}


def test_class_overrides_reach_their_class_and_failure_topics_follow_the_widest_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_TOPICS__DOMAIN__PARTITIONS", "12")
    monkeypatch.setenv("FLEET_TOPICS__DEAD_LETTER__RETENTION_MS", "-1")
    specs = {s.name: s for s in catalog(load_settings(env_file=None).topic_policy())}
    assert specs[Topic.SF_ORDER].partitions == 12
    assert specs["fleet.fulfillment.retry.1"].partitions == 12  # like its widest source: keys keep their affinity
    assert specs[dlq_topic("fleet.fulfillment")].retention_ms == -1
    assert specs[Topic.SF_ORDER].retention_ms == DOMAIN_TOPICS[Topic.SF_ORDER].retention_ms


def test_only_topics_read_in_key_order_are_marked_so() -> None:
    specs = catalog()
    unordered = {s.name for s in specs if not s.key_ordered}
    assert unordered == {s.name for s in specs if s.topic_class in (TopicClass.DEAD_LETTER, TopicClass.PARKED)}


def test_min_isr_above_the_replication_factor_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TOPICS__REPLICATION_FACTOR", "2")
    monkeypatch.setenv("FLEET_TOPICS__MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(ConfigError, match="FLEET_TOPICS__MIN_INSYNC_REPLICAS"):
        load_settings(env_file=None).topic_policy()
    with pytest.raises(ValueError):
        TopicPolicy(1, 2, {TopicClass.DOMAIN: ClassPolicy()})
