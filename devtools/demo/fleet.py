"""What ``fleet demo up`` starts, in order: the local stack, the sandboxes, then the five workers.

    fleet = Fleet(settings, FleetOptions())
    await fleet.start(echo)        # idempotent stack up, sandboxes, `fleet run <name>` × 5, readiness
    ...
    await fleet.stop()             # workers first, then the sandboxes it started; the stack stays up

Owns the child specs (command, environment, fixed health port, probe URL), the demo id_mappings,
the throwaway Salesforce JWT key and pointing the WHMCS sandbox's webhooks at the receiver. Must
not: touch what it did not start. A stack or sandboxes that already run are used as they are and
left running; the stack is always left up (like ``make test``: the next run starts in seconds).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.db import create_pool, seed_id_mappings
from devtools import stack
from devtools.supervisor import ChildSpec, ChildStatus, StopReport, Supervisor
from sandbox.runner import command_line
from workers.config import STACK_ENV_FILE, Settings
from workers.routes import INGRESS, ROUTES

#: every worker of the fleet, in start order (ingress last: consumers are ready for what it produces)
WORKERS = ("fulfillment", "sf-writer", "cache-invalidator", "sf-cdc", "whmcs-webhooks")
HEALTH_PORT_BASE = 19101
SANDBOX_CHILD = "sandboxes"
CONSOLE_CHILD = "console"
SECRET_ENV = "SANDBOX_WHMCS_WEBHOOK_SECRET"  # how `python -m sandbox` takes the signing secret
Echo = Callable[[str], None]


class FleetError(Exception):
    """The fleet could not be brought up (stack or sandboxes); the message says what to look at."""


@dataclass(frozen=True)
class FleetOptions:
    workers: tuple[str, ...] = WORKERS
    health_port_base: int = HEALTH_PORT_BASE
    #: seconds a Freebit registration stays pending (None: the sandbox's own default, 2 s)
    freebit_activation_delay_s: float | None = None
    log_dir: Path = Path(".fleet/logs")
    #: where ``stack up`` writes the endpoints (another file for a second stack, as `fleet stack up --env-file`)
    env_file: Path = STACK_ENV_FILE
    state_dir: Path = Path(".fleet/demo")
    ready_timeout_s: float = 60.0
    #: extra variables for every worker (the benchmark tunes the runtime with these)
    worker_env: Mapping[str, str] = field(default_factory=dict)
    #: run workers with another command than ``fleet run {name}`` (a shell-quoted template); when
    #: set, availability is the command's business (exit 2 on its first run = not available)
    worker_command: str | None = None
    #: instances per worker (default 1): ``{"fulfillment": 3}`` runs ``fulfillment-1`` .. ``-3``,
    #: each with its own health port, receivers each on their own listening port (the next ones up)
    instances: Mapping[str, int] = field(default_factory=dict)
    #: what the supervisor asks each worker (default ``/readyz``); a standby sf-cdc is never ready,
    #: only live, so a fleet with several sf-cdc instances asks them ``/livez``
    health_paths: Mapping[str, str] = field(default_factory=dict)
    #: also run ``fleet console`` (FLEET_CONSOLE__PORT), told where every worker's health page is
    console: bool = True

    def children(self) -> list[Instance]:
        """Every worker process, in start order: a worker's instances one after the other."""
        found: list[Instance] = []
        for name in self.workers:
            count = max(1, self.instances.get(name, 1))
            for index in range(count):
                child = name if count == 1 else f"{name}-{index + 1}"
                found.append(Instance(child, name, index, self.health_port_base + len(found)))
        return found


@dataclass(frozen=True)
class Instance:
    """One process of a worker: its supervisor name, the worker it runs, its index and health port."""

    child: str
    worker: str
    index: int
    health_port: int


@dataclass(frozen=True)
class Endpoints:
    """Where the sandboxes' control APIs and the webhook receiver are, from Settings."""

    salesforce: str
    whmcs: str
    freebit: str
    webhook: str

    @classmethod
    def of(cls, settings: Settings) -> Endpoints:
        s, w = settings.sandbox, settings.whmcs
        return cls(
            salesforce=f"http://{s.host}:{s.salesforce_port}",
            whmcs=f"http://{s.host}:{s.whmcs_port}",
            freebit=f"http://{s.host}:{s.freebit_port}",
            webhook=f"http://{w.webhook_listen_host}:{w.webhook_listen_port}/webhooks/whmcs",
        )

    @property
    def sandboxes(self) -> dict[str, str]:
        return {"salesforce": self.salesforce, "whmcs": self.whmcs, "freebit": self.freebit}


