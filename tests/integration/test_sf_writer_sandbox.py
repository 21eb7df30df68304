"""The sf-writer against the Salesforce sandbox over real HTTP (in-process, ephemeral port).

Contract: N update commands cost far fewer ``PATCH /composite/sobjects`` calls than N (counted in the
sandbox's request log), every call carries the fleet's ``Sforce-Call-Options`` client; an injected
per-record fault fails only that record (a lock: retryable, and the retry passes; a validation
rule: permanent); a request the sandbox refuses because of one record's field is bisected so only
that command fails; with ``Sforce-Limit-Info`` above the low-priority share, low-priority commands
are deferred without reaching Salesforce while high-priority ones are written.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from adapters.salesforce import HttpSalesforce, PasswordAuth
from events.envelope import H_ID
from events.errors import RejectedByUpstream, UpstreamUnavailable
from events.fulfillment import UpdateSalesforceRecord
from sandbox.salesforce import SalesforceSandbox
from workers.config import Settings
from workers.runtime.batch import BatchHandler, Defer, Outcome
from workers.runtime.message import Message
from workers.sf_writer.route import bind_sf_writer

pytestmark = pytest.mark.integration

CLIENT = "fulfillment-fleet"


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    world = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await world.start()
    yield world
    await runner.cleanup()


class World:
    def __init__(self, sandbox: SalesforceSandbox, http: httpx.AsyncClient) -> None:
        self.sandbox = sandbox
        self.http = http
        auth = PasswordAuth(http, sandbox.url, "fleet-connected-app", "sandbox-client-secret",
                            "integration@fleet.example", "sandbox-password")  # fmt: skip
        self.salesforce = HttpSalesforce(http, auth, "60.0", CLIENT)
        handler = bind_sf_writer(salesforce=self.salesforce, settings=Settings())[UpdateSalesforceRecord]
        assert isinstance(handler, BatchHandler)
        self.handler = handler
        self.offsets: dict[int, int] = {}

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.sandbox.url + path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    async def seed_orders(self, count: int) -> list[str]:
        created = await self.control("POST", "/_sandbox/seed", json={"orders": [{"customer": "tanaka"}] * count})
        return [o["id"] for o in created["orders"]]

    async def read(self, record_id: str) -> dict[str, Any]:
        return dict(await self.control("GET", f"/_sandbox/records/Order/{record_id}"))

    async def composite_calls(self) -> list[dict[str, Any]]:
        return list(await self.control("GET", "/_sandbox/requests", params={"endpoint": "composite.update"}))

    def message(self, cmd: UpdateSalesforceRecord, partition: int = 0) -> Message:
        offset = self.offsets.get(partition, 0)
        self.offsets[partition] = offset + 1
        event_id = str(uuid.uuid4()).encode()
        return Message(cmd, "fleet.sf-writer", "sf.writeback.v1", partition, offset, 0, cmd.record_id.encode(), None,
                       [(H_ID, event_id)], {H_ID: event_id}, cmd.TYPE)  # fmt: skip

    async def handle(self, msgs: Sequence[Message]) -> list[Outcome]:
        return await self.handler.handle_batch(msgs)


@pytest.fixture
async def world(sandbox: SalesforceSandbox) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
        w = World(sandbox, http)
        await w.control("DELETE", "/_sandbox/requests")
        yield w
        await w.control("DELETE", "/_sandbox/record-faults")
        await w.control("POST", "/_sandbox/api-usage", json={"used": 0, "limit": sandbox.api_daily_limit})


def update(order_id: str, priority: str = "high", **fields: Any) -> UpdateSalesforceRecord:
    return UpdateSalesforceRecord(sobject="Order", record_id=order_id, fields=fields, priority=priority)


async def test_many_commands_on_four_partitions_take_far_fewer_composite_calls(world: World) -> None:
    orders = await world.seed_orders(240)
    per_partition: dict[int, list[Message]] = {p: [] for p in range(4)}
    for i, order_id in enumerate(orders):  # three commands per order, as the saga emits them
        msgs = per_partition[i % 4]
        msgs.append(world.message(update(order_id, Activation_Status__c="Activating"), i % 4))
        msgs.append(
            world.message(update(order_id, Activation_Status__c="Activated", Activation_Error_Code__c=None), i % 4)
        )
        msgs.append(world.message(update(order_id, WHMCS_Order_ID__c=str(9000 + i)), i % 4))

    async def partition_task(msgs: list[Message]) -> list[Outcome]:  # as the runtime does: 200 at a time
        out: list[Outcome] = []
        for start in range(0, len(msgs), 200):
            out.extend(await world.handle(msgs[start : start + 200]))
        return out

    results = await asyncio.gather(*(partition_task(m) for m in per_partition.values()))

    assert all(o is None for r in results for o in r)
    calls = await world.composite_calls()
    assert len(calls) <= 6, f"{len(calls)} composite calls for 720 commands on 240 records"
    assert all(c["headers"].get("Sforce-Call-Options") == f"client={CLIENT}" for c in calls)
    sample = await world.read(orders[17])
    assert sample["Activation_Status__c"] == "Activated" and sample["WHMCS_Order_ID__c"] == "9017"


async def test_a_locked_record_alone_is_retryable_and_its_retry_passes(world: World) -> None:
    orders = await world.seed_orders(5)
    await world.control(
        "POST", "/_sandbox/record-faults", json={"record_id": orders[2], "statusCode": "UNABLE_TO_LOCK_ROW"}
    )
    msgs = [world.message(update(o, Activation_Status__c="Activated")) for o in orders]

    outcomes = await world.handle(msgs)

    assert [o is None for o in outcomes] == [True, True, False, True, True]
    assert isinstance(outcomes[2], UpstreamUnavailable) and outcomes[2].code == "UNABLE_TO_LOCK_ROW"
    assert await world.handle([msgs[2]]) == [None]  # what the runtime's in-place retry does
    assert (await world.read(orders[2]))["Activation_Status__c"] == "Activated"
    assert len(await world.composite_calls()) == 2


async def test_a_validation_failure_is_permanent_for_that_record_only(world: World) -> None:
    orders = await world.seed_orders(3)
    fault = {"record_id": orders[1], "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION"}
    await world.control("POST", "/_sandbox/record-faults", json=fault)

    outcomes = await world.handle([world.message(update(o, Activation_Status__c="Activated")) for o in orders])

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], RejectedByUpstream) and not outcomes[1].retriable
    assert (await world.read(orders[1])).get("Activation_Status__c") != "Activated"


async def test_a_request_refused_for_one_records_field_is_bisected_to_that_command(world: World) -> None:
    orders = await world.seed_orders(8)
    msgs = [world.message(update(o, Activation_Status__c="Activated")) for o in orders]
    msgs[5] = world.message(update(orders[5], No_Such_Field__c="x"))

    outcomes = await world.handle(msgs)

    assert [o is None for o in outcomes] == [True] * 5 + [False] + [True] * 2
    assert isinstance(outcomes[5], RejectedByUpstream) and outcomes[5].code == "INVALID_FIELD"
    assert len(await world.composite_calls()) <= 7  # 1 + two per halving level (log2 8 = 3)


async def test_near_the_budget_low_priority_is_deferred_and_high_priority_written(
    world: World, sandbox: SalesforceSandbox
) -> None:
    orders = await world.seed_orders(3)
    await world.control("POST", "/_sandbox/api-usage", json={"used": 12_500, "limit": 15_000})  # 83 % > 80 %
    assert await world.handle([world.message(update(orders[0], Activation_Status__c="Activated"))]) == [None]
    assert world.salesforce.api_usage() == (12_501, 15_000)

    low = world.message(update(orders[1], "low", Description="nice to have"))
    high = world.message(update(orders[2], "high", Activation_Status__c="Activated"))
    outcomes = await world.handle([low, high])

    assert isinstance(outcomes[0], Defer) and outcomes[0].error.code == "API_BUDGET_RESERVED"
    assert outcomes[1] is None
    bodies = [c["body"] for c in await world.composite_calls()]
    assert not any(orders[1] in body for body in bodies), "a deferred command never reaches Salesforce"
    assert (await world.read(orders[1])).get("Description") != "nice to have"
    assert (await world.read(orders[2]))["Activation_Status__c"] == "Activated"
