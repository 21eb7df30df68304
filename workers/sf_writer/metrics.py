"""The sf-writer's Prometheus metrics: read from the writer at scrape time, exposed on the worker's /metrics.

Owns the names and the exposition. Like the runtime's own metrics (``workers.runtime.metrics``), the
writer bumps plain attributes and this collector turns them into families when scraped; the route's
handler carries it (``SfWriterHandler.collector``) and the worker registers it. Must not decide anything.

    fleet_salesforce_api_usage_used / _limit     Sforce-Limit-Info api-usage as this writer last saw it
    fleet_salesforce_api_low_priority_share      the share of the limit where low priority stops
    fleet_sf_writer_deferrals_total{priority}    commands the budget governor deferred
    fleet_sf_writer_calls_in_flight              Salesforce calls in flight now (≤ the cap)
    fleet_sf_writer_max_concurrent_calls         the cap
    fleet_sf_writer_calls_total                  sObject Collections calls made
    fleet_sf_writer_commands_total               commands handled (every outcome)
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.sf_writer.writer import SalesforceWriter


class SfWriterCollector(Collector):
    def __init__(self, writer: SalesforceWriter) -> None:
        self._writer = writer

    def describe(self) -> list[Metric]:
        return []  # collected on demand only (the values are read at scrape time)

    def collect(self) -> Iterator[Metric]:
        writer, governor = self._writer, self._writer.governor
        usage = governor.usage()
        used = GaugeMetricFamily(
            "fleet_salesforce_api_usage_used", "API requests used in the rolling 24 h (Sforce-Limit-Info, last seen)"
        )
        limit = GaugeMetricFamily(
            "fleet_salesforce_api_usage_limit", "The org's 24 h API request limit (Sforce-Limit-Info, last seen)"
        )
        if usage is not None:  # nothing answered yet: no sample rather than a made-up zero
            used.add_metric([], usage[0])
            limit.add_metric([], usage[1])
        yield used
        yield limit
        yield GaugeMetricFamily(
            "fleet_salesforce_api_low_priority_share",
            "Share of the limit at which low-priority writes are deferred",
            value=governor.low_priority_share,
        )
        deferrals = CounterMetricFamily(
            "fleet_sf_writer_deferrals", "Commands deferred by the API budget governor", labels=["priority"]
        )
        for priority, count in sorted(writer.stats.deferred_by_priority.items()):
            deferrals.add_metric([priority], count)
        yield deferrals
        gate = writer.gate
        yield GaugeMetricFamily("fleet_sf_writer_calls_in_flight", "Salesforce calls in flight", value=gate.in_flight)
        yield GaugeMetricFamily("fleet_sf_writer_max_concurrent_calls", "Cap on calls in flight", value=gate.limit)
        yield CounterMetricFamily("fleet_sf_writer_calls", "sObject Collections calls made", value=writer.stats.calls)
        yield CounterMetricFamily("fleet_sf_writer_commands", "Update commands handled", value=writer.stats.commands)
