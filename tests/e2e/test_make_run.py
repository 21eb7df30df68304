"""Scenario: `make run` (``fleet demo up``) fulfils every demo order and leaves nothing behind.

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
once per CDC transport. CometD: the session's traced demo (``tests/e2e/fleet_demo.py``, shared with
the metrics catalog and the tracing scenarios), `make run` as a developer runs it, stopped after
the scenario the way Ctrl-C stops it (SIGTERM). The Pub/Sub API
(``FLEET_SALESFORCE__CDC_TRANSPORT=pubsub``): a run of its own, ``--exit-after-scenario``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.demo_data import DEMO_ORDERS
from tests.e2e.fleet_demo import (
    DemoRun,
    Ports,
    alive,
    console_orders_page,
    run_demo,
    sandboxes_running,
    stack_endpoints,
)

pytestmark = pytest.mark.e2e


def _whmcs_orders_of(state: dict[str, Any], sf_order_id: str) -> list[dict[str, Any]]:
    marker = f"sfOrderId={sf_order_id}"
    return [o for o in state["orders"] if marker in str(o.get("notes", "")).split()]


@pytest.fixture(params=["cometd", "pubsub"])
def make_run(request: pytest.FixtureRequest, stack_env: dict[str, str], tmp_path: Path) -> Iterator[DemoRun]:
    """`make run` over the transport: CometD's is the session's traced demo; Pub/Sub's runs here."""
    if request.param == "cometd":
        yield request.getfixturevalue("traced_demo")
        return
    ports = Ports.pick()
    with sandboxes_running(ports, tmp_path) as urls:
        # `FLEET_SALESFORCE__CDC_TRANSPORT=pubsub make run`: the same scenario over the Pub/Sub API
        env = {**os.environ, **stack_endpoints(stack_env), **ports.env(), "FLEET_SALESFORCE__CDC_TRANSPORT": "pubsub"}
        run = DemoRun(ports, urls, env, tmp_path / "summary.json")
        run.code, run.output, run.children = run_demo(env, ports, run.summary_file)
        yield run


def test_make_run_fulfils_every_demo_order_and_leaves_no_process_behind(make_run: DemoRun) -> None:
    run = make_run
    sandboxes, ports, code, output, children = run.sandboxes, run.ports, run.code, run.output, run.children

    assert code == 0, output
    assert "result: PASS" in output
    assert f"console: http://127.0.0.1:{ports.console}/" in output, "make run prints the console's URL"
    summary = json.loads(run.summary_file.read_text())
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

    shown = console_orders_page(run.env)
    for order in orders:
        assert order["sf_order_id"] in shown, "the console lists the demo's orders"

    assert len(children) >= 5, f"expected the five workers among the demo's children, saw {children}"
    deadline = time.monotonic() + 5
    while (left := {pid for pid in children if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes started by `fleet demo up` still run after it exited: {left}"