def health_ports(options: FleetOptions) -> dict[str, int]:
    """A fixed port per process (``FLEET_RUNTIME__HEALTH_PORT``), so the supervisor knows where to ask:
    keyed by the supervisor's child name (the worker's name when it runs once)."""
    return {instance.child: instance.health_port for instance in options.children()}


def receiver_port(settings: Settings, index: int) -> int:
    """Where receiver ``index`` listens: the configured port, and the next ones for more instances."""
    return settings.whmcs.webhook_listen_port + index


def unavailable_workers(names: Iterable[str]) -> dict[str, str]:
    """Workers ``fleet run`` cannot run in this tree yet, with the reason, so the demo lists them
    as "not available" instead of restarting a command that can only fail."""
    # `fleet run` has one command per route and per ingress (workers.cli.run builds them from these
    # two tables), so the tables answer without importing the CLI, which imports this module.
    runnable = ROUTES.keys() | INGRESS.keys()
    return {name: f"`fleet run {name}` does not exist yet" for name in names if name not in runnable}


def worker_command(name: str) -> tuple[str, ...]:
    """``<venv>/bin/fleet run <name>``: exactly what a deployment runs."""
    fleet = Path(sys.executable).with_name("fleet")
    if fleet.exists():
        return (str(fleet), "run", name)
    return (sys.executable, "-m", "workers", "run", name)


