"""The fulfillment flow's business metrics, served on the fulfillment worker's /metrics.

Owns the names and label sets; the saga observes step latency, the timer loop's sweep sets the order
gauges. Every family is unregistered here: the route's handler carries them as its ``collector``
and the worker running the route serves it (``workers.runtime.worker``). Must not decide anything.

    fleet_fulfillment_step_duration_seconds{step,vendor}   one saga step's attempt, by what it calls
    fleet_fulfillment_orders{state}                        orders by saga state (sweep leader only)
    fleet_fulfillment_orders_parked{code}                  parked orders by the code they wait on (ditto)
    fleet_fulfillment_orders_stuck{state}                  orders longer in a state than allowed (ditto)
    fleet_fulfillment_ledger_checks_total{verdict}         (``saga.Saga.ledger_checks``)

The three order gauges count rows of a shared table, so only one instance of the group may export
them (``timers.TimerLoop`` holds a Postgres lease for it); the others export no sample, and a
``sum`` over instances is the fleet's count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from workers.fulfillment.model import OrderState, Step

#: what a step talks to (the ``vendor`` label): a Salesforce read, a WHMCS or Freebit call,
#: Postgres (the id mappings), Kafka (the write-back commands), or nothing but the saga's own state
STEP_VENDOR: Mapping[Step, str] = {
    Step.VALIDATE: "salesforce",
    Step.SCHEDULE: "none",
    Step.RESOLVE_CLIENT: "postgres",
    Step.PAYMENT_GATE: "whmcs",
    Step.SIM_PROCESSED: "salesforce",
    Step.SIM_ASSIGN: "salesforce",
    Step.SIM_REGISTER: "freebit",
    Step.SIM_CONFIRM: "freebit",
    Step.SIM_VOICE: "freebit",
    Step.WHMCS_CREATE: "whmcs",
    Step.WHMCS_ACCEPT: "whmcs",
    Step.WHMCS_LINKS: "whmcs",
    Step.WHMCS_SIM_FIELDS: "whmcs",
    Step.SF_WRITEBACK: "kafka",
}

#: step latency buckets (seconds): a Postgres read takes a millisecond, a Freebit call seconds
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def step_duration() -> Histogram:
    return Histogram(
        "fleet_fulfillment_step_duration_seconds",
        "One attempt of a saga step, by step and the system it calls (any outcome)",
        ["step", "vendor"],
        buckets=STEP_BUCKETS,
        registry=None,
    )


class OrderGauges:
    """Orders by state, parked orders by code, stuck orders by state: set by the sweep leader."""

    def __init__(self) -> None:
        self.orders = Gauge(
            "fleet_fulfillment_orders", "Orders by saga state, at the last sweep", ["state"], registry=None
        )
        self.parked = Gauge(
            "fleet_fulfillment_orders_parked",
            "Parked orders by the code they wait on, at the last sweep",
            ["code"],
            registry=None,
        )
        self.stuck = Gauge(
            "fleet_fulfillment_orders_stuck",
            "Orders longer in a state than FLEET_FULFILLMENT__STUCK_AFTER_S allows, at the last sweep",
            ["state"],
            registry=None,
        )

    def set(self, counts: Mapping[tuple[str, str | None], int], stuck: Mapping[str, int]) -> None:
        """Every state gets a sample (0 when none), so a state emptying shows as 0, not as a gap."""
        by_state = dict.fromkeys((s.value for s in OrderState), 0)
        parked: dict[str, int] = {}
        for (state, code), n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
            if state == OrderState.PARKED:
                parked[code or "none"] = parked.get(code or "none", 0) + n
        self.parked.clear()  # a code nobody waits on any more leaves, rather than staying at its last count
        for gauge, values in ((self.orders, by_state), (self.parked, parked), (self.stuck, stuck)):
            for label, n in values.items():
                gauge.labels(label).set(n)

    def clear(self) -> None:
        """Not the sweep leader: export no sample (another instance counts)."""
        for gauge in (self.orders, self.parked, self.stuck):
            gauge.clear()

    def collect(self) -> Iterable[Metric]:
        for gauge in (self.orders, self.parked, self.stuck):
            yield from gauge.collect()


class Collectors(Collector):
    """Several unregistered collectors served as one (a handler carries one ``collector``)."""

    def __init__(self, *collectors: Collector | OrderGauges) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            yield from collector.collect()
