"""The embedded local stack: real Kafka (KRaft), Redis and PostgreSQL on loopback, no Docker.

    up(settings)      start what is not running (all at once), wait until each answers,
                      write the env file, then create the topic catalog and apply migrations
    down(settings)    stop what ``up`` started; remove the env file (``purge`` also the state)
    status(settings)  what runs now; reads pid files and /proc only
    restart_node(settings, node_id)
                      start one Kafka node again (after ``kill -9``) and wait until it is back in
                      the cluster; ``up`` does the same for every node, and the rest of the stack

Kafka is one node by default, or a cluster of ``StackSettings.brokers`` nodes (``fleet stack up
--brokers 3``: RF 3 / min ISR 2 for internal and catalog topics); see ``kafka`` for ports and
directories. For failover tests: ``partition_leaders(stack.bootstrap, topic)`` names the node that
leads each partition, ``stack.kafka_node(node_id).kill()`` is ``kill -9``, ``restart_node`` undoes it.

Everything a stack owns lives in ``StackSettings.dir`` (``.fleet/stack``): one directory per
server with its data, logs and pid file; the Kafka jars are shared per work tree (see ``kafka``).
Servers run detached, so they outlive the ``fleet`` command and the test session that started them.

Owns: the lifecycle of those three servers and the env file. Must not: touch a process it did
not start. Every pid is checked against ``/proc/<pid>/cmdline`` before a signal (``process``),
so stale pid files after ``kill -9`` or a reboot are cleaned rather than obeyed, and a second
stack in another directory (the tests run one) is invisible to this one.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devtools.stack import envfile
from devtools.stack.kafka import (
    MULTI_BROKER_HEAP,
    Kafka,
    PartitionState,
    cluster_nodes,
    describe_partitions,
    partition_leaders,
    recorded_cluster_size,
    replication,
    size_mismatch,
)
from devtools.stack.postgres import Postgres
from devtools.stack.process import Signature, StackError, file_lock, port_is_free, stop, tails
from devtools.stack.provision import ensure_topics_and_schema
from devtools.stack.redis import Redis
from events.topics import TopicPolicy
from workers.config import STACK_ENV_FILE, StackSettings

__all__ = [
    "STACK_ENV_FILE",
    "PartitionState",
    "ServiceState",
    "Stack",
    "StackError",
    "StackUpError",
    "UpResult",
    "describe_partitions",
    "down",
    "partition_leaders",
    "restart_node",
    "restart_service",
    "status",
    "up",
]

STOP_TIMEOUT_S = 30.0


class Service(Protocol):
    """What ``up``, ``down`` and ``status`` need from each server module."""

    name: str
    ports: tuple[int, ...]
    pid_file: Path
    log_files: tuple[Path, ...]
    signature: Signature
    stop_signal: signal.Signals
    ready_timeout_s: float

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, for reports."""
        ...

    def running_pid(self) -> int | None:
        """Our server's pid if it is alive, else None (a stale pid file counts as not running)."""
        ...

    async def clean_stale(self) -> list[str]:
        """Remove what a killed run left behind; only called while ``running_pid()`` is None."""
        ...

    async def start(self) -> list[str]:
        """Spawn the server (initialising its storage first if needed); does not wait for it."""
        ...

    async def probe(self) -> bool:
        """One readiness check; raises StackError when the server has already died."""
        ...


@dataclass(frozen=True)
class ServiceState:
    name: str
    running: bool
    pid: int | None
    endpoint: str
    note: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class UpResult:
    services: list[ServiceState]
    provisioned: list[str]
    env_file: Path
    seconds: float


class StackUpError(StackError):
    """One or more servers failed to start; ``services`` holds those that are up."""

    def __init__(self, services: list[ServiceState], failures: Sequence[StackError]) -> None:
        super().__init__("\n\n".join(str(failure) for failure in failures))
        self.services = services