class Fleet:
    def __init__(self, settings: Settings, options: FleetOptions | None = None) -> None:
        self.settings = settings
        self.options = options or FleetOptions()
        self.endpoints = Endpoints.of(settings)
        self.supervisor = Supervisor(self.options.log_dir)
        self.sandboxes_owned = False

    # --- start ---------------------------------------------------------------------------------
    async def start(self, echo: Echo) -> list[ChildStatus]:
        await self._stack_up(echo)
        await self._seed_mappings(echo)
        env = self._worker_env()
        await self._sandboxes_up(echo)
        missing = {} if self.options.worker_command else unavailable_workers(self.options.workers)
        children = self.options.children()
        for instance in children:
            if instance.worker in missing:
                self.supervisor.not_available(instance.child, missing[instance.worker])
            else:
                await self.supervisor.start(self._worker_spec(instance, env))
        runnable = [i.child for i in children if i.worker not in missing]
        echo(f"workers: starting {', '.join(runnable) or 'none'} (logs in {self.options.log_dir}/)")
        for name, reason in missing.items():
            echo(f"workers: {name} not available: {reason}")
        names = [i.child for i in children]
        if self.options.console:
            await self.supervisor.start(self._console_spec(children, env))
            names.append(CONSOLE_CHILD)
            echo(f"console: {self.console_url} (the ops console: fleet, dead letters, orders, audit log)")
        return await self.supervisor.wait_ready(names, self.options.ready_timeout_s)

    @property
    def console_url(self) -> str:
        c = self.settings.console
        return f"http://{c.host}:{c.port}/"

    def _console_spec(self, children: list[Instance], env: Mapping[str, str]) -> ChildSpec:
        """``fleet console`` beside the workers, reading their health pages (the receiver's is its own port)."""
        host = self.settings.runtime.health_host
        pages = []
        for instance in children:
            if instance.worker == "whmcs-webhooks":
                w = self.settings.whmcs
                pages.append(
                    f"{instance.child}=http://{w.webhook_listen_host}:{receiver_port(self.settings, instance.index)}"
                )
            else:
                pages.append(f"{instance.child}=http://{host}:{instance.health_port}")
        fleet = Path(sys.executable).with_name("fleet")
        argv = (str(fleet), "console") if fleet.exists() else (sys.executable, "-m", "workers", "console")
        child_env = {**env, "FLEET_CONSOLE__HEALTH_URLS": ",".join(pages)}
        return ChildSpec(CONSOLE_CHILD, argv, env=child_env, health_url=f"{self.console_url}livez")

    async def _stack_up(self, echo: Echo) -> None:
        try:
            result = await stack.up(self.settings.stack, env_file=self.options.env_file)
        except stack.StackError as exc:
            raise FleetError(f"the local stack did not start:\n{exc}") from None
        states = ", ".join(f"{s.name} {s.note or 'running'}" for s in result.services)
        echo(f"stack: {states} (ready in {result.seconds:.1f} s; left running on exit)")

    async def _seed_mappings(self, echo: Echo) -> None:
        from sandbox.demo_data import id_mappings  # demo data, imported only by this dev tool

        pool = await create_pool(self.settings.postgres.dsn.get_secret_value(), 1, 1)
        try:
            count = await seed_id_mappings(pool, id_mappings())
        finally:
            await pool.close()
        echo(f"id_mappings: {count} demo rows ensured")

    async def _sandboxes_up(self, echo: Echo) -> None:
        secret = self.settings.whmcs.webhook_secrets[0].get_secret_value()
        async with httpx.AsyncClient(timeout=2.0) as http:
            if await _all_answer(http, self.endpoints):
                # Someone else's sandboxes (`fleet sandbox up`): use them, point their webhooks at
                # our receiver, and leave them running on exit.
                await http.post(
                    f"{self.endpoints.whmcs}/_sandbox/webhook", json={"url": self.endpoints.webhook, "secret": secret}
                )
                echo(f"sandboxes: already running; webhooks now go to {self.endpoints.webhook} (left running)")
                return
        await self.supervisor.start(self._sandbox_spec(secret))
        [status] = await self.supervisor.wait_ready([SANDBOX_CHILD], timeout_s=30.0)
        if status.label not in ("healthy", "running"):
            raise FleetError(f"the sandboxes did not start ({status.label}: {status.reason}); see {status.log_path}")
        self.sandboxes_owned = True
        echo(f"sandboxes: started (pid {status.pid}); webhooks go to {self.endpoints.webhook}")

    def _sandbox_spec(self, secret: str) -> ChildSpec:
        s = self.settings.sandbox
        ports = {"salesforce": s.salesforce_port, "whmcs": s.whmcs_port, "freebit": s.freebit_port,
                 "salesforce_pubsub": s.salesforce_pubsub_port}  # fmt: skip
        argv = command_line(s.host, ports, webhook_url=self.endpoints.webhook)
        if self.options.freebit_activation_delay_s is not None:
            argv += ["--freebit-activation-delay", str(self.options.freebit_activation_delay_s)]
        # One probe URL stands for the process: the three apps start together, before it answers.
        health = f"{self.endpoints.freebit}/_sandbox/state"
        # stop_order 1: the workers (0) stop first, while the sandboxes still answer their last calls
        return ChildSpec(SANDBOX_CHILD, tuple(argv), env={SECRET_ENV: secret}, health_url=health, stop_order=1)

    def _worker_env(self) -> dict[str, str]:
        env = {"FLEET_LOG__FORMAT": "json", **self.options.worker_env}
        key = self._jwt_key_path()
        if key is not None:
            env["FLEET_SALESFORCE__PRIVATE_KEY_PATH"] = str(key)
        return env

    def _worker_spec(self, instance: Instance, env: Mapping[str, str]) -> ChildSpec:
        name, host = instance.worker, self.settings.runtime.health_host
        path = self.options.health_paths.get(name, "/readyz")
        health = f"http://{host}:{instance.health_port}{path}"
        child_env = {**env, "FLEET_RUNTIME__HEALTH_PORT": str(instance.health_port)}
        if name == "whmcs-webhooks":  # the receiver serves /readyz on its own listening port
            w = self.settings.whmcs
            port = receiver_port(self.settings, instance.index)
            health = f"http://{w.webhook_listen_host}:{port}{path}"
            child_env["FLEET_WHMCS__WEBHOOK_LISTEN_PORT"] = str(port)
        template = self.options.worker_command
        argv = tuple(shlex.split(template.format(name=name))) if template else worker_command(name)
        return ChildSpec(instance.child, argv, env=child_env, health_url=health)

    def _jwt_key_path(self) -> Path | None:
        """A throwaway RSA key for the JWT bearer grant (the sandbox accepts any), shared by every worker.

        Only when the settings ask for JWT without a key: every worker then signs with the same
        key instead of each needing its own fallback."""
        sf = self.settings.salesforce
        if sf.auth != "jwt" or sf.private_key_path is not None:
            return None
        path = (self.options.state_dir / "salesforce-jwt.pem").resolve()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
        return path

    # --- run / stop ----------------------------------------------------------------------------
    def status(self) -> list[ChildStatus]:
        return self.supervisor.status()

    async def stop(self, grace_s: float = 20.0) -> list[StopReport]:
        """Workers first (they drain and commit), then the sandboxes if we started them."""
        return await self.supervisor.stop(grace_s)


async def _all_answer(http: httpx.AsyncClient, endpoints: Endpoints) -> bool:
    for base in endpoints.sandboxes.values():
        try:
            if (await http.get(f"{base}/_sandbox/state")).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True
