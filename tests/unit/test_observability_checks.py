"""deploy/observability/check.py, the offline half of the dashboards' and alert rules' validation.

Contract: every alert rule has a severity, a summary, a description and a runbook link to a heading
that exists under docs/ (a missing anchor fails); every dashboard is on a Prometheus ``datasource``
variable; the metric names a PromQL expression selects are found (functions, labels, ranges and
Grafana variables are not names); a scrape's series are named as PromQL names them; and every metric
the rules and dashboards name is in the catalog (metrics.txt, checked against the running fleet by
tests/e2e/test_metrics_catalog.py).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.support import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_script(ROOT / "deploy/observability/check.py", "observability_check")


def test_the_shipped_rules_dashboards_and_catalog_pass(check: ModuleType) -> None:
    assert check.all_problems() == []


def test_every_required_alert_is_there_with_a_runbook(check: ModuleType) -> None:
    alerts = {rule["alert"]: rule for rule in check.rules()}
    assert set(alerts) >= {
        "FleetConsumerLagGrowing", "FleetDeadLettersAppearing", "FleetOldestDeadLetterNearRetention",
        "FleetOrdersStuck", "FleetWebhookRejectionsSpiking", "FleetCdcStreamSilent", "FleetCdcReplayFallback",
        "FleetCircuitBreakerOpen", "FleetSalesforceApiBudgetNearlySpent",
    }  # fmt: skip
    for name, rule in alerts.items():
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}"


def test_a_runbook_link_to_a_missing_heading_or_file_fails(check: ModuleType) -> None:
    annotations = {"summary": "s", "description": "d", "runbook_url": "docs/runbooks.md#no-such-heading"}
    rule = {"alert": "X", "expr": "up", "labels": {"severity": "warning"}, "annotations": annotations}
    assert any("no heading with that anchor" in p for p in check.rule_problems(rule))
    rule["annotations"]["runbook_url"] = "docs/nothing-here.md#x"
    assert any("no such file" in p for p in check.rule_problems(rule))
    del rule["labels"]["severity"]
    assert any("severity" in p for p in check.rule_problems(rule))


def test_a_dashboard_without_the_datasource_variable_fails(check: ModuleType) -> None:
    doc = {"uid": "u", "title": "t", "templating": {"list": []},
           "panels": [{"title": "p", "datasource": {"uid": "prom"}, "targets": [{"expr": "up"}]}]}  # fmt: skip
    problems = check.dashboard_problems(Path("x.json"), doc)
    assert any("datasource variable" in p for p in problems)
    assert any("panel 'p' is not on ${datasource}" in p for p in problems)


def test_metric_names_are_found_in_promql(check: ModuleType) -> None:
    expr = (
        'histogram_quantile(0.95, sum by (group, le) (rate(fleet_handler_duration_seconds_bucket{group=~"$group"}'
        "[$__rate_interval]))) > on (group) group_left (topic) max without (instance) (fleet_consumer_lag offset 5m)"
        ' and sum(increase(sf_cdc_dead_letters_total{code="rate"}[10m])) > 1e3 unless absent(sf_cdc_ready)'
    )
    assert check.promql_metrics(expr) == {
        "fleet_handler_duration_seconds_bucket", "fleet_consumer_lag", "sf_cdc_dead_letters_total", "sf_cdc_ready",
    }  # fmt: skip


def test_series_are_named_as_promql_names_them(check: ModuleType) -> None:
    registry = CollectorRegistry()
    Counter("a_things", "", ["x"], registry=registry)
    Counter("b_things_total", "", registry=registry).inc()
    Histogram("c_seconds", "", registry=registry)
    Gauge("d_now", "", registry=registry)
    assert check.series_names(generate_latest(registry).decode()) == {
        "a_things_total": "counter", "b_things_total": "counter", "c_seconds_bucket": "histogram",
        "c_seconds_sum": "histogram", "c_seconds_count": "histogram", "d_now": "gauge",
    }  # fmt: skip


def test_a_metric_missing_from_the_catalog_fails(check: ModuleType, tmp_path: Path) -> None:
    catalog = tmp_path / "metrics.txt"
    catalog.write_text("# header\nfleet_consumer_lag gauge fulfillment\n")
    assert check.read_catalog(catalog) == {"fleet_consumer_lag": "gauge"}
    named = check.named_metrics()
    assert "fleet_fulfillment_orders_stuck" in named and "fleet_dead_letter_oldest_age_seconds" in named
