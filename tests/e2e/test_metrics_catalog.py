"""Scenario: the fleet's metric catalog is what the running workers really export.

Contract: with `fleet demo up` (the five workers under its supervisor, the demo scenario run to its
end; the session's traced demo, ``tests/e2e/fleet_demo.py``, its gauges reading every second), the
five /metrics pages, read until the periodic gauges have their samples, together expose exactly the
series of deploy/observability/metrics.txt (names as PromQL spells them: ``_total`` of a counter,
``_bucket``/``_sum``/``_count`` of a histogram), and every metric an alert rule or a dashboard panel
names is among them; so a renamed or removed metric fails here, and `make check`
(deploy/observability/check.py) fails on a rule or panel naming a metric the catalog lacks. After
the scenario the business metrics show its work: the fulfilled orders by state (from the one
sweeper), step latency per vendor, portal keys busted, the CDC lag observed, and each consumer
group's dead-letter depth read from Kafka, and the ingress one's (sf-cdc's leader).

``WRITE_METRICS_CATALOG=1`` rewrites metrics.txt from the scrape instead of comparing.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from tests.e2e.fleet_demo import ROOT, DemoRun
from tests.e2e.fleet_demo import metric_value as _value
from tests.support import load_script

pytestmark = pytest.mark.e2e

WRITE_ENV = "WRITE_METRICS_CATALOG"


def _check_module() -> ModuleType:
    return load_script(ROOT / "deploy/observability/check.py", "observability_check")


def test_the_running_fleet_exports_the_catalog_and_every_metric_the_dashboards_and_rules_name(
    traced_demo: DemoRun,
) -> None:
    check = _check_module()
    assert traced_demo.summary_file.exists(), f"no scenario summary:\n{traced_demo.output}"
    assert traced_demo.metrics_settled, f"the periodic gauges never showed their samples:\n{traced_demo.output}"
    shown = traced_demo.metrics

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
