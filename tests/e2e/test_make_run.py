"""Scenario: `make run` (``fleet demo up --exit-after-scenario``) fulfils every demo order and leaves nothing behind.

Contract: with the local stack and a set of sandboxes on ports of its own, ``fleet demo up`` starts
the five workers under its supervisor, runs the built-in scenario and exits 0. Its summary lists
every demo order as fulfilled, the one without a pay method as parked → resumed → fulfilled, the
physical SIM order as billed, then registered after the agent's Processed with a card the
Salesforce sandbox shows assigned to it, the scheduled one as activated at its time; the
Salesforce sandbox shows each order ``Activated`` with its WHMCS order id; the WHMCS sandbox holds
exactly one order per demo order; and once the command has exited, no process it started is alive.

The sandboxes are started by the test (not by the demo), so their state can be read after the demo
has exited; the demo then uses them as they are ("already running") and leaves them running.
Ports are free ones picked per run, so a developer's own `make run` does not get in the way. It runs
once per CDC transport: CometD, and the Pub/Sub API (``FLEET_SALESFORCE__CDC_TRANSPORT=pubsub``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandbox.demo_data import DEMO_ORDERS
from tests.stack_fixtures import stack_env  # noqa: F401
from workers.config import load_settings
from workers.console.app import build_app

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLEET = Path(sys.executable).with_name("fleet")
DEMO_TIMEOUT_S = 85.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Ports:
    salesforce: int
    whmcs: int
    freebit: int
    webhook: int
    health_base: int
    salesforce_pubsub: int
    console: int

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


@pytest.fixture
def ports() -> Ports:
    salesforce, whmcs, freebit, webhook, pubsub, console = _free_ports(6)
    # five consecutive health ports: take a free one and hope its neighbours are free too is fragile,
    # so probe a block
    base = next(p for p in range(29101, 29901, 10) if all(_port_free(p + i) for i in range(5)))
    return Ports(salesforce, whmcs, freebit, webhook, base, pubsub, console)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def sandboxes(ports: Ports, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The three sandboxes on the test's ports, in a process of the test's own."""
    ready = tmp_path / "ready.json"
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
    with (tmp_path / "sandbox.log").open("wb") as log:
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


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _stack_endpoints(stack: dict[str, str]) -> dict[str, str]:
    """The stack the session fixture chose, handed to the demo (it would otherwise read .fleet/stack.env)."""
    return {
        "FLEET_KAFKA__BOOTSTRAP": stack["KAFKA_BOOTSTRAP"],
        "FLEET_REDIS__URL": stack["REDIS_URL"],
        "FLEET_POSTGRES__DSN": stack["DATABASE_URL"],
    }


def _run_demo(env: dict[str, str], ports: Ports, summary: Path) -> tuple[int, str, set[int]]:
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


async def _console_orders_page(env: dict[str, str]) -> str:
    """The console's orders page, as the demo's console shows it, on the demo's settings."""
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


def _whmcs_orders_of(state: dict[str, Any], sf_order_id: str) -> list[dict[str, Any]]:
    marker = f"sfOrderId={sf_order_id}"
    return [o for o in state["orders"] if marker in str(o.get("notes", "")).split()]


@pytest.mark.parametrize("transport", ["cometd", "pubsub"])
def test_make_run_fulfils_every_demo_order_and_leaves_no_process_behind(
    stack_env: dict[str, str],  # noqa: F811
    ports: Ports,
    sandboxes: dict[str, str],
    tmp_path: Path,
    transport: str,
) -> None:
    summary_file = tmp_path / "summary.json"
    # `FLEET_SALESFORCE__CDC_TRANSPORT=pubsub make run`: the same scenario over the Pub/Sub API
    env = {**os.environ, **_stack_endpoints(stack_env), **ports.env(), "FLEET_SALESFORCE__CDC_TRANSPORT": transport}
    code, output, children = _run_demo(env, ports, summary_file)

    assert code == 0, output
    assert "result: PASS" in output
    assert f"console: http://127.0.0.1:{ports.console}/" in output, "make run prints the console's URL"
    summary = json.loads(summary_file.read_text())
    orders = summary["orders"]
    assert len(orders) == len(DEMO_ORDERS)
    assert {o["outcome"] for o in orders} == {"fulfilled"}, output
    [parked] = [o for o in orders if o["parked"]]
    assert parked["path"] == "parked → resumed → fulfilled"
    assert parked["customer"] == "sato"
    # the physical SIM order: billed on approval, waited for the agent's Processed, took a card
    [physical] = [o for o in orders if o["sf_order_id"] and o["path"].startswith("billed")]
    assert physical["path"] == "billed → Processed → SIM registered → fulfilled"
    [card] = httpx.get(
        f"{sandboxes['salesforce']}/_sandbox/sim-inventory", params={"assigned_order": physical["sf_order_id"]}
    ).json()
    assert (card["Status__c"], card["SIM_Type__c"]) == ("Assigned", "Physical")
    # the scheduled activation: waited on its durable timer, then activated
    [scheduled] = [o for o in orders if "scheduled" in o["label"]]
    assert scheduled["path"] == "scheduled → fulfilled at its time"

    sf_orders = {o["Id"]: o for o in httpx.get(f"{sandboxes['salesforce']}/_sandbox/state").json()["orders"]}
    whmcs = httpx.get(f"{sandboxes['whmcs']}/_sandbox/state").json()
    for order in orders:
        record = sf_orders[order["sf_order_id"]]
        assert record["Activation_Status__c"] == "Activated"
        assert record["WHMCS_Order_ID__c"] == order["whmcs_order_id"]
        [whmcs_order] = _whmcs_orders_of(whmcs, order["sf_order_id"])
        assert str(whmcs_order["id"]) == record["WHMCS_Order_ID__c"]

    shown = asyncio.run(_console_orders_page(env))
    for order in orders:
        assert order["sf_order_id"] in shown, "the console lists the demo's orders"

    assert len(children) >= 5, f"expected the five workers among the demo's children, saw {children}"
    deadline = time.monotonic() + 5
    while (alive := {pid for pid in children if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes started by `fleet demo up` still run after it exited: {alive}"