@dataclass(frozen=True)
class Stack:
    state_dir: Path
    #: node ids 1..N in order (``kafka_nodes[i]`` has ``node_id == i + 1``)
    kafka_nodes: tuple[Kafka, ...]
    redis: Redis
    postgres: Postgres

    @property
    def kafka(self) -> Kafka:
        """Node 1: the whole of Kafka on a single-node stack."""
        return self.kafka_nodes[0]

    @property
    def brokers(self) -> int:
        return len(self.kafka_nodes)

    @property
    def bootstrap(self) -> str:
        """Every node, comma-separated, as clients take it (any live one is enough to bootstrap)."""
        return ",".join(node.endpoint for node in self.kafka_nodes)

    @property
    def topic_policy(self) -> TopicPolicy:
        """How the catalog is provisioned here: RF 1 on one node, RF 3 / min ISR 2 from three on."""
        return TopicPolicy(*replication(self.brokers))

    def kafka_node(self, node_id: int) -> Kafka:
        """The node whose ``node.id`` is ``node_id`` (what ``partition_leaders`` reports)."""
        if not 1 <= node_id <= self.brokers:
            raise StackError(f"no Kafka node {node_id}: this stack has nodes 1..{self.brokers}")
        return self.kafka_nodes[node_id - 1]

    @property
    def services(self) -> tuple[Service, ...]:
        return (*self.kafka_nodes, self.redis, self.postgres)

    @classmethod
    def from_settings(cls, settings: StackSettings) -> Stack:
        """The stack in ``settings.dir``. Its Kafka has as many nodes as its storage was formatted for
        (so ``status`` and ``down`` see every node whatever ``--brokers`` says), else
        ``settings.brokers``; ``up`` refuses an explicit count that differs from the storage's."""
        # Absolute, because the paths double as the identity of our processes in their argv.
        state_dir = settings.dir.resolve()
        brokers = recorded_cluster_size(state_dir) or settings.brokers
        explicit_heap = "kafka_heap" in settings.model_fields_set
        heap = settings.kafka_heap if brokers == 1 or explicit_heap else MULTI_BROKER_HEAP
        return cls(
            state_dir=state_dir,
            kafka_nodes=cluster_nodes(
                state_dir,
                brokers=brokers,
                port=settings.kafka_port,
                controller_port=settings.kafka_controller_port,
                heap=heap,
            ),
            redis=Redis(state_dir, port=settings.redis_port),
            postgres=Postgres(state_dir, port=settings.postgres_port),
        )

    def env_values(self) -> dict[str, str]:
        return envfile.env_values(
            kafka_bootstrap=self.bootstrap,
            redis_url=self.redis.url,
            database_url=self.postgres.dsn(),
            replication=replication(self.brokers) if self.brokers > 1 else None,
        )


async def up(settings: StackSettings, *, env_file: Path = STACK_ENV_FILE, provision: bool = True) -> UpResult:
    """Idempotent: a running server is reported as such and only waited for. ``provision=False``
    skips the topic catalog and migrations (the stack tests, which only care about the servers)."""
    began = time.monotonic()
    stack = Stack.from_settings(settings)
    async with file_lock(stack.state_dir / ".lock"):
        _check_brokers(settings, stack)
        outcomes = await asyncio.gather(*(_ensure(s) for s in stack.services), return_exceptions=True)
    services = _raise_failures(outcomes)
    envfile.write(env_file, stack.env_values())
    provisioned = (
        await ensure_topics_and_schema(stack.bootstrap, stack.postgres.dsn(), stack.topic_policy) if provision else []
    )
    return UpResult(services, provisioned, env_file, time.monotonic() - began)


async def restart_service(settings: StackSettings, name: str) -> ServiceState:
    """Start the stack's service ``name`` (``redis``, ``postgres``, ``kafka-<n>``) if it is not running,
    cleaning what a killed one left, and wait until it answers; a running one is only waited for.
    Unlike ``up`` and ``restart_node`` it takes no stack-wide lock, so a fault-injection run can bring
    Redis back while a broker it killed is still restarting; the caller owns the services' lifecycle."""
    stack = Stack.from_settings(settings)
    by_name = {service.name: service for service in stack.services}
    if name not in by_name:
        raise StackError(f"no service {name}: this stack has {', '.join(sorted(by_name))}")
    return await _ensure(by_name[name])


