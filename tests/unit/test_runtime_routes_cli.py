"""The fleet on one screen: `fleet run --list` shows every route; every route and ingress entry resolves."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from events.salesforce import OrderChanged
from events.topics import GROUP_SOURCES, ConsumerGroup, retry_topic
from workers.cli import main
from workers.cli.run import group as run_group
from workers.demo.fleet import unavailable_workers
from workers.routes import INGRESS, ROUTES, RouteSpec, import_binder, import_entry
from workers.runtime import Message, Route


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


def test_a_route_without_handlers_cannot_be_built() -> None:
    spec = RouteSpec("t", ConsumerGroup.SF_WRITER, GROUP_SOURCES[ConsumerGroup.SF_WRITER])
    with pytest.raises(LookupError, match="no handlers yet"):
        spec.route(deps=None)


def test_every_route_and_ingress_entry_point_imports() -> None:
    """A typo in a ``module:function`` path fails here, not on the first deployment."""
    for spec in ROUTES.values():
        assert spec.bind is not None and callable(import_binder(spec.bind))
    for ingress in INGRESS.values():
        assert callable(import_entry(ingress.entry))


def test_the_demo_knows_the_runnable_workers_without_asking_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fleet demo`` lists a worker as not available from the two tables, not from ``fleet run``'s
    commands (``workers.demo`` must not import the CLI that imports it): they must say the same."""
    assert set(run_group.commands) == set(ROUTES) | set(INGRESS)
    assert unavailable_workers([*ROUTES, *INGRESS]) == {}
    monkeypatch.setitem(ROUTES, "t", RouteSpec("t", ConsumerGroup.SF_WRITER, GROUP_SOURCES[ConsumerGroup.SF_WRITER]))
    assert unavailable_workers(["t", "nope"]) == {
        "t": "its route has no handlers yet (workers/routes.py)",
        "nope": "`fleet run nope` does not exist yet",
    }


async def _handle(event: OrderChanged, msg: Message) -> None:
    return None


def bind_for_test(deps: object) -> dict[type, object]:
    return {OrderChanged: _handle}


def test_a_spec_binds_its_handlers_into_a_runnable_route() -> None:
    spec = RouteSpec(
        "t",
        ConsumerGroup.CACHE_INVALIDATOR,
        GROUP_SOURCES[ConsumerGroup.CACHE_INVALIDATOR],
        bind=f"{__name__}:bind_for_test",
    )
    route = spec.route(deps=None)
    assert isinstance(route, Route) and route.handled_types == {OrderChanged.TYPE: (OrderChanged, _handle)}
    assert route.consumed_topics()[-2:] == (
        retry_topic(ConsumerGroup.CACHE_INVALIDATOR, 1),
        retry_topic(ConsumerGroup.CACHE_INVALIDATOR, 2),
    )
