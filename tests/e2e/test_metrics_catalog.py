"""Scenario: the fleet's metric catalog is what the running workers really export.

Contract: with `fleet demo up` (the five workers under its supervisor, the demo scenario run to its
end), the five /metrics pages together expose exactly the series of deploy/observability/metrics.txt
(names as PromQL spells them: ``_total`` of a counter, ``_bucket``/``_sum``/``_count`` of a histogram),
and every metric an alert rule or a dashboard panel names is among them; so a renamed or removed
metric fails here, and `make check` (deploy/observability/check.py) fails on a rule or panel naming a
metric the catalog lacks. After the scenario the business metrics show its work: the fulfilled orders
by state (from the one sweeper), step latency per vendor, portal keys busted, the CDC lag observed,
and each consumer group's dead-letter depth read from Kafka, and the ingress one's (sf-cdc's leader).

``WRITE_METRICS_CATALOG=1`` rewrites metrics.txt from the scrape instead of comparing.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.demo.fleet import WORKERS
from sandbox.demo_data import DEMO_ORDERS
from tests.e2e.test_make_run import FLEET, ROOT, Ports, _stack_endpoints, ports, sandboxes  # noqa: F401
from tests.stack_fixtures import stack_env  # noqa: F401
from tests.support import load_script

pytestmark = pytest.mark.e2e

SCENARIO_TIMEOUT_S = 120.0
WRITE_ENV = "WRITE_METRICS_CATALOG"


def _check_module() -> ModuleType:
    return load_script(ROOT / "deploy/observability/check.py", "observability_check")


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(pages: dict[str, str], worker: str, name: str, **labels: str) -> float | None:
    wanted = set(labels.items())
    found = [v for (n, ls), v in _samples(pages[worker]).items() if n == name and wanted <= set(ls)]
    return sum(found) if found else None


def test_the_running_fleet_exports_the_catalog_and_every_metric_the_dashboards_and_rules_name(
    stack_env: dict[str, str],  # noqa: F811
    ports: Ports,  # noqa: F811
    sandboxes: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    check = _check_module()
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        **_stack_endpoints(stack_env),
        **ports.env(),
        # look often, so the gauges fed by a periodic read have their samples while the test watches
        "FLEET_RUNTIME__DEAD_LETTER_CHECK_INTERVAL_S": "1",
        "FLEET_FULFILLMENT__STUCK_CHECK_INTERVAL_S": "1",
    }
    argv = [str(FLEET), "demo", "up", "--summary-json", str(summary), "--health-port-base", str(ports.health_base)]
    with (tmp_path / "demo.log").open("w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    health = {worker: ports.health_base + i for i, worker in enumerate(WORKERS)}
    health["whmcs-webhooks"] = ports.webhook  # the receiver serves /metrics on its own listening port
    try:
        deadline = time.monotonic() + SCENARIO_TIMEOUT_S
        while not summary.exists():
            assert proc.poll() is None, f"`fleet demo up` exited:\n{(tmp_path / 'demo.log').read_text()}"
            assert time.monotonic() < deadline, f"no scenario summary:\n{(tmp_path / 'demo.log').read_text()}"
            time.sleep(0.5)

        def pages() -> dict[str, str]:
            return {worker: _scrape(port) for worker, port in health.items()}

        def worked(shown: dict[str, str]) -> bool:
            consumers = ("fulfillment", "sf-writer", "cache-invalidator")
            fulfilled = _value(shown, "fulfillment", "fleet_fulfillment_orders", state="fulfilled") or 0
            return (
                fulfilled >= len(DEMO_ORDERS)
                and all(_value(shown, w, "fleet_dead_letters") is not None for w in consumers)
                and _value(shown, "sf-cdc", "fleet_dead_letters", group="ingress") is not None
            )

        deadline = time.monotonic() + 30
        while not worked(shown := pages()):
            assert time.monotonic() < deadline, "the periodic gauges never showed their samples"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    # the business metrics after the scenario's real work
    assert (_value(shown, "fulfillment", "fleet_fulfillment_step_duration_seconds_count", vendor="whmcs") or 0) > 0
    assert (_value(shown, "fulfillment", "fleet_fulfillment_step_duration_seconds_count", vendor="freebit") or 0) > 0
    assert (_value(shown, "cache-invalidator", "fleet_cache_keys_busted_total") or 0) > 0
    assert (_value(shown, "sf-cdc", "sf_cdc_stream_lag_seconds_count") or 0) > 0
    assert (_value(shown, "whmcs-webhooks", "fleet_whmcs_webhooks_received_total") or 0) > 0
    for worker in ("fulfillment", "sf-writer", "cache-invalidator"):
        depth = _value(shown, worker, "fleet_dead_letters")
        assert depth is not None and depth >= 0, f"{worker}: no dead-letter depth read from Kafka"
    ingress = _value(shown, "sf-cdc", "fleet_dead_letters", group="ingress")  # the CDC leader's
    assert ingress is not None and ingress >= 0, "sf-cdc: no depth of ingress.dlq.v1 read from Kafka"

    # the catalog is the scrape
    by_worker = {worker: check.series_names(text) for worker, text in shown.items()}
    exported = {name for names in by_worker.values() for name in names}
    named = check.named_metrics()
    missing = {metric: sorted(where) for metric, where in named.items() if metric not in exported}
    assert not missing, f"dashboards or rules name metrics no worker exports: {missing}"
    rendered = check.render_catalog(by_worker)
    if os.environ.get(WRITE_ENV) == "1":
        check.CATALOG.write_text(rendered)
    assert check.CATALOG.read_text() == rendered, (
        f"{check.CATALOG} is out of date with the workers' /metrics pages: rerun this test with {WRITE_ENV}=1"
    )
