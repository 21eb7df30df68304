"""``PubSubSource`` against the Salesforce sandbox's Pub/Sub API over real gRPC (no Kafka).

The source hands the subscriber what CometD hands it: for every retained change, the decoded
Pub/Sub delivery parses to the same change (identity, header, values) as the CometD message of
the same event. It resumes strictly after a stored bytes replay id, reports a rejected one as a
late fallback and goes on from the preset, never holds more than ``num_requested`` unconsumed
events per stream, refreshes an expired token and resumes where it was (nothing lost, nothing
twice), follows a schema change mid-stream, and maps the API's error codes (transient →
``SourceError``, allocation exhausted → ``SourceRefused``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from adapters.salesforce import RefreshTokenAuth
from sandbox.salesforce import SalesforceSandbox
from workers.ingress.cdc_source import Delivery, SourceError, SourceRefused, Subscribed
from workers.ingress.cdc_translate import parse
from workers.ingress.pubsub_source import PubSubSource

pytestmark = pytest.mark.integration

ORDER_CH = "/data/OrderChangeEvent"
ITEM_CH = "/data/OrderItemChangeEvent"


@dataclass
class Org:
    sandbox: SalesforceSandbox
    http: httpx.AsyncClient
    tokens: RefreshTokenAuth

    def source(self, channels: list[str] | None = None, **options: Any) -> PubSubSource:
        assert self.sandbox.pubsub_url is not None
        return PubSubSource(self.tokens, channels or [ORDER_CH], endpoint=self.sandbox.pubsub_url, **options)

    async def seed_order(self) -> str:
        spec = {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD"]}
        response = await self.http.post(f"{self.sandbox.url}/_sandbox/seed", json={"orders": [spec]})
        response.raise_for_status()
        return str(response.json()["orders"][0]["id"])

    async def edit(self, order_id: str, **fields: Any) -> None:
        response = await self.http.patch(f"{self.sandbox.url}/_sandbox/records/Order/{order_id}", json=fields)
        response.raise_for_status()

    async def streams_open(self, count: int = 1) -> None:
        """LATEST starts where the server registers the stream: wait for that before writing."""
        for _ in range(100):
            if len((await self.control("GET", "pubsub"))["streams"]) == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} Pub/Sub streams never opened")

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.request(method, f"{self.sandbox.url}/_sandbox/{path}", json=body)
        response.raise_for_status()
        return response.json()


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    sandbox = SalesforceSandbox(pubsub_port=0, pubsub_keepalive_s=0.3, pubsub_idle_close_s=5.0)
    runner = await sandbox.start(port=0)
    async with httpx.AsyncClient(timeout=10) as http:
        tokens = RefreshTokenAuth(
            http, sandbox.url, "fleet-connected-app", "sandbox-client-secret", "sandbox-refresh-token"
        )
        try:
            yield Org(sandbox, http, tokens)
        finally:
            await runner.cleanup()


async def receive(source: PubSubSource, n: int, timeout: float = 5.0) -> list[Delivery]:
    got = []
    for _ in range(n):
        item = await asyncio.wait_for(source.receive(), timeout)
        assert isinstance(item, Delivery), item
        got.append(item)
    return got


async def test_every_change_reads_as_its_cometd_twin(org: Org) -> None:
    oid = await org.seed_order()
    await org.edit(oid, Status="Draft", BillingCity="Osaka", Description="first")
    await org.edit(oid, Description=None)  # cleared: only nulledFields can say so
    retained = await org.control("GET", f"events?channel={ORDER_CH}")
    source = org.source([ORDER_CH, ITEM_CH], fallback="earliest")
    try:
        await source.open({})
        deliveries = [d for d in await receive(source, len(retained) + 1) if d.channel == ORDER_CH]
    finally:
        await source.close()
    assert len(deliveries) == len(retained)
    for cometd, pubsub in zip(retained, deliveries, strict=True):
        a, b = parse(cometd), parse(pubsub.message)
        assert isinstance(b.replay_id, bytes) and b.replay_id == pubsub.replay_id
        assert (b.event_uuid, b.basis, b.entity, b.change_type) == (a.event_uuid, a.basis, a.entity, a.change_type)
        assert b.header is not None and a.header is not None
        assert b.header.record_ids == a.header.record_ids
        assert b.changed_fields() == a.changed_fields()
        assert dict(b.values) == dict(a.values), a.change_type
        assert b.occurred_at == a.occurred_at
    cleared = parse(deliveries[-1].message)
    assert cleared.knows("Description") and cleared.values["Description"] is None


async def test_a_stored_replay_id_resumes_strictly_after_it(org: Org) -> None:
    oid = await org.seed_order()
    for status in ("Draft", "Pending Review", "Draft"):
        await org.edit(oid, Status=status)
    first = org.source(fallback="earliest")
    try:
        await first.open({})
        ids = [d.replay_id for d in await receive(first, 4)]
    finally:
        await first.close()
    resumed = org.source()
    try:
        (outcome,) = await resumed.open({ORDER_CH: ids[1]})
        assert (outcome.requested, outcome.fallback) == (ids[1], False)
        assert [d.replay_id for d in await receive(resumed, 2)] == ids[2:]
    finally:
        await resumed.close()


async def test_a_rejected_replay_id_is_reported_late_and_the_preset_used(org: Org) -> None:
    source = org.source()
    try:
        (outcome,) = await source.open({ORDER_CH: b"\x00\x00\x00\x00\x3b\x9a\xca\x00"})  # never issued
        assert not outcome.fallback  # gRPC answers on the stream, after open
        late = await asyncio.wait_for(source.receive(), 5)
        assert isinstance(late, Subscribed) and late.fallback and late.channel == ORDER_CH
        assert late.requested == b"\x00\x00\x00\x00\x3b\x9a\xca\x00"
        assert late.error is not None and "replayid.corrupted" in late.error
        await org.streams_open()
        oid = await org.seed_order()  # "latest": what happens from now on
        (delivery,) = await receive(source, 1)
        assert parse(delivery.message).header.record_ids == [oid]  # type: ignore[union-attr]
    finally:
        await source.close()


async def test_flow_control_holds_at_most_num_requested_unconsumed(org: Org) -> None:
    source = org.source(num_requested=4)
    try:
        await source.open({})
        await org.streams_open()
        oid = await org.seed_order()
        for i in range(20):
            await org.edit(oid, Description=f"edit {i}")
        for _ in range(200):  # nothing consumed yet: the server may send only the first 4
            (stream,) = (await org.control("GET", "pubsub"))["streams"]
            if stream["delivered"] >= 4:
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.2)  # and nothing more follows while nobody takes them
        (stream,) = (await org.control("GET", "pubsub"))["streams"]
        assert stream["delivered"] == 4 and stream["pending_num_requested"] == 0
        deliveries = await receive(source, 21)  # taking them asks for more, two at a time
        ids = [d.replay_id for d in deliveries]
        assert len(set(ids)) == 21
        (stream,) = (await org.control("GET", "pubsub"))["streams"]
        assert stream["delivered"] == 21 and stream["pending_num_requested"] <= 4
    finally:
        await source.close()


async def test_an_expired_token_is_refreshed_and_the_stream_resumes_where_it_was(org: Org) -> None:
    source = org.source()
    try:
        await source.open({})
        await org.streams_open()
        oid = await org.seed_order()
        before = await receive(source, 1)
        grants = org.tokens.grants
        ended = await org.control("POST", "expire-tokens", {})
        assert ended["pubsub_streams_ended"] == 1
        await org.edit(oid, Status="Draft")
        await org.edit(oid, Status="Pending Review")
        after = await receive(source, 2, timeout=10)
        assert org.tokens.grants == grants + 1
        ids = [d.replay_id for d in before + after]
        assert len(set(ids)) == 3  # nothing twice, nothing lost
    finally:
        await source.close()


async def test_a_stream_reopened_with_events_still_queued_asks_only_for_the_room_left(org: Org) -> None:
    source = org.source(num_requested=4)
    try:
        await source.open({})
        await org.streams_open()
        oid = await org.seed_order()
        await org.edit(oid, Description="queued")
        for _ in range(200):  # two events arrived, none taken
            (stream,) = (await org.control("GET", "pubsub"))["streams"]
            if stream["delivered"] >= 2:
                break
            await asyncio.sleep(0.025)
        await org.control("POST", "expire-tokens", {})
        for _ in range(200):  # the source refreshes its token and opens a new call
            streams = (await org.control("GET", "pubsub"))["streams"]
            if streams and streams[0]["delivered"] == 0:
                break
            await asyncio.sleep(0.025)
        (reopened,) = streams
        assert reopened["pending_num_requested"] == 2  # 4 minus the two still queued
        for i in range(6):
            await org.edit(oid, Description=f"after {i}")
        ids = [d.replay_id for d in await receive(source, 8)]
        assert len(set(ids)) == 8  # the queued two, then the six: nothing lost, nothing twice
    finally:
        await source.close()


async def test_a_new_schema_mid_stream_is_fetched_and_decoded(org: Org) -> None:
    source = org.source()
    try:
        await source.open({})
        await org.streams_open()
        oid = await org.seed_order()
        (old,) = await receive(source, 1)
        evolved = await org.control(
            "POST", "pubsub/schemas", {"topic": ORDER_CH, "field": "Port_Speed__c", "type": "string"}
        )
        await org.edit(oid, Status="Draft")
        (new,) = await receive(source, 1)
        assert old.message["data"]["schema"] == evolved["previous_schema_id"]
        assert new.message["data"]["schema"] == evolved["schema_id"]
        assert parse(new.message).values["Status"] == "Draft"
    finally:
        await source.close()


async def test_keepalives_count_as_life_and_a_half_open_stream_does_not(org: Org) -> None:
    source = org.source()
    try:
        await source.open({})
        before = source.last_alive
        for _ in range(100):  # empty FetchResponses every 300 ms
            if source.last_alive > before:
                break
            await asyncio.sleep(0.05)
        assert source.last_alive > before
        await org.control("POST", "pubsub/faults", {"kind": "half_open"})
        await asyncio.sleep(0.4)
        silent_since = source.last_alive
        await asyncio.sleep(0.8)
        assert source.last_alive == silent_since  # the subscriber's watchdog takes it from here
    finally:
        await source.close()


async def test_a_transient_error_ends_the_session_and_an_exhausted_allocation_is_refused(org: Org) -> None:
    source = org.source()
    try:
        await source.open({})
        await org.streams_open()
        await org.control("POST", "pubsub/faults", {"kind": "reset"})
        with pytest.raises(SourceError, match="service.unavailable") as transient:
            await asyncio.wait_for(source.receive(), 5)
        assert not isinstance(transient.value, SourceRefused)
    finally:
        await source.close()
    await org.control("POST", "pubsub/faults", {"kind": "allocation_exhausted"})
    try:
        await source.open({})
        with pytest.raises(SourceRefused) as refused:
            await asyncio.wait_for(source.receive(), 5)
        assert refused.value.code == "subscription.limit.exceeded" and refused.value.retry_after_s >= 3600
    finally:
        await source.close()


async def test_ready_hands_out_what_arrived_in_order_and_leaves_an_error_for_receive(org: Org) -> None:
    source = org.source(num_requested=4)
    try:
        await source.open({})
        await org.streams_open()
        oid = await org.seed_order()
        for i in range(10):
            await org.edit(oid, Description=f"edit {i}")
        got: list[Delivery] = []
        while len(got) < 11:  # the order's creation, then its 10 edits
            got += await receive(source, 1)  # waits for one event
            for item in source.ready(100):  # then takes what its response brought, without waiting
                assert isinstance(item, Delivery), item
                got.append(item)
        assert len({d.replay_id for d in got}) == 11  # nothing twice; and the window kept refilling
        edits = [parse(d.message).values.get("Description") for d in got[1:]]
        assert edits == [f"edit {i}" for i in range(10)]  # the platform's order
        (stream,) = (await org.control("GET", "pubsub"))["streams"]
        assert stream["delivered"] == 11 and stream["pending_num_requested"] <= 4

        await org.control("POST", "pubsub/faults", {"kind": "reset"})
        with pytest.raises(SourceError, match="service.unavailable"):
            for _ in range(100):  # ready() never swallows the stream's end: receive() raises it
                assert source.ready(100) == []
                await asyncio.wait_for(source.receive(), 5)
    finally:
        await source.close()
