"""Sandbox ids never repeat across restarts, so a long-lived stack (its PostgreSQL ledger) stays consistent.

Contract: two ``python -m sandbox`` processes started one after the other hand out different
Salesforce Order and OrderItem ids and different WHMCS order, service and invoice ids, the later
process's above the earlier's. Salesforce ids stay valid 18-character ids (key prefix, the
case-safe suffix of their 15-character form); the demo world's seeded records keep their ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import demo_data

pytestmark = pytest.mark.integration
WHMCS_AUTH = {"identifier": "fleet-api", "secret": "sandbox-whmcs-secret", "responsetype": "json"}


def case_safe_suffix(id15: str) -> str:
    """Salesforce's suffix of an 18-character id, computed here independently of the sandbox."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    return "".join(alphabet[sum(1 << i for i, c in enumerate(id15[n : n + 5]) if "A" <= c <= "Z")] for n in (0, 5, 10))


@contextmanager
def sandbox_process(tmp_path: Path, name: str) -> Iterator[dict[str, int]]:
    """``python -m sandbox`` on free ports; yields the ports it bound, then stops it (SIGTERM)."""
    ready = tmp_path / f"{name}.ready.json"
    argv = [sys.executable, "-m", "sandbox", "--salesforce-port", "0", "--whmcs-port", "0", "--freebit-port", "0",
            "--ready-file", str(ready)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text():
            assert process.poll() is None, "the sandbox process exited"
            assert time.monotonic() < deadline, "the sandbox process never got ready"
            time.sleep(0.05)
        yield json.loads(ready.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)


def new_records(ports: dict[str, int]) -> dict[str, Any]:
    """One Salesforce order with two lines, one WHMCS order (with its invoice) for a demo client."""
    sf = f"http://127.0.0.1:{ports['salesforce']}"
    seeded = httpx.post(f"{sf}/_sandbox/seed", json={"orders": [{"customer": "tanaka", "Type": "Internet",
                        "lines": ["INT-1G-GOLD", "INT-INSTALL-SINGLE"]}]}, timeout=10)  # fmt: skip
    seeded.raise_for_status()
    [order] = seeded.json()["orders"]
    form = {**WHMCS_AUTH, "action": "AddOrder", "clientid": "1001", "paymentmethod": "mailin",
            "pid[]": ["182", "242"], "billingcycle[]": ["monthly", "onetime"]}  # fmt: skip
    added = httpx.post(f"http://127.0.0.1:{ports['whmcs']}/includes/api.php", data=form, timeout=10).json()
    assert added["result"] == "success", added
    return {
        "order": order["id"],
        "items": [i["id"] for i in order["items"]],
        "whmcs_order": int(added["orderid"]),
        "services": [int(s) for s in added["serviceids"].split(",")],
        "invoice": int(added["invoiceid"]),
        "seeded": [order["AccountId"], *(i["PricebookEntryId"] for i in order["items"])],
    }


def test_two_sandbox_processes_one_after_the_other_hand_out_different_ids(tmp_path: Path) -> None:
    with sandbox_process(tmp_path, "first") as ports:
        first = new_records(ports)
    with sandbox_process(tmp_path, "second") as ports:
        second = new_records(ports)

    assert first["order"] != second["order"] and not set(first["items"]) & set(second["items"])
    assert first["order"][:15] != second["order"][:15], "unique in their 15-character (case-sensitive) form too"
    assert second["order"] > first["order"], "numbered upwards: one width, 0-9A-Za-z"
    assert second["whmcs_order"] > first["whmcs_order"]
    assert min(second["services"]) > max(first["services"]) and second["invoice"] > first["invoice"]
    assert second["whmcs_order"] < 2**31, "fits fulfillment_orders.whmcs_order_id (integer)"
    for record_id in (first["order"], *first["items"], second["order"], *second["items"]):
        assert len(record_id) == 18 and record_id.isalnum()
        assert record_id[15:] == case_safe_suffix(record_id[:15])
    assert first["order"].startswith("801") and first["items"][0].startswith("802")
    tanaka = demo_data.CUSTOMERS[0]["sf_account_id"]
    assert first["seeded"] == second["seeded"] and first["seeded"][0] == tanaka, "the demo world's ids are stable"
