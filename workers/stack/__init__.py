"""The embedded local stack: real Kafka (KRaft), Redis and PostgreSQL on loopback, no Docker.

    up(settings)      start what is not running (the three at once), wait until each answers,
                      write the env file, then create the topic catalog and apply migrations
    down(settings)    stop what ``up`` started; remove the env file (``purge`` also the state)
    status(settings)  what runs now; reads pid files and /proc only

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

from workers.config import STACK_ENV_FILE, StackSettings
from workers.stack import envfile
from workers.stack.kafka import Kafka
from workers.stack.postgres import Postgres
from workers.stack.process import Signature, StackError, file_lock, port_is_free, stop, tails
from workers.stack.provision import ensure_topics_and_schema
from workers.stack.redis import Redis

__all__ = [
    "STACK_ENV_FILE",
    "ServiceState",
    "Stack",
    "StackError",
    "StackUpError",
    "UpResult",
    "down",
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
    kafka: Kafka
    redis: Redis
    postgres: Postgres

    @property
    def services(self) -> tuple[Service, ...]:
        return (self.kafka, self.redis, self.postgres)

    @classmethod
    def from_settings(cls, settings: StackSettings) -> Stack:
        # Absolute, because the paths double as the identity of our processes in their argv.
        state_dir = settings.dir.resolve()
        return cls(
            state_dir=state_dir,
            kafka=Kafka(
                state_dir,
                port=settings.kafka_port,
                controller_port=settings.kafka_controller_port,
                heap=settings.kafka_heap,
            ),
            redis=Redis(state_dir, port=settings.redis_port),
            postgres=Postgres(state_dir, port=settings.postgres_port),
        )

    def env_values(self) -> dict[str, str]:
        return envfile.env_values(
            kafka_bootstrap=self.kafka.endpoint, redis_url=self.redis.url, database_url=self.postgres.dsn()
        )


async def up(settings: StackSettings, *, env_file: Path = STACK_ENV_FILE, provision: bool = True) -> UpResult:
    """Idempotent: a running server is reported as such and only waited for. ``provision=False``
    skips the topic catalog and migrations (the stack tests, which only care about the servers)."""
    began = time.monotonic()
    stack = Stack.from_settings(settings)
    async with file_lock(stack.state_dir / ".lock"):
        outcomes = await asyncio.gather(*(_ensure(s) for s in stack.services), return_exceptions=True)
    services = _raise_failures(outcomes)
    envfile.write(env_file, stack.env_values())
    provisioned = await ensure_topics_and_schema(stack.kafka.endpoint, stack.postgres.dsn()) if provision else []
    return UpResult(services, provisioned, env_file, time.monotonic() - began)


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
