"""Scenario: ``make chaos-smoke``, the short chaos run, inside ``make test``.

Contract: over a three-broker cluster with several instances of every worker, under a fixed-seed
schedule (kill -9 of worker instances and of the broker leading the busiest partitions, Redis and
PostgreSQL restarts, vendor fault windows, crash points between vendor calls and their records,
duplicate webhooks and CDC events), the independent checker finds no duplicate WHMCS order, no SIM
registered twice, no accepted webhook missing from Kafka, no order without an outcome and no stale
portal key. The run uses its own ports and state (``bench.chaos``); the local stack is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_chaos_smoke_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "chaos-smoke.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--smoke", "--seed", "7", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    check = report["check"]
    assert check["zeros"] == {
        "duplicate_whmcs_orders": 0,
        "duplicate_sim_registrations": 0,
        "lost_webhooks": 0,
        "lost_orders": 0,
        "stale_portal_keys": 0,
    }, json.dumps(check, indent=2)[:4000]
    assert check["orders"]["activated"] > 0 and check["webhooks"]["accepted"] > 0
    assert any(f["kind"] == "kill-broker" and f.get("recovered_s") for f in report["faults"])
    assert run.returncode == 0, run.stdout[-3000:]
