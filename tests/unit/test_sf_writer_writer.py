"""The Salesforce writer with ``FakeSalesforce``: coalescing, chunking, per-record outcomes, the budget governor.

Contract: commands of one record become one record of one call (later commands win per field);
calls carry at most 200 records; each command gets its own outcome: success, retryable (lock,
rolled back, transport), permanent (validation), or a budget deferral for low priority above the
share; a refused coalesced record or request is isolated so only the culprit fails; a retried
older command never overwrites a field a newer command already wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from adapters.salesforce import FakeSalesforce
from events.errors import InvalidPayload, RateLimited, RejectedByUpstream, UpstreamUnavailable
from events.fulfillment import UpdateSalesforceRecord
from sandbox import demo_data
from workers.sf_writer import DEFERRED_CODE, BudgetGovernor, Pending, SalesforceWriter


def order_id(n: int) -> str:
    return demo_data.sf_id("801", n)


def cmd(n: int, priority: str = "high", **fields: Any) -> UpdateSalesforceRecord:
    return UpdateSalesforceRecord(
        sobject="Order", record_id=order_id(n), fields=fields or {"Status": "Activated"}, priority=priority
    )


class World:
    def __init__(self, orders: int = 500, usage: Callable[[], tuple[int, int] | None] | None = None) -> None:
        self.sf = FakeSalesforce()
        for n in range(1, orders + 1):
            self.sf.add_record("Order", {"Id": order_id(n), "Status": "Draft"})
        self.usage: tuple[int, int] | None = None
        self.governor = BudgetGovernor(low_priority_share=0.8, usage=usage or (lambda: self.usage), defer_s=6.0)
        self.writer = SalesforceWriter(self.sf, self.governor)
        self.offset = 0

    def pending(self, *commands: UpdateSalesforceRecord) -> list[Pending]:
        out = []
        for command in commands:
            out.append(Pending(command, (0, self.offset)))
            self.offset += 1
        return out

    def record(self, n: int) -> dict[str, Any]:
        return self.sf.records["Order"][order_id(n)]


async def test_three_updates_of_one_record_become_one_record_in_one_call_with_fields_merged() -> None:
    world = World()
    batch = world.pending(
        cmd(1, Status="Activating", Activation_Error_Code__c="X"),
        cmd(1, Status="Activated"),
        cmd(1, WHMCS_Order_ID__c="123"),
    )

    outcomes = await world.writer.write(batch)

    assert outcomes == [None, None, None]
    (call,) = world.sf.collection_calls
    assert len(call) == 1
    assert call[0].fields == {"Status": "Activated", "Activation_Error_Code__c": "X", "WHMCS_Order_ID__c": "123"}
    assert world.writer.stats.coalesced == 2


async def test_later_commands_win_by_partition_order_not_arrival_order() -> None:
    """A command back from a retry tier (older offset) arriving after a newer one loses per field."""
    world = World()
    newer = Pending(cmd(1, Status="Activated"), (0, 10))
    older = Pending(cmd(1, Status="Activating", Description="d"), (0, 3))

    await world.writer.write([newer, older])

    assert world.record(1)["Status"] == "Activated" and world.record(1)["Description"] == "d"


async def test_450_records_take_three_calls_of_at_most_200() -> None:
    world = World()

    outcomes = await world.writer.write(world.pending(*(cmd(n) for n in range(1, 451))))

    assert outcomes == [None] * 450
    assert [len(c) for c in world.sf.collection_calls] == [200, 200, 50]
    assert all(world.record(n)["Status"] == "Activated" for n in range(1, 451))


async def test_a_locked_record_fails_alone_and_retryably() -> None:
    world = World()
    world.sf.fail_record(order_id(2), "UNABLE_TO_LOCK_ROW")

    outcomes = await world.writer.write(world.pending(cmd(1), cmd(2), cmd(3)))

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], UpstreamUnavailable) and outcomes[1].code == "UNABLE_TO_LOCK_ROW"
    assert len(world.sf.collection_calls) == 1


async def test_a_validation_failure_is_permanent_for_that_record_only() -> None:
    world = World()
    world.sf.fail_record(order_id(2), "FIELD_CUSTOM_VALIDATION_EXCEPTION", "bad")

    outcomes = await world.writer.write(world.pending(cmd(1), cmd(2), cmd(3)))

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], RejectedByUpstream) and not outcomes[1].retriable
    assert outcomes[1].code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"


async def test_a_refused_coalesced_record_is_resent_command_by_command_to_find_the_culprit() -> None:
    """Two commands merged into one record: the refusal is isolated to the command that causes it."""
    world = World()
    world.sf.fail_record(order_id(1), "FIELD_CUSTOM_VALIDATION_EXCEPTION", "merged refused")
    world.sf.fail_record(order_id(1), "FIELD_CUSTOM_VALIDATION_EXCEPTION", "first command refused")

    outcomes = await world.writer.write(world.pending(cmd(1, Status="Activating"), cmd(1, Description="ok")))

    assert isinstance(outcomes[0], RejectedByUpstream) and outcomes[1] is None
    assert world.record(1)["Description"] == "ok"
    assert [len(c) for c in world.sf.collection_calls] == [1, 1, 1]


async def test_a_request_refused_because_of_one_record_is_bisected() -> None:
    class RefusesOne(FakeSalesforce):
        async def update_records(self, updates: Any, all_or_none: bool = False) -> Any:
            if any(u.record_id == order_id(5) for u in updates):
                self.collection_calls.append(list(updates))
                raise RejectedByUpstream("No such column", upstream="salesforce", code="INVALID_FIELD")
            return await super().update_records(updates, all_or_none)

    world = World()
    world.sf = RefusesOne()
    for n in range(1, 9):
        world.sf.add_record("Order", {"Id": order_id(n)})
    world.writer = SalesforceWriter(world.sf, world.governor)

    outcomes = await world.writer.write(world.pending(*(cmd(n) for n in range(1, 9))))

    assert [o is None for o in outcomes] == [True] * 4 + [False] + [True] * 3
    assert len(world.sf.collection_calls) <= 2 * 3 + 1, "log2(8) levels of halving, not one call per record"


async def test_a_transient_request_failure_makes_every_command_of_the_call_retryable() -> None:
    world = World()
    world.sf.fail_next_with(UpstreamUnavailable("503", upstream="salesforce"))

    outcomes = await world.writer.write(world.pending(cmd(1), cmd(2)))

    assert all(isinstance(o, UpstreamUnavailable) for o in outcomes)


async def test_a_malformed_id_fails_alone_before_any_call() -> None:
    world = World()

    outcomes = await world.writer.write(
        world.pending(UpdateSalesforceRecord(sobject="Order", record_id="nope", fields={"A": 1}), cmd(1))
    )

    assert isinstance(outcomes[0], InvalidPayload) and outcomes[1] is None
    assert [len(c) for c in world.sf.collection_calls] == [1]


async def test_the_governor_defers_low_priority_above_the_share_and_never_high() -> None:
    world = World()
    world.usage = (12_001, 15_000)  # 80.007 % used; the share is 80 %

    outcomes = await world.writer.write(world.pending(cmd(1, "low"), cmd(2, "high"), cmd(3, "low")))

    assert outcomes[1] is None
    for deferred in (outcomes[0], outcomes[2]):
        assert isinstance(deferred, RateLimited) and deferred.code == DEFERRED_CODE and deferred.retriable
    assert [u.record_id for u in world.sf.collection_calls[0]] == [order_id(2)]
    assert world.writer.stats.deferred == 2


async def test_below_the_share_or_with_unknown_usage_low_priority_is_written() -> None:
    world = World()
    for usage in (None, (11_999, 15_000)):
        world.usage = usage
        assert await world.writer.write(world.pending(cmd(1, "low"))) == [None]


async def test_low_priority_fields_ride_along_a_high_priority_command_of_the_same_record() -> None:
    world = World()
    world.usage = (14_000, 15_000)

    outcomes = await world.writer.write(world.pending(cmd(1, "low", Description="info"), cmd(1, "high")))

    assert outcomes == [None, None]
    assert world.record(1)["Description"] == "info" and world.record(1)["Status"] == "Activated"


async def test_a_retried_older_command_does_not_overwrite_a_newer_value() -> None:
    """Activating (offset 1) hits a lock, Activated (offset 2) is written; the retry of offset 1
    must not set the status back."""
    world = World()
    world.sf.fail_record(order_id(1), "UNABLE_TO_LOCK_ROW")
    first = Pending(cmd(1, Status="Activating", Activation_Error_Code__c=None), (0, 1))
    second = Pending(cmd(1, Status="Activated"), (0, 2))

    assert isinstance((await world.writer.write([first]))[0], UpstreamUnavailable)
    assert await world.writer.write([second]) == [None]
    assert await world.writer.write([first]) == [None]

    assert world.record(1)["Status"] == "Activated"
    assert world.sf.collection_calls[-1][0].fields == {"Activation_Error_Code__c": None}


async def test_a_command_entirely_superseded_costs_no_call() -> None:
    world = World()
    await world.writer.write([Pending(cmd(1, Status="Activated"), (0, 5))])

    assert await world.writer.write([Pending(cmd(1, Status="Activating"), (0, 4))]) == [None]
    assert len(world.sf.collection_calls) == 1 and world.writer.stats.superseded == 1


@pytest.mark.parametrize("share", [0.5, 0.8, 1.0])
def test_the_governor_alone(share: float) -> None:
    usage: list[tuple[int, int] | None] = [None]
    governor = BudgetGovernor(low_priority_share=share, usage=lambda: usage[0])
    assert governor.admits("low") and governor.admits("high")
    usage[0] = (int(15_000 * share), 15_000)
    assert not governor.admits("low") and governor.admits("high")
