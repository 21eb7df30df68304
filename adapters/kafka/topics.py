"""Topic administration: create what is missing, report drift on what exists, fix what is safe.

``plan_topics`` compares the catalog (``events.topics.TopicSpec``, already shaped by the cluster's
``TopicPolicy``) with the cluster and says what it would do; ``apply_plan`` does it. What is safe:
creating a missing topic; setting a managed config (retention, cleanup policy, min ISR); adding
partitions to a topic whose consumers do not rely on key order. What is not, and is only reported:
adding partitions to a key-ordered topic (unless the operator accepts the key remap), fewer
partitions than exist (Kafka cannot remove them) and another replication factor (a reassignment,
not a config). A replication factor above the broker count is refused before anything is touched.
Must not: delete or recreate a topic that holds records (``delete_topics`` is for throwaway ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from adapters.kafka.connection import KafkaTarget, as_connection, start_client
from events.topics import TopicSpec

#: DescribeConfigs ``config_source`` of a value set on the topic itself (the others are defaults)
_TOPIC_CONFIG_SOURCE = 1


class TopicPlanError(Exception):
    """The catalog cannot be provisioned on this cluster as configured (nothing was changed)."""


class Fix(StrEnum):
    CREATE = "create"
    SET_CONFIG = "set-config"
    ADD_PARTITIONS = "add-partitions"
    NONE = "none"  # reported only: not safe (or not possible) to change from here


@dataclass(frozen=True)
class Change:
    """One difference between the catalog and the cluster, and what ``--apply`` does about it."""

    topic: str
    what: str  # "topic", "partitions", "replication.factor" or a config name
    have: str
    want: str
    fix: Fix
    note: str = ""

    def line(self) -> str:
        action = {Fix.NONE: "left alone", Fix.CREATE: "create"}.get(self.fix, f"fix ({self.fix})")
        note = f": {self.note}" if self.note else ""
        if self.fix is Fix.CREATE:
            return f"{self.topic}: missing, {self.want}{note}"
        return f"{self.topic}: {self.what} is {self.have}, wanted {self.want} -> {action}{note}"


@dataclass
class TopicPlan:
    brokers: int
    specs: list[TopicSpec]
    changes: list[Change] = field(default_factory=list)

    @property
    def missing(self) -> list[Change]:
        return [c for c in self.changes if c.fix is Fix.CREATE]

    @property
    def drift(self) -> list[Change]:
        return [c for c in self.changes if c.fix is not Fix.CREATE]

    @property
    def unfixable(self) -> list[Change]:
        return [c for c in self.changes if c.fix is Fix.NONE]


async def plan_topics(target: KafkaTarget, specs: Sequence[TopicSpec], *, allow_key_remap: bool = False) -> TopicPlan:
    """What ``apply_plan`` would change; raises ``TopicPlanError`` when a replication factor exceeds
    the brokers the cluster has (the create would fail, and min ISR could never be met)."""
    async with admin_client(target) as admin:
        return await _plan(admin, list(specs), allow_key_remap)


async def apply_plan(target: KafkaTarget, plan: TopicPlan) -> list[Change]:
    """Carry out every change of ``plan`` except those marked ``Fix.NONE``; returns what was done."""
    by_name = {spec.name: spec for spec in plan.specs}
    done: list[Change] = []
    async with admin_client(target) as admin:
        creates = [by_name[c.topic] for c in plan.missing]
        if creates:
            await _create(admin, creates)
            done.extend(plan.missing)
        configs = sorted({c.topic for c in plan.drift if c.fix is Fix.SET_CONFIG})
        for topic in configs:
            await _set_configs(admin, by_name[topic])
        done.extend(c for c in plan.drift if c.fix is Fix.SET_CONFIG)
        grow = {c.topic: NewPartitions(by_name[c.topic].partitions) for c in plan.drift if c.fix is Fix.ADD_PARTITIONS}
        if grow:
            await admin.create_partitions(grow)
            done.extend(c for c in plan.drift if c.fix is Fix.ADD_PARTITIONS)
    return done


async def ensure_topics(
    target: KafkaTarget, specs: Sequence[TopicSpec], *, client_id: str = "fleet-admin"
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent. Existing
    topics are left as they are (``plan_topics`` reports how they differ)."""
    async with admin_client(target, client_id) as admin:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await _create(admin, missing)
        return [s.name for s in missing]


async def list_topics(target: KafkaTarget, *, client_id: str = "fleet-admin") -> set[str]:
    async with admin_client(target, client_id) as admin:
        return set(await admin.list_topics())


async def delete_topics(
    target: KafkaTarget, names: Sequence[str], *, client_id: str = "fleet-admin", chunk: int = 200
) -> list[str]:
    """Delete those of ``names`` that exist; returns the names deleted. For throwaway topics (tests,
    benchmarks): a broker keeps every partition's state in its heap, and a local stack that kept the
    thousands a few test runs create spent its time in garbage collection, taking CPU from the workers."""
    async with admin_client(target, client_id, request_timeout_ms=30_000) as admin:
        doomed = sorted(set(names) & set(await admin.list_topics()))
        for start in range(0, len(doomed), chunk):  # one request per chunk keeps each under the timeout
            await admin.delete_topics(doomed[start : start + chunk])
        return doomed


class admin_client:  # noqa: N801 - used as ``async with admin_client(...)``, like a function
    """A started ``AIOKafkaAdminClient`` on ``target``, closed on exit (also after a failed start)."""

    def __init__(self, target: KafkaTarget, client_id: str = "fleet-admin", request_timeout_ms: int = 15_000) -> None:
        self._target = as_connection(target)
        self._client = AIOKafkaAdminClient(
            **self._target.options(), client_id=client_id, request_timeout_ms=request_timeout_ms
        )

    async def __aenter__(self) -> Any:
        try:
            await start_client(self._client, self._target)
        except BaseException:
            await self._client.close()
            raise
        return self._client

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()


