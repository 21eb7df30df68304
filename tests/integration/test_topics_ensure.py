"""`fleet topics ensure` against the local broker: it creates what is missing with the policy's replication,
min ISR and configs, reports drift on what exists, fixes only what is safe with --apply (an operator's
own override survives), and refuses a replication factor above the broker count before touching anything."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from adapters.kafka import Fix, TopicPlanError, apply_plan, ensure_topics, plan_topics
from events.topics import DAY_MS, TopicClass, TopicSpec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, "-m", "workers"]


def specs(tag: str) -> list[TopicSpec]:
    return [
        TopicSpec(f"t-ensure-{tag}-domain", 3, DAY_MS, min_insync_replicas=1),
        TopicSpec(f"t-ensure-{tag}-dlq", 3, 2 * DAY_MS, topic_class=TopicClass.DEAD_LETTER, key_ordered=False),
    ]


async def describe(bootstrap: str, name: str) -> tuple[int, int, dict[str, str]]:
    """(partitions, replicas, configs) as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([name])
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, None)])
        entries = response.to_object()["resources"][0]["config_entries"]
        configs = {e["config_names"]: e["config_value"] for e in entries}
        return len(topic["partitions"]), len(topic["partitions"][0]["replicas"]), configs
    finally:
        await admin.close()


async def set_configs(bootstrap: str, name: str, configs: dict[str, Any]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs)])
    finally:
        await admin.close()


async def test_missing_topics_are_created_with_their_replication_and_configs(stack_env: dict[str, str]) -> None:
    bootstrap, wanted = stack_env["KAFKA_BOOTSTRAP"], specs(uuid.uuid4().hex[:8])
    plan = await plan_topics(bootstrap, wanted)
    assert [c.topic for c in plan.missing] == [s.name for s in wanted] and plan.drift == []
    done = await apply_plan(bootstrap, plan)
    assert len(done) == 2
    partitions, replicas, configs = await describe(bootstrap, wanted[1].name)
    assert (partitions, replicas) == (3, 1)
    assert configs["retention.ms"] == str(2 * DAY_MS) and configs["min.insync.replicas"] == "1"
    assert (await plan_topics(bootstrap, wanted)).changes == []  # idempotent: nothing left to do


async def test_drift_is_reported_and_only_safe_fixes_are_applied(stack_env: dict[str, str]) -> None:
    bootstrap, wanted = stack_env["KAFKA_BOOTSTRAP"], specs(uuid.uuid4().hex[:8])
    domain, dlq = wanted
    # What an older deployment (or a hand) left: fewer partitions, another retention, an operator override.
    await ensure_topics(bootstrap, [replace(domain, partitions=1, retention_ms=3 * DAY_MS), replace(dlq, partitions=1)])
    await set_configs(bootstrap, dlq.name, {"retention.ms": "1000", "segment.bytes": "4194304"})

    plan = await plan_topics(bootstrap, wanted)
    drift = {(c.topic, c.what): c for c in plan.drift}
    assert drift[(domain.name, "partitions")].fix is Fix.NONE  # keys would move: reported, not done
    assert drift[(domain.name, "retention.ms")].fix is Fix.SET_CONFIG
    assert drift[(dlq.name, "partitions")].fix is Fix.ADD_PARTITIONS  # nobody reads dead letters in key order
    assert drift[(dlq.name, "retention.ms")].have == "1000"

    await apply_plan(bootstrap, plan)
    assert (await describe(bootstrap, domain.name))[0] == 1
    assert (await describe(bootstrap, domain.name))[2]["retention.ms"] == str(domain.retention_ms)
    partitions, _, configs = await describe(bootstrap, dlq.name)
    assert partitions == 3 and configs["retention.ms"] == str(dlq.retention_ms)
    assert configs["segment.bytes"] == "4194304"  # the operator's own override survived the fix

    remaining = await plan_topics(bootstrap, wanted)
    assert [(c.topic, c.what) for c in remaining.changes] == [(domain.name, "partitions")]
    accepted = await plan_topics(bootstrap, wanted, allow_key_remap=True)
    await apply_plan(bootstrap, accepted)
    assert (await describe(bootstrap, domain.name))[0] == 3


async def test_a_replication_factor_above_the_broker_count_is_refused_before_anything_changes(
    stack_env: dict[str, str],
) -> None:
    bootstrap, wanted = stack_env["KAFKA_BOOTSTRAP"], specs(uuid.uuid4().hex[:8])
    with pytest.raises(TopicPlanError, match="replication factor 3 needs at least 3 brokers; the cluster has 1"):
        await plan_topics(bootstrap, [replace(s, replication_factor=3, min_insync_replicas=2) for s in wanted])
    assert (await plan_topics(bootstrap, wanted)).missing  # nothing was created


def fleet(stack_env: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FLEET_KAFKA__BOOTSTRAP": stack_env["KAFKA_BOOTSTRAP"], **env}
    return subprocess.run(
        [*FLEET, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_cli_reports_the_catalog_and_refuses_rf_above_the_brokers(stack_env: dict[str, str]) -> None:
    ok = fleet(stack_env, "topics", "ensure")
    assert ok.returncode == 0, ok.stderr
    assert "cluster: 1 broker(s)" in ok.stdout and "0 drifting" in ok.stdout

    refused = fleet(stack_env, "topics", "ensure", FLEET_TOPICS__REPLICATION_FACTOR="3")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "fleet: replication factor 3 needs at least 3 brokers; the cluster has 1 "
        "(lower FLEET_TOPICS__REPLICATION_FACTOR, or add brokers)"
    )

    drifting = fleet(stack_env, "topics", "ensure", FLEET_TOPICS__RETRY__RETENTION_MS="3600000")
    assert drifting.returncode == 1
    assert "fleet.fulfillment.retry.1: retention.ms is 604800000, wanted 3600000" in drifting.stdout
    assert "run `fleet topics ensure --apply`" in drifting.stdout
