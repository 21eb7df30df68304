"""The fulfillment worker's business metrics, as its /metrics page shows them after real saga work.

Contract: every step attempt is timed under its step and the system it calls; the sweep exports the
orders by state, the parked ones by code and the stuck ones by state; with several instances only the
holder of the sweeper lease exports those counts (the others export no sample), so a sum over
instances is the fleet's count, and another instance takes over when the holder goes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.leader_lease import FakeLease
from adapters.leader_lease.fake import FakeLockServer
from events.salesforce import OrderActivationRequested
from tests.unit.test_fulfillment_saga import World, timer_loop
from workers.config import FulfillmentSettings
from workers.fulfillment.model import OrderState
from workers.fulfillment.timers import SWEEPER_LEASE, TimerLoop


def page(world: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples the worker's /metrics page shows for the route's collector (rendered and parsed back)."""
    registry = CollectorRegistry()
    registry.register(world.handlers[OrderActivationRequested].collector)  # type: ignore[attr-defined]
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_each_step_attempt_is_timed_by_step_and_vendor() -> None:
    world = World()
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED

    shown = page(world)
    count = "fleet_fulfillment_step_duration_seconds_count"
    assert sample(shown, count, step="validate", vendor="salesforce") == 1
    assert sample(shown, count, step="whmcs_create", vendor="whmcs") == 1
    assert sample(shown, count, step="resolve_client", vendor="postgres") == 1
    assert sample(shown, count, step="sf_writeback", vendor="kafka") == 1
    bucket = sample(
        shown, "fleet_fulfillment_step_duration_seconds_bucket", step="whmcs_create", vendor="whmcs", le="+Inf"
    )
    assert bucket == 1


async def test_the_sweep_shows_orders_by_state_parked_by_code_and_stuck_by_state() -> None:
    world = World()
    fulfilled = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    parked = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])  # no pay method
    await world.request(fulfilled)
    await world.request(parked)
    assert await world.state(parked) == OrderState.PARKED

    # parked longer than the 3 days allowed (the in-memory store dates a pay-method wait by the real clock)
    world.clock.now = datetime.now(UTC) + timedelta(days=4)
    await timer_loop(world).sweep()
    shown = page(world)
    assert sample(shown, "fleet_fulfillment_orders", state="fulfilled") == 1
    assert sample(shown, "fleet_fulfillment_orders", state="parked") == 1
    assert sample(shown, "fleet_fulfillment_orders", state="running") == 0  # every state has a sample
    assert sample(shown, "fleet_fulfillment_orders_parked", code="PAYMENT_METHOD_MISSING") == 1
    assert sample(shown, "fleet_fulfillment_orders_stuck", state="parked") == 1
    assert sample(shown, "fleet_fulfillment_orders_stuck", state="running") == 0


async def test_only_the_sweeper_lease_holder_exports_the_order_counts_and_another_takes_over() -> None:
    world = World()
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    server = FakeLockServer()
    leases = [FakeLease(SWEEPER_LEASE, server), FakeLease(SWEEPER_LEASE, server)]
    # a sweep sends nothing: no scheduler is needed
    loops = [TimerLoop(world.store, None, FulfillmentSettings(), world.clock, lease) for lease in leases]  # type: ignore[arg-type]

    for loop in loops:
        await loop.sweep()
    exported = [_orders(loop) for loop in loops]
    assert exported == [{"fulfilled": 1.0}, {}], "one instance counts, the other shows no sample"

    leases[0].sever(notice=True)  # the holder's session ends (the process died)
    for loop in reversed(loops):
        await loop.sweep()
    assert [_orders(loop) for loop in loops] == [{}, {"fulfilled": 1.0}]


def _orders(loop: TimerLoop) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(loop.gauges)  # type: ignore[arg-type]
    return {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        if family.name == "fleet_fulfillment_orders"
        for s in family.samples
        if s.value
    }
