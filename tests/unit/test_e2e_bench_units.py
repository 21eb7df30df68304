"""The pure helpers of bench.e2e_bench behind the key-concurrency comparison (no fleet, no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.e2e_bench import (
    BASELINE_IN_FLIGHT,
    IN_FLIGHT_ENV,
    _target,
    parse_args,
    route_keys_in_flight,
    speedup,
    worker_options,
)
from workers.config import RuntimeSettings


def test_speedup_is_the_ratio_of_the_rates_to_two_places() -> None:
    assert speedup({"orders_per_s": 62.5}, {"orders_per_s": 11.0}) == 5.68
    assert speedup({"orders_per_s": 11.0}, {"orders_per_s": 11.0}) == 1.0


@pytest.mark.parametrize(
    ("faster", "slower"),
    [
        ({"orders_per_s": 60.0}, {"not measured": "skipped (--no-baseline-burst)"}),
        ({"not measured": "sf-cdc is starting"}, {"orders_per_s": 11.0}),
        ({"orders_per_s": 60.0}, {"orders_per_s": None}),  # nothing activated
        ({"orders_per_s": 60.0}, {"orders_per_s": 0}),
    ],
)
def test_speedup_is_none_when_a_rate_is_missing(faster: dict[str, object], slower: dict[str, object]) -> None:
    assert speedup(faster, slower) is None


def test_target_compares_in_the_direction_it_names() -> None:
    assert _target(5.68, 5, ">=") == {"value": 5.68, "target": ">= 5", "met": True}
    assert _target(4.99, 5, ">=")["met"] is False
    assert _target(5, 5, ">=")["met"] is True
    assert _target(120.0, 100, "<=") == {"value": 120.0, "target": "<= 100", "met": False}
    assert _target(None, 5, ">=")["met"] is None
    with pytest.raises(ValueError):
        _target(1.0, 5, ">")


def test_the_variable_is_the_runtime_setting_and_the_baseline_is_one_at_a_time() -> None:
    assert IN_FLIGHT_ENV == "FLEET_RUNTIME__MAX_IN_FLIGHT_PER_PARTITION"
    assert "max_in_flight_per_partition" in RuntimeSettings.model_fields
    assert BASELINE_IN_FLIGHT == 1


def test_baseline_options() -> None:
    args = parse_args([])
    # both bursts are 1,000 orders; the measured one runs each route's own keys in flight
    assert (args.baseline_orders, args.no_baseline_burst, args.orders, args.keys_in_flight) == (1000, False, 1000, None)
    assert route_keys_in_flight()["fulfillment"] == 16 and route_keys_in_flight()["sf-writer"] == 1
    args = parse_args(["--baseline-orders", "50", "--no-baseline-burst"])
    assert (args.baseline_orders, args.no_baseline_burst) == (50, True)


def test_each_worker_is_started_with_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from devtools.demo.fleet import Fleet, FleetOptions
    from workers.config import load_settings

    settings = load_settings(env_file=None)
    options = FleetOptions(worker_env={"FLEET_LOG__LEVEL": "INFO"}, log_dir=tmp_path, state_dir=tmp_path)
    fleet = Fleet(settings, worker_options(options, BASELINE_IN_FLIGHT))
    env = fleet._worker_env()
    specs = [fleet._worker_spec(instance, env) for instance in fleet.options.children()]
    assert {spec.name for spec in specs} == set(options.workers)
    assert all(spec.env[IN_FLIGHT_ENV] == "1" and spec.env["FLEET_LOG__LEVEL"] == "INFO" for spec in specs)
    assert options.worker_env == {"FLEET_LOG__LEVEL": "INFO"}  # the options passed in are left as they were

    monkeypatch.setenv(IN_FLIGHT_ENV, "1")  # what a worker started with that variable reads
    assert load_settings(env_file=None).runtime.max_in_flight_per_partition == 1


def test_processes_are_counted_by_kind_and_reported_in_cores() -> None:
    from bench.e2e_bench import _process_kind, cpu_report

    assert _process_kind("/v/bin/python3 /v/bin/fleet run fulfillment ") == "fulfillment"
    assert _process_kind("/usr/bin/java -Xmx1g -cp /k/libs/* kafka.Kafka /k/server.properties") == "kafka"
    assert _process_kind("postgres: postgres fleet 127.0.0.1(53028) idle") == "postgres"
    assert _process_kind("/usr/bin/vim notes.txt") is None
    report = cpu_report(
        {"fulfillment": 1.0, "kafka": 5.0}, {"fulfillment": 11.0, "kafka": 7.0, "redis": 1.0}, 10.0, 400
    )
    assert report["cores"] == {"fulfillment": 1.0, "kafka": 0.2, "redis": 0.1}
    assert (report["cores_total"], report["cpu_ms_per_order"]) == (1.3, 32.5)


def test_duplicates_count_orders_created_twice_and_sims_registered_twice() -> None:
    from bench.e2e_bench import duplicates_in

    whmcs = {
        "orders": [
            {"notes": "sfOrderId=801A"},
            {"notes": "sfOrderId=801A"},  # created twice
            {"notes": "sfOrderId=801B"},
            {"notes": "sfOrderId=801Z"},  # another phase's order
        ]
    }
    ok, faulted = {"status": 200, "fault": None}, {"status": 500, "fault": "error"}
    freebit = [
        {"endpoint": "master/addAcnt", "body": 'json={"account": "07000000001"}', **ok},
        {"endpoint": "master/addAcnt", "body": 'json={"account": "07000000001"}', **ok},  # registered twice
        {"endpoint": "mvno/esim/addAcnt", "body": 'json={"account": "07000000002"}', **ok},
        {"endpoint": "mvno/esim/addAcnt", "body": 'json={"account": "07000000002"}', **faulted},  # harmed: a retry
        {"endpoint": "mvno/getDetail", "body": 'json={"account": "07000000002"}', **ok},
    ]
    assert duplicates_in(["801A", "801B", "801C"], whmcs, freebit) == {
        "whmcs_orders_twice": 1,
        "sim_registrations_twice": 1,
        "orders_without_whmcs_order": 1,
    }
