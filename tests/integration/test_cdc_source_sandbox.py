"""``CometdSource`` and the re-read hook against the Salesforce sandbox over real HTTP (no Kafka).

The source resumes after a given replay id, reports a rejected replay id with the preset it used
instead, counts long-poll answers as signs of life, and survives a server that forgets its
clients (re-handshake, resubscribe from the last delivery: nothing lost, nothing twice). The
``Translator`` re-reads through ``HttpSalesforce`` (REST get, SOQL parent lookup, modified window).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from adapters.salesforce import HttpSalesforce, RefreshTokenAuth
from adapters.salesforce_stream import FleetAuthenticator
from events.salesforce import OrderActivationRequested, OrderChanged
from sandbox.salesforce import SalesforceSandbox
from workers.ingress.cdc_source import CometdSource, Delivery
from workers.ingress.cdc_translate import Rules, Translator, parse

pytestmark = pytest.mark.integration

ORDER_CH = "/data/OrderChangeEvent"
ITEM_CH = "/data/OrderItemChangeEvent"


@dataclass
class Org:
    sandbox: SalesforceSandbox
    http: httpx.AsyncClient
    tokens: RefreshTokenAuth

    def source(self, channels: list[str] | None = None) -> CometdSource:
        return CometdSource(FleetAuthenticator(self.tokens), channels or [ORDER_CH, ITEM_CH], connection_timeout=5)

    async def seed_order(self) -> dict[str, Any]:
        spec = {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD"]}
        response = await self.http.post(f"{self.sandbox.url}/_sandbox/seed", json={"orders": [spec]})
        return dict(response.json()["orders"][0])

    async def edit(self, order_id: str, **fields: Any) -> None:
        response = await self.http.patch(f"{self.sandbox.url}/_sandbox/records/Order/{order_id}", json=fields)
        response.raise_for_status()


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    sandbox = SalesforceSandbox(cometd_timeout_ms=500)
    runner = await sandbox.start(port=0)
    async with httpx.AsyncClient(timeout=10) as http:
        tokens = RefreshTokenAuth(
            http, sandbox.url, "fleet-connected-app", "sandbox-client-secret", "sandbox-refresh-token"
        )
        try:
            yield Org(sandbox, http, tokens)
        finally:
            await runner.cleanup()


async def receive(source: CometdSource, n: int, timeout: float = 5.0) -> list[Delivery]:
    return [await asyncio.wait_for(source.receive(), timeout) for _ in range(n)]


async def test_subscribing_from_a_replay_id_resumes_right_after_it(org: Org) -> None:
    oid = (await org.seed_order())["id"]  # Order CREATE, OrderItem CREATE (+ roll-up in the create)
    for status in ("Draft", "Pending Review", "Draft"):
        await org.edit(oid, Status=status)
    retained = (await org.http.get(f"{org.sandbox.url}/_sandbox/events", params={"channel": ORDER_CH})).json()
    ids = [m["data"]["event"]["replayId"] for m in retained]
    source = org.source([ORDER_CH])
    try:
        outcomes = await source.open({ORDER_CH: ids[1]})
        assert [(o.channel, o.requested, o.fallback) for o in outcomes] == [(ORDER_CH, ids[1], False)]
        assert [d.replay_id for d in await receive(source, len(ids) - 2)] == ids[2:]
    finally:
        await source.close()


async def test_a_rejected_replay_id_is_reported_and_the_preset_used(org: Org) -> None:
    source = org.source([ORDER_CH])
    try:
        (outcome,) = await source.open({ORDER_CH: 10**9})
        assert outcome.fallback and outcome.requested == 10**9
        assert outcome.error is not None and "replayId {1000000000}" in outcome.error
        oid = (await org.seed_order())["id"]  # "latest": only what happens from now on
        (delivery,) = await receive(source, 1)
        assert delivery.message["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [oid]
    finally:
        await source.close()


async def test_long_poll_answers_count_as_signs_of_life(org: Org) -> None:
    source = org.source([ORDER_CH])
    try:
        await source.open({})
        before = source.last_alive
        await asyncio.sleep(1.2)  # two 500 ms long polls answered with nothing
        assert source.last_alive > before
    finally:
        await source.close()


async def test_a_server_that_forgets_its_clients_is_rejoined_from_the_last_delivery(org: Org) -> None:
    source = org.source([ORDER_CH])
    try:
        await source.open({})
        oid = (await org.seed_order())["id"]
        first = await receive(source, 1)
        dropped = (await org.http.post(f"{org.sandbox.url}/_sandbox/drop-connections", json={})).json()
        assert dropped["dropped"] == 1
        await org.edit(oid, Status="Draft")
        await org.edit(oid, Status="Pending Review")
        after = await receive(source, 2, timeout=10)
        replay_ids = [d.replay_id or 0 for d in first + after]
        assert replay_ids == sorted(set(replay_ids))  # nothing twice, in order
    finally:
        await source.close()


async def test_the_reread_hook_uses_rest_and_soql(org: Org) -> None:
    order = await org.seed_order()
    oid, item = order["id"], order["items"][0]["id"]
    await org.http.post(f"{org.sandbox.url}/_sandbox/orders/{oid}/approve", json={})
    salesforce = HttpSalesforce(org.http, org.tokens)
    translator = Translator(Rules(frozenset({"Approved"}), "fulfillment-fleet"), salesforce)
    header = {
        "entityName": "Order",
        "recordIds": [oid],
        "changeType": "UPDATE",
        "commitTimestamp": 1,
        "changedFields": ["Activation_Status__c"],
    }
    payload = {"ChangeEventHeader": header, "Activation_Status__c": "Activating"}
    change = {"channel": ORDER_CH, "data": {"payload": payload, "event": {"replayId": 1}}}
    result = await translator.translate(parse(change))
    assert [type(e.event) for e in result.emissions] == [OrderActivationRequested]
    item_header = {**header, "entityName": "OrderItem", "recordIds": [item], "changedFields": ["Quantity"]}
    item_payload = {"ChangeEventHeader": item_header, "Quantity": 2}
    item_change = {"channel": ITEM_CH, "data": {"payload": item_payload, "event": {"replayId": 2}}}
    (changed,) = (await translator.translate(parse(item_change))).emissions
    assert isinstance(changed.event, OrderChanged) and changed.event.sf_order_id == oid
    now = datetime.now(UTC)
    request = translator.resync_request("Order", now - timedelta(minutes=5), now, "test", "it")
    resynced = await translator.resync(request)
    assert {(type(e.event), e.event.key()) for e in resynced} >= {(OrderActivationRequested, oid), (OrderChanged, oid)}
