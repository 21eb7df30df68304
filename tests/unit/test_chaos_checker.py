"""The chaos run's own parts: the schedule comes from the seed alone, and the checker can fail (it finds
a duplicate WHMCS order, a SIM registered twice, a lost order and a lost webhook in a made-up world)."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

from bench.chaos import checker
from bench.chaos.config import ChaosConfig
from bench.chaos.schedule import make_schedule

ROOT = Path(__file__).resolve().parents[2]


def test_the_schedule_is_the_seeds_and_infrastructure_faults_never_overlap() -> None:
    config = ChaosConfig.full(42)
    first, again, other = (
        make_schedule(config),
        make_schedule(ChaosConfig.full(42)),
        make_schedule(ChaosConfig.full(43)),
    )
    assert first == again and first != other
    kinds = Counter(f.kind for f in first)
    assert kinds == {
        "kill-worker": config.worker_kills,
        "kill-broker": config.broker_kills,
        "restart-redis": 1,
        "restart-postgres": 1,
        "cdc-duplicate": config.cdc_duplicates,
        "vendor-faults": 2,
    }
    infra = sorted(f.at_s for f in first if f.kind in ("kill-broker", "restart-redis", "restart-postgres"))
    assert all(b - a > 20 for a, b in zip(infra, infra[1:], strict=False))
    assert all(0 <= f.at_s <= config.duration_s for f in first)


def test_the_checker_imports_nothing_of_the_fleet() -> None:
    tree = ast.parse((ROOT / "bench" / "chaos" / "checker.py").read_text())
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"workers", "adapters", "events", "schemas", "sandbox", "bench"}


def test_orders_lost_and_done_twice_are_found() -> None:
    offered = {
        "801A": {"kind": "internet", "type": "Internet", "approved_at": 1.0},
        "801B": {"kind": "sim", "type": "SIM", "approved_at": 1.0},
        "801C": {"kind": "parked", "type": "Internet", "approved_at": 1.0},
        "801D": {"kind": "vpn", "type": "VPN", "approved_at": 1.0},
    }
    sf = {
        "801A": {"Activation_Status__c": "Activated"},
        "801B": {"Activation_Status__c": "Activated"},
        "801C": {"Activation_Status__c": "Activating", "Activation_Error_Code__c": "PAYMENT_METHOD_MISSING"},
        "801D": {"Status": "Approved", "Activation_Status__c": "Activating"},
    }
    orders = checker._orders(offered, sf)
    assert (orders["activated"], orders["with_error_code"], orders["lost"]) == (2, {"PAYMENT_METHOD_MISSING": 1}, 1)
    whmcs = {"orders": [{"notes": "sfOrderId=801A"}, {"notes": "sfOrderId=801A"}, {"notes": "sfOrderId=801B"}]}
    found = checker._whmcs(offered, orders["outcome_of"], whmcs)
    assert (found["duplicated"], found["duplicated_examples"]) == (1, ["801A"])

    def registration(account: str, fault: str | None = None) -> dict[str, object]:
        body = urlencode({"json": json.dumps({"account": account, "authKey": "k"})})
        return {"endpoint": "master/addAcnt", "body": body, "status": 200, "fault": fault}

    log = [registration("0801", fault="timeout"), registration("0801"), registration("0802"), registration("0802")]
    sims = checker._freebit(
        offered, orders["outcome_of"], {"accounts": [{"account": "0801"}, {"account": "0802"}]}, log
    )
    assert (sims["registered_twice"], sims["registered_twice_examples"]) == (1, ["0802"])


def test_an_accepted_webhook_missing_from_kafka_is_lost() -> None:
    offered = {"w1": {"accepted": True}, "w2": {"accepted": True}, "w3": {"accepted": False}}
    found = checker._webhooks(offered, Counter({"w1": 2}))
    assert (found["accepted_not_on_kafka"], found["lost_examples"], found["never_accepted"]) == (1, ["w2"], 1)
    assert found["records_per_accepted_webhook"] == {2: 1, 0: 1}