async def _plan(admin: Any, specs: list[TopicSpec], allow_key_remap: bool) -> TopicPlan:
    brokers = len((await admin.describe_cluster())["brokers"])
    too_wide = sorted({s.replication_factor for s in specs if s.replication_factor > brokers})
    if too_wide:
        raise TopicPlanError(
            f"replication factor {too_wide[-1]} needs at least {too_wide[-1]} brokers; the cluster has {brokers} "
            "(lower FLEET_TOPICS__REPLICATION_FACTOR, or add brokers)"
        )
    plan = TopicPlan(brokers, specs)
    existing = set(await admin.list_topics())
    present = [s for s in specs if s.name in existing]
    for spec in specs:
        if spec.name not in existing:
            want = f"{spec.partitions} partitions, RF {spec.replication_factor}, min ISR {spec.min_insync_replicas}"
            plan.changes.append(Change(spec.name, "topic", "absent", want, Fix.CREATE))
    if present:
        described = await _described(admin, [s.name for s in present])
        configs = await _topic_configs(admin, [s.name for s in present])
        for spec in present:
            plan.changes.extend(_layout_drift(spec, described[spec.name], allow_key_remap))
            plan.changes.extend(_config_drift(spec, configs.get(spec.name, {})))
    return plan


async def _described(admin: Any, names: list[str], attempts: int = 40, pause_s: float = 0.25) -> dict[str, Any]:
    """The topics as the cluster describes them, once every one has its partitions. Kafka keeps no
    topic without partitions: a describe answering none (a broker that has not yet heard of a topic
    just created) is metadata still spreading, not drift to report; ask again, and after ~10 s say
    so. Polled because the admin API has no "wait for metadata" call."""
    settling: list[str] = []
    for _ in range(attempts):
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
        settling = [name for name in names if not described.get(name, {}).get("partitions")]
        if not settling:
            return described
        await asyncio.sleep(pause_s)
    raise TopicPlanError(f"Kafka has no partition metadata yet for {', '.join(settling)}; try again shortly")


def _layout_drift(spec: TopicSpec, described: dict[str, Any], allow_key_remap: bool) -> list[Change]:
    changes = []
    partitions = described["partitions"]
    have = len(partitions)
    if have < spec.partitions:
        if not spec.key_ordered:
            fix, note = Fix.ADD_PARTITIONS, "no consumer relies on key order here"
        elif allow_key_remap:
            fix, note = Fix.ADD_PARTITIONS, "keys move to new partitions (accepted with --allow-key-remap)"
        else:
            fix, note = (
                Fix.NONE,
                (
                    "adding partitions moves keys and a key's new records could overtake its old ones; drain the "
                    "topic's consumer groups first, then rerun with --allow-key-remap"
                ),
            )
        changes.append(Change(spec.name, "partitions", str(have), str(spec.partitions), fix, note))
    elif have > spec.partitions:
        note = "Kafka cannot remove partitions; more than wanted is harmless"
        changes.append(Change(spec.name, "partitions", str(have), str(spec.partitions), Fix.NONE, note))
    replicas = min((len(p["replicas"]) for p in partitions), default=0)
    if partitions and replicas != spec.replication_factor:
        note = "a replication change is a partition reassignment (kafka-reassign-partitions), not done here"
        changes.append(
            Change(spec.name, "replication.factor", str(replicas), str(spec.replication_factor), Fix.NONE, note)
        )
    return changes


def _config_drift(spec: TopicSpec, have: dict[str, tuple[str, bool]]) -> list[Change]:
    changes = []
    for name, want in spec.configs().items():
        value, _ = have.get(name, ("(unset)", False))
        if value != want:
            changes.append(Change(spec.name, name, value, want, Fix.SET_CONFIG))
    return changes


async def _topic_configs(admin: Any, names: list[str]) -> dict[str, dict[str, tuple[str, bool]]]:
    """Every config of each topic: name -> (value, set on the topic itself)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, None) for name in names]
    found: dict[str, dict[str, tuple[str, bool]]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise for_code(resource["error_code"])(f"{resource['resource_name']}: {resource['error_message']}")
            found[resource["resource_name"]] = {
                entry["config_names"]: (entry["config_value"], entry.get("config_source") == _TOPIC_CONFIG_SOURCE)
                for entry in resource["config_entries"]
            }
    return found


async def _set_configs(admin: Any, spec: TopicSpec) -> None:
    """The legacy AlterConfigs request (aiokafka has no incremental one) replaces every config set on
    the topic, so the request carries the topic's current overrides with the managed ones updated:
    an operator's own override (``segment.bytes``, say) survives. Read-modify-write: an override made
    by someone else between the two calls would be lost, which ``fleet topics ensure`` accepts."""
    current = (await _topic_configs(admin, [spec.name]))[spec.name]
    wanted = {name: value for name, (value, on_topic) in current.items() if on_topic}
    wanted.update(spec.configs())
    responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, wanted)])
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise for_code(resource["error_code"])(f"{resource['resource_name']}: {resource['error_message']}")


async def _create(admin: Any, specs: Sequence[TopicSpec]) -> None:
    new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs()) for s in specs]
    try:
        response = await admin.create_topics(new)
    except TopicAlreadyExistsError:
        return  # a concurrent ensure won the race; the end state is the same
    for error in getattr(response, "topic_errors", ()):  # (name, code, message) per topic
        name, code = error[0], error[1]
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise for_code(code)(f"creating {name}: {error[2] if len(error) > 2 else ''}")