async def restart_node(settings: StackSettings, node_id: int) -> ServiceState:
    """Start Kafka node ``node_id`` (1-based, as ``partition_leaders`` names nodes) if it is not running,
    e.g. after a chaos test's ``kill -9`` (stale pid file cleaned, reaping awaited, as in ``up``), and
    wait until it answers and the cluster reports every broker again; a running node is only waited
    for. Nothing else is touched: not the other nodes, the env file or the topics. Back in the
    cluster is not back in sync: the node rejoins each partition's ISR once it has caught up (poll
    ``describe_partitions``)."""
    stack = Stack.from_settings(settings)
    node = stack.kafka_node(node_id)
    async with file_lock(stack.state_dir / ".lock"):
        _check_brokers(settings, stack)
        return await _ensure(node)


async def down(settings: StackSettings, *, env_file: Path = STACK_ENV_FILE, purge: bool = False) -> list[ServiceState]:
    """Stop our servers (graceful signal, SIGKILL after ``STOP_TIMEOUT_S``) and remove the env file;
    ``purge`` then deletes the state directory, so the next ``up`` starts from nothing."""
    stack = Stack.from_settings(settings)
    async with file_lock(stack.state_dir / ".lock"):
        services = list(await asyncio.gather(*(_stop(s) for s in stack.services)))
        envfile.remove(env_file)
        if purge:
            shutil.rmtree(stack.state_dir)
    return services


def status(settings: StackSettings) -> list[ServiceState]:
    return [_status(service) for service in Stack.from_settings(settings).services]


def _check_brokers(settings: StackSettings, stack: Stack) -> None:
    """An explicit ``--brokers`` / FLEET_STACK__BROKERS must match the formatted storage, if any."""
    if "brokers" in settings.model_fields_set and settings.brokers != stack.brokers:
        raise StackError(size_mismatch(stack.state_dir, stack.brokers, settings.brokers))


async def _ensure(service: Service) -> ServiceState:
    began = time.monotonic()
    if service.running_pid() is not None:
        notes = ["already running"]
    else:
        notes = ["started", *await service.clean_stale()]
        _check_ports_free(service)
        try:
            notes += await service.start()
        except StackError as exc:
            raise StackError(f"{exc}\n{tails(service.log_files)}".rstrip()) from None
    await _wait_ready(service)
    pid = service.running_pid()
    if pid is None:  # it answers, but `down` could not stop it: fail now rather than leak a server
        raise StackError(f"{service.name} answers on {service.endpoint} but {service.pid_file} does not name it")
    return ServiceState(service.name, True, pid, service.endpoint, "; ".join(notes), time.monotonic() - began)


def _check_ports_free(service: Service) -> None:
    taken = [port for port in service.ports if not port_is_free(port)]
    if taken:
        raise StackError(
            f"{service.name}: port {', '.join(map(str, taken))} is in use by a process this stack did not "
            "start; stop it or pick other ports (FLEET_STACK__*_PORT)"
        )


async def _wait_ready(service: Service) -> None:
    deadline = time.monotonic() + service.ready_timeout_s
    while not await service.probe():
        if time.monotonic() > deadline:
            raise StackError(
                f"{service.name} did not become ready on {service.endpoint} "
                f"within {service.ready_timeout_s:.0f} s\n{tails(service.log_files)}"
            )
        await asyncio.sleep(0.1)


def _raise_failures(outcomes: Sequence[ServiceState | BaseException]) -> list[ServiceState]:
    """The states if every server came up; else StackUpError naming each failure. Anything that is
    not a StackError is a bug and is re-raised as it is, traceback included."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, StackError):
            raise outcome
    services = [o for o in outcomes if isinstance(o, ServiceState)]
    failures = [o for o in outcomes if isinstance(o, StackError)]
    if failures:
        raise StackUpError(services, failures)
    return services


async def _stop(service: Service) -> ServiceState:
    pid = service.running_pid()
    if pid is None:
        notes = ["not running", *await service.clean_stale()]
    else:
        notes = [await stop(pid, service.signature, service.stop_signal, STOP_TIMEOUT_S)]
        await service.clean_stale()  # our own leftovers (kafka.pid), expected after any stop
    return ServiceState(service.name, False, None, service.endpoint, "; ".join(notes))


def _status(service: Service) -> ServiceState:
    pid = service.running_pid()
    if pid is not None:
        return ServiceState(service.name, True, pid, service.endpoint)
    stale = "stale pid file" if service.pid_file.exists() else ""
    return ServiceState(service.name, False, None, service.endpoint, stale)
