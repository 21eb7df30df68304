"""`fleet demo up` as the e2e tests run it, and the one traced demo run the session shares.

Owns: free ports for a demo (``Ports``), the sandboxes in a process of the test's own (so their state
can be read after the demo has exited; the demo uses them "already running" and leaves them up), the
watch over the demo's descendants (``Descendants``), the development trace collector in a thread,
``run_demo`` (``--exit-after-scenario``), and the session fixture ``traced_demo``.

``traced_demo`` is ``make run`` (``fleet demo up``, CometD) started once for three scenarios that
would each start a whole fleet of their own (~25 s of demo each on the 2-core machine): tracing on to
the development collector, the periodic gauges looking every second; when the scenario's summary is
written, the five workers' /metrics pages are read until the scenario's work shows in them, then
the demo is stopped as Ctrl-C stops `make run` (SIGTERM), its output and exit code kept.
``test_make_run`` (CometD), ``test_metrics_catalog`` and ``test_tracing_demo`` assert on it; each
file's contract says what it checks. Must not assert: a run that went wrong is recorded as it went,
so each test fails with its own message, not all three with the fixture's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools import traces
from devtools.demo.fleet import WORKERS
from sandbox.demo_data import DEMO_ORDERS
from tests.support import from_the_shell

ROOT = Path(__file__).resolve().parents[2]
FLEET = Path(sys.executable).with_name("fleet")
#: `--exit-after-scenario`: the whole run, start to exit
DEMO_TIMEOUT_S = 85.0
#: the traced run: until the scenario's summary is written
SCENARIO_TIMEOUT_S = 120.0
#: then until the periodic gauges (dead letters, orders by state) show the scenario's work
SCRAPE_TIMEOUT_S = 30.0


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Ports:
    salesforce: int
    whmcs: int
    freebit: int
    webhook: int
    health_base: int
    salesforce_pubsub: int
    console: int

    @classmethod
    def pick(cls) -> Ports:
        salesforce, whmcs, freebit, webhook, pubsub, console = free_ports(6)
        # five consecutive health ports: take a free one and hope its neighbours are free too is fragile,
        # so probe a block
        base = next(p for p in range(29101, 29901, 10) if all(_port_free(p + i) for i in range(5)))
        return cls(salesforce, whmcs, freebit, webhook, base, pubsub, console)

    def env(self) -> dict[str, str]:
        sf = f"http://localhost:{self.salesforce}"  # localhost: the CometD cookie jar ignores IP hosts
        return {
            "FLEET_SANDBOX__SALESFORCE_PORT": str(self.salesforce),
            "FLEET_SANDBOX__WHMCS_PORT": str(self.whmcs),
            "FLEET_SANDBOX__FREEBIT_PORT": str(self.freebit),
            "FLEET_SANDBOX__SALESFORCE_PUBSUB_PORT": str(self.salesforce_pubsub),
            "FLEET_SALESFORCE__PUBSUB_ENDPOINT": f"127.0.0.1:{self.salesforce_pubsub}",
            "FLEET_SALESFORCE__INSTANCE_URL": sf,
            "FLEET_SALESFORCE__LOGIN_URL": sf,
            "FLEET_WHMCS__API_URL": f"http://127.0.0.1:{self.whmcs}/includes/api.php",
            "FLEET_FREEBIT__BASE_URL": f"http://127.0.0.1:{self.freebit}/emptool/api",
            "FLEET_WHMCS__WEBHOOK_LISTEN_PORT": str(self.webhook),
            "FLEET_CONSOLE__PORT": str(self.console),
        }

    def metrics_ports(self) -> dict[str, int]:
        """Where each worker serves /metrics: its health port; the receiver on its own listening port."""
        ports = {worker: self.health_base + i for i, worker in enumerate(WORKERS)}
        ports["whmcs-webhooks"] = self.webhook
        return ports


@contextmanager
def sandboxes_running(ports: Ports, workdir: Path) -> Iterator[dict[str, str]]:
    """The three sandboxes on ``ports``, in a process of the test's own; their base URLs by name."""
    ready = workdir / "sandbox-ready.json"
    argv = [
        sys.executable,
        "-m",
        "sandbox",
        "--salesforce-port",
        str(ports.salesforce),
        "--whmcs-port",
        str(ports.whmcs),
        "--freebit-port",
        str(ports.freebit),
        "--salesforce-pubsub-port",
        str(ports.salesforce_pubsub),
        "--freebit-activation-delay",
        "1",
        "--ready-file",
        str(ready),
    ]
    with (workdir / "sandbox.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the sandboxes did not start"
            time.sleep(0.1)
        yield {name: f"http://127.0.0.1:{getattr(ports, name)}" for name in ("salesforce", "whmcs", "freebit")}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def collector_running(workdir: Path) -> Iterator[tuple[traces.Collector, int]]:
    """The development collector on a free port, in a thread of this process."""
    (port,) = free_ports(1)
    collector = traces.Collector(workdir / "traces.jsonl")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_until_complete(traces.serve(collector, "127.0.0.1", port, stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield collector, port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


class Descendants:
    """Every process that descends from ``root`` while it runs (pids seen in /proc), for the after-check."""

    def __init__(self, root: int) -> None:
        self.root, self.seen, self._stop = root, set[int](), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            parents = _parents()
            family = {self.root}
            for _ in range(4):  # fleet → worker → helper: a few generations are plenty
                family |= {pid for pid, ppid in parents.items() if ppid in family}
            self.seen |= family - {self.root}
            self._stop.wait(0.2)

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join()
        return self.seen


def _parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stack_endpoints(stack: dict[str, str]) -> dict[str, str]:
    """The stack the session fixture chose, handed to the demo (it would otherwise read .fleet/stack.env)."""
    return {
        "FLEET_KAFKA__BOOTSTRAP": stack["KAFKA_BOOTSTRAP"],
        "FLEET_REDIS__URL": stack["REDIS_URL"],
        "FLEET_POSTGRES__DSN": stack["DATABASE_URL"],
    }


@dataclass
class DemoRun:
    """One `fleet demo up` as it went: what the tests assert on."""

    ports: Ports
    sandboxes: dict[str, str]
    env: dict[str, str]  # the demo's environment (the console's settings are read from it)
    summary_file: Path  # --summary-json: written when the scenario has run
    code: int | None = None  # None: it had to be killed
    output: str = ""
    children: set[int] = field(default_factory=set)  # every process it started (and their children)
    #: the traced run only: each worker's /metrics page after the scenario, and whether its work showed
    metrics: dict[str, str] = field(default_factory=dict)
    metrics_settled: bool = False
    #: the traced run only: every span the workers exported (flushed before they exited)
    spans: list[dict[str, Any]] = field(default_factory=list)


def run_demo(env: dict[str, str], ports: Ports, summary: Path) -> tuple[int, str, set[int]]:
    """``fleet demo up --exit-after-scenario``: its exit code, output and every process it started."""
    argv = [
        str(FLEET),
        "demo",
        "up",
        "--exit-after-scenario",
        "--summary-json",
        str(summary),
        "--health-port-base",
        str(ports.health_base),
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    family = Descendants(proc.pid)
    try:
        output, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo's own shutdown path, so the after-check still means something
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"`fleet demo up` did not finish within {DEMO_TIMEOUT_S:.0f} s:\n{output}")
    return proc.returncode, output, family.stop()


def scrape(ports: dict[str, int]) -> dict[str, str]:
    return {worker: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text for worker, port in ports.items()}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_value(pages: dict[str, str], worker: str, name: str, **labels: str) -> float | None:
    """The sum of ``worker``'s samples of ``name`` with ``labels`` (None: no such sample)."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in _samples(pages[worker]).items() if n == name and wanted <= set(ls)]
    return sum(found) if found else None


def scenario_worked(pages: dict[str, str]) -> bool:
    """The periodic gauges have their samples: every demo order fulfilled (the one sweeper's count),
    a dead-letter depth read from Kafka by each consumer group and by the ingress one (sf-cdc's leader)."""
    consumers = ("fulfillment", "sf-writer", "cache-invalidator")
    fulfilled = metric_value(pages, "fulfillment", "fleet_fulfillment_orders", state="fulfilled") or 0
    return (
        fulfilled >= len(DEMO_ORDERS)
        and all(metric_value(pages, w, "fleet_dead_letters") is not None for w in consumers)
        and metric_value(pages, "sf-cdc", "fleet_dead_letters", group="ingress") is not None
    )


@pytest.fixture(scope="session")
def traced_demo(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """`make run` over CometD with tracing on, run once for the session (see the module docstring).

    The sandboxes stay up until the session ends, so the tests read their state after the demo."""
    workdir = tmp_path_factory.mktemp("traced-demo")
    ports = Ports.pick()
    with sandboxes_running(ports, workdir) as urls, collector_running(workdir) as (collector, otlp_port):
        env = {
            # what clean_environ leaves a test (this fixture outlives one, so it runs before it)
            **{k: v for k, v in os.environ.items() if not from_the_shell(k)},
            "FLEET_SECRETS_DIR": str(tmp_path_factory.mktemp("no-secrets")),
            **stack_endpoints(stack_env),
            **ports.env(),
            "FLEET_SALESFORCE__CDC_TRANSPORT": "cometd",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            # look often, so the gauges fed by a periodic read have their samples while the test watches
            "FLEET_RUNTIME__DEAD_LETTER_CHECK_INTERVAL_S": "1",
            "FLEET_FULFILLMENT__STUCK_CHECK_INTERVAL_S": "1",
        }
        run = DemoRun(ports, urls, env, workdir / "summary.json")
        _run_until_scraped(run, workdir / "demo.log", scenario_worked)
        run.spans = list(collector.spans)  # every worker flushed its spans before it exited
        yield run


def _run_until_scraped(run: DemoRun, log_path: Path, worked: Callable[[dict[str, str]], bool]) -> None:
    """``fleet demo up`` (as `make run`): until its summary is written, then the /metrics pages until
    ``worked`` holds for them, then SIGTERM (Ctrl-C's path) and its exit."""
    argv = [str(FLEET), "demo", "up", "--summary-json", str(run.summary_file),
            "--health-port-base", str(run.ports.health_base)]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=run.env, stdout=log, stderr=subprocess.STDOUT, text=True)
    family = Descendants(proc.pid)
    try:
        deadline = time.monotonic() + SCENARIO_TIMEOUT_S
        while not run.summary_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None and run.summary_file.exists():
            deadline = time.monotonic() + SCRAPE_TIMEOUT_S
            while proc.poll() is None and not run.metrics_settled and time.monotonic() < deadline:
                try:
                    run.metrics = scrape(run.ports.metrics_ports())
                except httpx.HTTPError:
                    time.sleep(0.5)  # not every page answers yet
                    continue
                run.metrics_settled = worked(run.metrics)
                if not run.metrics_settled:
                    time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.terminate()  # Ctrl-C's path: the workers drain and exit, the demo returns the scenario's code
        try:
            run.code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        run.children = family.stop()
        run.output = log_path.read_text()


def console_orders_page(env: dict[str, str]) -> str:
    """The console's orders page, as the demo's console shows it, on the demo's settings."""
    from aiohttp.test_utils import TestClient, TestServer

    from workers.config import load_settings
    from workers.console.app import build_app

    async def page() -> str:
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in env.items() if k.startswith("FLEET_")})
        try:
            settings = load_settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        async with TestClient(TestServer(build_app(settings))) as client:
            response = await client.get("/orders")
            assert response.status == 200
            return await response.text()

    return asyncio.run(page())
