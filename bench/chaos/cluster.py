"""The system under test of a chaos run, and the hands that hurt it.

Up: a private stack (``StackSettings.brokers`` KRaft nodes, Redis, PostgreSQL) in the run's state
directory, the sandboxes and every worker instance under the demo supervisor (``devtools.demo.fleet``,
which restarts a killed instance as Kubernetes or systemd would). The workers get every setting in
their environment (``ChaosConfig.worker_env``). Down: the workers, the sandboxes, then the stack
with its state (a run starts from nothing: empty topics, an empty database, fresh sandboxes).

The hands: ``kill -9`` of a worker instance or a broker, a broker's restart, Redis's restart, an
immediate PostgreSQL restart (``SIGQUIT`` to the postmaster: what ``pg_ctl stop -m immediate``
sends), vendor fault windows and CDC duplicates through the sandboxes' control API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from bench.chaos.config import ChaosConfig
from devtools import stack
from devtools.demo.fleet import Fleet, FleetOptions
from devtools.stack.process import stop as stop_server
from devtools.stack.process import wait_gone
from devtools.supervisor import ChildState
from workers.config import Settings, load_settings

Echo = Callable[[str], None]

#: 20 % of vendor calls fail while a window is open: rules are tried in order, each with its rate
VENDOR_FAULTS: list[dict[str, Any]] = [
    {"kind": "error", "status": 503, "rate": 0.06},
    {"kind": "error", "status": 429, "retry_after": 1, "rate": 0.05},
    {"kind": "timeout", "hold_s": 30, "rate": 0.03},
    {"kind": "drop", "rate": 0.07},
    {"kind": "latency", "latency_ms": 200, "latency_max_ms": 800, "rate": 0.1},
]
#: Salesforce: the REST calls of the fleet; CometD has its own faults (duplicates, dropped clients)
SF_ENDPOINTS = ("sobjects.get", "sobjects.update", "query", "composite.update", "oauth.token")


class Cluster:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        os.environ.update(config.worker_env())  # this process's Settings are the workers'
        self.settings: Settings = load_settings(env_file=None)
        state = config.state_dir
        self.fleet = Fleet(
            self.settings,
            FleetOptions(
                instances=dict(config.instances),
                health_port_base=config.ports.health,
                log_dir=state / "logs",
                env_file=state / "stack.env",
                state_dir=state / "demo",
                ready_timeout_s=180.0,
                worker_env=config.worker_env(),
                # standbys are live, not ready; ``active_cdc`` checks that exactly one subscribes
                health_paths={"sf-cdc": "/livez"},
            ),
        )
        self.http = httpx.AsyncClient(timeout=30.0)

    # --- up and down --------------------------------------------------------------------------
    async def start(self, echo: Echo) -> None:
        await self._purge()
        statuses = await self.fleet.start(echo)
        down = [s for s in statuses if s.label not in ("healthy", "running")]
        if down:
            raise RuntimeError("not ready: " + ", ".join(f"{s.name} {s.label} ({s.reason})" for s in down))
        if await until(self.settled, 60.0) is None:
            raise RuntimeError(f"no single active sf-cdc subscriber: {await self.active_cdc()} ready")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.fleet.stop(grace_s=20.0)
        await self.http.aclose()
        await self._kill_stack()
        await stack.down(self.settings.stack, env_file=self.config.state_dir / "stack.env", purge=True)

    async def _kill_stack(self) -> None:
        """The run is over and its state is deleted next, so no server's clean shutdown is waited for
        (three brokers' controlled shutdowns were most of the ~8 s ``stack.down`` took): Kafka and Redis
        get SIGKILL, PostgreSQL SIGQUIT (immediate shutdown, as in ``restart_postgres``). ``stack.down``
        then finds nothing running, cleans the pid files and purges."""
        servers = self._stack()

        async def kill(service: stack.Service) -> None:
            pid = service.running_pid()
            if pid is not None:
                sig = signal.SIGQUIT if service is servers.postgres else signal.SIGKILL
                await stop_server(pid, service.signature, sig, 10.0)

        await asyncio.gather(*(kill(service) for service in servers.services), return_exceptions=True)

    async def _purge(self) -> None:
        """A run starts from nothing: whatever an earlier, interrupted run left is stopped and removed."""
        if self.settings.stack.dir.exists():
            await stack.down(self.settings.stack, env_file=self.config.state_dir / "stack.env", purge=True)

    # --- the workers --------------------------------------------------------------------------
    def children(self) -> dict[str, Any]:
        return {status.name: status for status in self.fleet.status()}

    def kill_worker(self, child: str) -> int | None:
        status = self.children().get(child)
        if status is None or status.pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGKILL)
        return int(status.pid)

    def unhealthy(self) -> list[str]:
        up = (ChildState.HEALTHY, ChildState.RUNNING)
        return sorted(s.name for s in self.fleet.status() if s.state not in up and s.name != "sandboxes")

    async def active_cdc(self) -> int:
        """How many sf-cdc instances say they are ready (subscribed): exactly one, once settled."""
        ready = 0
        for instance in self.fleet.options.children():
            if instance.worker != "sf-cdc":
                continue
            with contextlib.suppress(httpx.HTTPError):
                answer = await self.http.get(f"http://127.0.0.1:{instance.health_port}/readyz", timeout=2.0)
                ready += answer.status_code == 200
        return ready

    async def settled(self) -> bool:
        """Every instance is up (live, for sf-cdc) and exactly one sf-cdc subscribes."""
        return not self.unhealthy() and await self.active_cdc() == 1

    # --- infrastructure -----------------------------------------------------------------------
    def _stack(self) -> stack.Stack:
        return stack.Stack.from_settings(self.settings.stack)

    async def leader_of_busiest(self, topics: tuple[str, ...] = ("sf.order.v1", "whmcs.billing.v1")) -> int:
        """The node leading most partitions of the busiest topics (ties: the lowest id)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            counts: dict[int, int] = {}
            for topic in await admin.describe_topics(list(topics)):
                for partition in topic["partitions"]:
                    if partition["leader"] >= 0:
                        counts[partition["leader"]] = counts.get(partition["leader"], 0) + 1
        finally:
            await admin.close()
        return min(counts, key=lambda node: (-counts[node], node)) if counts else 1

    async def kill_broker(self, node_id: int) -> int | None:
        node = self._stack().kafka_nodes[node_id - 1]
        pid = node.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            await wait_gone([pid], 30.0)
        return pid

    async def restart_broker(self, node_id: int) -> None:
        """Start the killed node again (stale pid file cleaned, its death reaped) and wait until the
        cluster reports every broker; back in every ISR comes later (``in_sync``)."""
        await stack.restart_node(self.settings.stack, node_id)

    async def restart_redis(self) -> None:
        redis = self._stack().redis
        pid = redis.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # no persistence: every cached key is gone, as after a failover
            await wait_gone([pid], 30.0)
        await stack.restart_service(self.settings.stack, "redis")

    async def restart_postgres(self) -> None:
        postgres = self._stack().postgres
        pid = postgres.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: no checkpoint, sessions cut, crash recovery next
            await wait_gone([pid], 30.0)
        await stack.restart_service(self.settings.stack, "postgres")

    async def in_sync(self, topics: tuple[str, ...] = ("sf.order.v1", "whmcs.billing.v1")) -> bool:
        """Every partition of ``topics`` has a leader and all its replicas in sync."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            described = await admin.describe_topics(list(topics))
        except Exception:  # noqa: BLE001 - a cluster that cannot answer is not in sync
            return False
        finally:
            await admin.close()
        return all(p["leader"] >= 0 and set(p["isr"]) == set(p["replicas"]) for t in described for p in t["partitions"])

    async def led(self, topics: tuple[str, ...] = ("sf.order.v1", "whmcs.billing.v1")) -> bool:
        """Every partition of ``topics`` has a live leader (producing works again)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap, request_timeout_ms=5_000)
        try:
            await admin.start()
            described = await admin.describe_topics(list(topics))
            live = {b["node_id"] for b in (await admin.describe_cluster())["brokers"]}
        except Exception:  # noqa: BLE001
            return False
        finally:
            await admin.close()
        return all(p["leader"] in live for t in described for p in t["partitions"])

    # --- the sandboxes ------------------------------------------------------------------------
    async def vendor_faults(self, on: bool) -> None:
        for system in ("salesforce", "whmcs", "freebit"):
            url = f"{self.config.sandbox_url(system)}/_sandbox/faults"
            await self.http.delete(url)
            if not on:
                continue
            endpoints = SF_ENDPOINTS if system == "salesforce" else ("*",)
            for endpoint in endpoints:
                for rule in VENDOR_FAULTS:
                    (await self.http.post(url, json={"endpoint": endpoint, **rule})).raise_for_status()

    async def cdc_duplicate(self, channel: str) -> bool:
        answer = await self.http.post(
            f"{self.config.sandbox_url('salesforce')}/_sandbox/events/duplicate", json={"channel": channel}
        )
        return answer.status_code == 200

    async def unlimited_api_budget(self) -> None:
        url = f"{self.config.sandbox_url('salesforce')}/_sandbox/api-usage"
        await self.http.post(url, json={"used": 0, "limit": 10_000_000})


async def until(condition: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> float | None:
    """Seconds until ``await condition()`` (or a plain truthy call) holds; None at the timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(every_s)
    return None
