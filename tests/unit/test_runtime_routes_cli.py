"""The fleet on one screen: `fleet run --list` shows every route; each binds its flow."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from adapters.freebit import FakeFreebit
from adapters.kafka import FakeProducer
from adapters.leader_lease import FakeLease
from adapters.salesforce import FakeSalesforce
from adapters.whmcs import FakeWhmcs
from devtools.demo.fleet import unavailable_workers
from events.base import DomainEvent
from events.salesforce import OrderChanged
from events.topics import GROUP_SOURCES, ConsumerGroup, retry_topic
from workers.cli import main
from workers.cli.run import group as run_group
from workers.config import Settings
from workers.routes import INGRESS, ROUTES, RouteSpec
from workers.runtime import Handler, Message, Route


def test_every_consumer_group_has_a_route_reading_its_sources() -> None:
    assert {spec.group for spec in ROUTES.values()} == set(ConsumerGroup)
    for spec in ROUTES.values():
        assert spec.topics == GROUP_SOURCES[spec.group]


def test_run_list_prints_groups_topics_and_failure_topics() -> None:
    result = CliRunner().invoke(main, ["run", "--list"])
    assert result.exit_code == 0, result.output
    for spec in ROUTES.values():
        assert f"{spec.name}  [" in result.output
        assert f"group={spec.group}" in result.output
        assert retry_topic(spec.group, 1) in result.output
    assert "delivery: in place x3*, tiers 5s/30s*, keys per partition 1*" in result.output  # the others
    assert "delivery: in place x3*, tiers 5s/30s*, keys per partition 16" in result.output  # fulfillment's own


def _fake_deps() -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(), producer=FakeProducer(), pool=object(), redis=object(),
                           salesforce=FakeSalesforce(), whmcs=FakeWhmcs(), freebit=FakeFreebit(),
                           lease=FakeLease)  # fmt: skip


def _unversioned(event_type: str) -> str:
    return re.sub(r"\.v\d+$", "", event_type)


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_the_table_describes_exactly_what_the_flow_binds(name: str) -> None:
    """``RouteSpec.handlers`` is prose for ``fleet run --list``; the flow's dispatch table is the truth.
    Every described type (a glob, any version) is handled, and every handled type is described."""
    spec = ROUTES[name]
    handled = [event_type.TYPE for event_type in spec.route(_fake_deps()).handlers]  # type: ignore[arg-type]
    described = [_unversioned(pattern) for pattern in spec.handlers]
    assert [p for p in described if not any(fnmatchcase(_unversioned(t), p) for t in handled)] == []
    assert [t for t in handled if not any(fnmatchcase(_unversioned(t), p) for p in described)] == []


def test_the_demo_knows_the_runnable_workers_without_asking_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fleet demo`` lists a worker as not available from the two tables, not from ``fleet run``'s
    commands (``devtools.demo`` must not import the CLI that imports it): they must say the same."""
    assert set(run_group.commands) == set(ROUTES) | set(INGRESS)
    assert unavailable_workers([*ROUTES, *INGRESS]) == {}
    monkeypatch.setitem(
        ROUTES, "t", RouteSpec("t", ConsumerGroup.SF_WRITER, GROUP_SOURCES[ConsumerGroup.SF_WRITER], bind_for_test)
    )
    assert unavailable_workers(["t", "nope"]) == {"nope": "`fleet run nope` does not exist yet"}


async def _handle(event: OrderChanged, msg: Message) -> None:
    return None


def bind_for_test(deps: object) -> dict[type[DomainEvent], Handler]:
    return {OrderChanged: _handle}


def test_a_spec_binds_its_handlers_into_a_runnable_route() -> None:
    spec = RouteSpec(
        "t", ConsumerGroup.CACHE_INVALIDATOR, GROUP_SOURCES[ConsumerGroup.CACHE_INVALIDATOR], bind_for_test
    )
    route = spec.route(deps=None)  # type: ignore[arg-type]
    assert isinstance(route, Route) and route.handled_types == {OrderChanged.TYPE: (OrderChanged, _handle)}
    assert route.consumed_topics()[-2:] == (
        retry_topic(ConsumerGroup.CACHE_INVALIDATOR, 1),
        retry_topic(ConsumerGroup.CACHE_INVALIDATOR, 2),
    )
    assert (route.in_place_attempts, route.retry_delays_ms, route.max_in_flight_per_partition) == (None, None, None)


def test_a_spec_carries_its_delivery_policy_into_the_route() -> None:
    """Attempts, tier delays and keys per partition travel from the spec to the runtime's ``Route``."""
    spec = RouteSpec(
        "t",
        ConsumerGroup.CACHE_INVALIDATOR,
        GROUP_SOURCES[ConsumerGroup.CACHE_INVALIDATOR],
        bind_for_test,
        in_place_attempts=5,
        retry_delays_ms=(1_000,),
        max_in_flight_per_partition=8,
    )
    route = spec.route(deps=None)  # type: ignore[arg-type]
    assert (route.in_place_attempts, route.retry_delays_ms, route.max_in_flight_per_partition) == (5, (1_000,), 8)
    assert route.retry_topics() == (retry_topic(ConsumerGroup.CACHE_INVALIDATOR, 1),)


def test_every_route_keeps_the_runtimes_default_delivery_policy() -> None:
    """No route overrides attempts or tier delays: ``RuntimeSettings`` decides. Only fulfillment, whose
    orders wait on vendors, handles several keys per partition (workers/routes.py says why)."""
    for spec in ROUTES.values():
        keys = 16 if spec.name == "fulfillment" else None
        assert (spec.in_place_attempts, spec.retry_delays_ms, spec.max_in_flight_per_partition) == (None, None, keys)
        assert spec.dead_letter
