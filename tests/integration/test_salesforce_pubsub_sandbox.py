"""The Salesforce sandbox's Pub/Sub API (gRPC) driven by a raw ``grpc.aio`` client from the generated stub.

Contract pinned here, per the Pub/Sub API docs: every call needs ``accesstoken``/``instanceurl``/``tenantid``;
GetTopic/GetSchema describe the topics the CometD endpoint serves; Subscribe replays EARLIEST, LATEST
and CUSTOM (strictly after the id), never sends more than requested (requests add up to at most 100),
keeps alive with empty responses and closes a stream that asks for nothing; errors end the stream
with Salesforce's code in the ``error-code`` trailer; payloads are Avro records whose bitmaps decode,
with this file's own decoder written from the docs, to the changed field names; a schema can evolve
mid-stream without old events losing theirs. The fleet's own client code is deliberately not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fastavro
import grpc
import httpx
import pytest
from grpc import aio

from sandbox.runner import run_sandboxes
from sandbox.salesforce import SalesforceSandbox
from schemas.salesforce_pubsub import pubsub_api_pb2 as pb
from schemas.salesforce_pubsub import pubsub_api_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

ORG_ID = "00D5g00000FLEETEAA"
ORDERS = "/data/OrderChangeEvent"
PLATFORM = "/event/Account_Eligibility_Update__e"
PREFIX = "sfdc.platform.eventbus.grpc."
TOKEN_FORM = {"grant_type": "password", "client_id": "fleet-connected-app", "client_secret": "sandbox-client-secret",
              "username": "integration@fleet.example", "password": "sandbox-password"}  # fmt: skip


def new_stub(channel: aio.Channel) -> Any:
    stub: Any = pb_grpc.PubSubStub  # generated, unannotated
    return stub(channel)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    # long timers by default; the keepalive and idle tests shorten them
    world = SalesforceSandbox(cometd_timeout_ms=500, pubsub_port=0, pubsub_keepalive_s=30, pubsub_idle_close_s=30)
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture
async def http(sandbox: SalesforceSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5) as client:
        yield client
        await client.delete("/_sandbox/pubsub/faults")


@pytest.fixture
async def token(http: httpx.AsyncClient) -> str:
    return str((await http.post("/services/oauth2/token", data=TOKEN_FORM)).json()["access_token"])


@pytest.fixture
def metadata(sandbox: SalesforceSandbox, token: str) -> tuple[tuple[str, str], ...]:
    return ("accesstoken", token), ("instanceurl", sandbox.url), ("tenantid", ORG_ID)


@pytest.fixture
async def stub(sandbox: SalesforceSandbox) -> AsyncIterator[Any]:
    assert sandbox.pubsub_url is not None
    async with aio.insecure_channel(sandbox.pubsub_url) as channel:
        yield new_stub(channel)


@pytest.fixture
def short_timers(sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sandbox.pubsub, "keepalive_s", 0.2)
    monkeypatch.setattr(sandbox.pubsub, "idle_close_s", 0.3)
    yield


# --- a raw client: a Subscribe call fed from a queue, read by a background task -------------------
class Subscription:
    def __init__(self, stub: Any, metadata: Any, first: Any) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.requests.put_nowait(first)
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.call = stub.Subscribe(self._requests(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.put_nowait(response)
            self.responses.put_nowait(None)  # the server ended the stream with OK
        except aio.AioRpcError as error:
            self.responses.put_nowait(error)

    def request(self, num_requested: int, **fields: Any) -> None:
        self.requests.put_nowait(pb.FetchRequest(num_requested=num_requested, **fields))

    async def next(self, timeout: float = 5.0) -> Any:
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        assert item is not None, "the stream ended"
        return item

    async def events(self, count: int, timeout: float = 5.0) -> list[Any]:
        """The next ``count`` events, keepalives skipped; never more than asked for in one go."""
        events: list[Any] = []
        while len(events) < count:
            events += (await self.next(timeout)).events
        assert len(events) == count
        return events

    async def error(self, timeout: float = 5.0) -> aio.AioRpcError:
        while True:
            item = await asyncio.wait_for(self.responses.get(), timeout)
            if isinstance(item, aio.AioRpcError):
                return item
            assert item is not None, "the stream ended without an error"

    async def silent(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.responses.empty(), f"unexpected: {self.responses.get_nowait()}"

    async def close(self) -> None:
        self.requests.put_nowait(None)  # the request generator returns (no pending task left behind)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def subscribe(stub: Any, metadata: Any) -> AsyncIterator[Any]:
    opened: list[Subscription] = []

    def open_(topic: str = ORDERS, num_requested: int = 10, preset: Any = pb.LATEST, replay_id: bytes = b"",
              md: Any = None) -> Subscription:  # fmt: skip
        first = pb.FetchRequest(
            topic_name=topic, replay_preset=preset, replay_id=replay_id, num_requested=num_requested
        )
        opened.append(Subscription(stub, md or metadata, first))
        return opened[-1]

    yield open_
    for subscription in opened:
        await subscription.close()


def replay_bytes(replay_id: int) -> bytes:
    return replay_id.to_bytes(8, "big")


def replay_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def error_code(error: aio.AioRpcError) -> str | None:
    trailers: Any = error.trailing_metadata() or ()
    return dict(trailers).get("error-code")


# --- the org, through its control API -------------------------------------------------------------
async def streams_registered(http: httpx.AsyncClient, count: int) -> None:
    """Wait until the server has registered ``count`` streams (an observable, not a fixed sleep)."""
    for _ in range(200):
        if len((await http.get("/_sandbox/pubsub")).json()["streams"]) >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{count} streams never registered")


async def last_replay_id(http: httpx.AsyncClient) -> int:
    return int((await http.get("/_sandbox/state")).json()["last_replay_id"])


async def seed_order(http: httpx.AsyncClient, customer: str = "tanaka", **fields: Any) -> str:
    spec = {"customer": customer, "lines": [], "opportunity": False, **fields}
    created = await http.post("/_sandbox/seed", json={"orders": [spec]})
    assert created.status_code == 201, created.text
    return str(created.json()["orders"][0]["id"])


async def edit(http: httpx.AsyncClient, order_id: str, **fields: Any) -> None:
    response = await http.patch(f"/_sandbox/records/Order/{order_id}", json=fields)
    assert response.status_code == 200, response.text


async def overflow_events(http: httpx.AsyncClient, count: int) -> None:
    for _ in range(count):
        assert (await http.post("/_sandbox/events/overflow", json={"entity": "Order"})).status_code == 200


# --- the test's own decoder, written from "Event Deserialization Considerations" ---------------------
class Decoder:
    def __init__(self, stub: Any, metadata: Any) -> None:
        self.stub = stub
        self.metadata = metadata
        self.schemas: dict[str, tuple[dict[str, Any], Any]] = {}

    async def schema(self, schema_id: str) -> dict[str, Any]:
        if schema_id not in self.schemas:
            info = await self.stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=self.metadata)
            assert info.schema_id == schema_id
            schema = json.loads(info.schema_json)
            self.schemas[schema_id] = (schema, fastavro.parse_schema(schema))
        return self.schemas[schema_id][0]

    async def record(self, event: Any) -> dict[str, Any]:
        await self.schema(event.event.schema_id)
        parsed = self.schemas[event.event.schema_id][1]
        record: Any = fastavro.schemaless_reader(io.BytesIO(event.event.payload), parsed)
        return dict(record)

    async def names(self, event: Any, bitmap_field: str) -> list[str]:
        """``changedFields`` & co. as field names: the first element maps bit i (LSB first) to the
        record's field i; ``P-0xHH`` maps bit i to child i of the compound field at position P."""
        schema = await self.schema(event.event.schema_id)
        entries = (await self.record(event))["ChangeEventHeader"][bitmap_field]
        fields = schema["fields"]
        names: list[str] = []
        for entry in entries:
            position, _, bitmap = entry.rpartition("-")
            assert bitmap.startswith("0x") and len(bitmap) % 2 == 0 and bitmap[2:] == bitmap[2:].upper(), entry
            bits = int(bitmap, 16)
            if not position:
                names += [f["name"] for i, f in enumerate(fields) if bits >> i & 1]
                continue
            parent = fields[int(position)]
            children = next(t for t in parent["type"] if isinstance(t, dict))["fields"]
            names += [f"{parent['name']}.{c['name']}" for i, c in enumerate(children) if bits >> i & 1]
        return names


@pytest.fixture
def decoder(stub: Any, metadata: Any) -> Decoder:
    return Decoder(stub, metadata)


def ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


# --- GetTopic / GetSchema -----------------------------------------------------------------------
async def test_get_topic_names_the_current_schema_and_get_schema_serves_it(stub: Any, metadata: Any) -> None:
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=metadata)
    info = await stub.GetSchema(pb.SchemaRequest(schema_id=topic.schema_id), metadata=metadata)
    schema = json.loads(info.schema_json)
    fields = {f["name"]: f for f in schema["fields"]}

    assert (topic.topic_name, topic.tenant_guid, topic.can_subscribe, topic.can_publish) == (
        ORDERS,
        ORG_ID,
        True,
        False,
    )
    assert topic.rpc_id and info.schema_id == topic.schema_id
    assert (schema["type"], schema["name"], schema["namespace"]) == (
        "record",
        "OrderChangeEvent",
        "com.sforce.eventbus",
    )
    header = schema["fields"][0]
    assert header["name"] == "ChangeEventHeader"
    header_fields = {f["name"]: f["type"] for f in header["type"]["fields"]}
    assert {"GAP_UPDATE", "GAP_OVERFLOW"} <= set(header_fields["changeType"]["symbols"])
    assert (header_fields["sequenceNumber"], header_fields["commitTimestamp"]) == ("int", "long")
    assert all(f["default"] is None and f["type"][0] == "null" for f in schema["fields"][1:])
    assert fields["Status"]["type"] == ["null", "string"]
    assert fields["CreatedDate"]["type"] == ["null", "long"] and fields["CreatedDate"]["doc"] == "Data:DateTime"
    assert fields["EffectiveDate"]["doc"] == "Data:Date" and fields["TotalAmount"]["type"] == ["null", "double"]
    address = fields["BillingAddress"]["type"][1]
    assert address["name"] == "Address" and [f["name"] for f in address["fields"]][:5] == [
        "Street", "City", "State", "PostalCode", "Country"]  # fmt: skip
    assert "BillingCity" not in fields and "Id" not in fields and "SystemModstamp" not in fields


async def test_the_platform_event_topic_has_its_own_schema(stub: Any, metadata: Any) -> None:
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=PLATFORM), metadata=metadata)
    schema = json.loads(
        (await stub.GetSchema(pb.SchemaRequest(schema_id=topic.schema_id), metadata=metadata)).schema_json
    )

    assert [f["name"] for f in schema["fields"]][:3] == ["CreatedDate", "CreatedById", "Account_Id__c"]
    assert schema["fields"][0]["type"] == "long" and schema["fields"][1]["type"] == "string"


async def test_an_unknown_topic_or_schema_is_not_found(stub: Any, metadata: Any, subscribe: Any) -> None:
    with pytest.raises(aio.AioRpcError) as topic:
        await stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=metadata)
    with pytest.raises(aio.AioRpcError) as schema:
        await stub.GetSchema(pb.SchemaRequest(schema_id="no-such-schema"), metadata=metadata)
    subscription = subscribe(topic="/data/ordERChangeEvent")  # channel names are case-sensitive
    streamed = await subscription.error()

    assert topic.value.code() == grpc.StatusCode.NOT_FOUND and error_code(topic.value) == PREFIX + "topic.not.found"
    assert "rpcId: " in str(topic.value.details())
    assert schema.value.code() == grpc.StatusCode.NOT_FOUND
    assert streamed.code() == grpc.StatusCode.NOT_FOUND and error_code(streamed) == PREFIX + "topic.not.found"


async def test_the_other_rpcs_are_unimplemented(stub: Any, metadata: Any) -> None:
    with pytest.raises(aio.AioRpcError) as publish:
        await stub.Publish(pb.PublishRequest(topic_name=PLATFORM), metadata=metadata)
    assert publish.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- auth -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "broken",
    [
        {"accesstoken": None},
        {"accesstoken": "00D5g00000FLEETEAA!unknown"},
        {"instanceurl": None},
        {"tenantid": "00D000000000000AAA"},
        {"tenantid": None},
    ],  # fmt: skip
    ids=["no-token", "unknown-token", "no-instance-url", "other-tenant", "no-tenant"],
)
async def test_calls_without_valid_auth_metadata_are_unauthenticated(
    stub: Any, metadata: Any, subscribe: Any, broken: dict[str, str | None]
) -> None:
    md = tuple((k, broken.get(k, v)) for k, v in metadata if broken.get(k, v) is not None)
    with pytest.raises(aio.AioRpcError) as unary:
        await stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=md)
    streamed = await subscribe(md=md).error()

    for error in (unary.value, streamed):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_code(error) == PREFIX + "service.auth.error"


# --- replay ---------------------------------------------------------------------------------------
async def test_latest_delivers_only_what_is_published_after_the_subscription(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    await seed_order(http)
    before = await last_replay_id(http)
    subscription = subscribe(preset=pb.LATEST, num_requested=5)
    await streams_registered(http, 1)  # LATEST starts where the server registers it
    order_id = await seed_order(http, customer="suzuki")

    (event,) = await subscription.events(1)
    record = await decoder.record(event)
    assert replay_int(event.replay_id) > before
    assert record["ChangeEventHeader"]["recordIds"] == [order_id]


async def test_earliest_starts_at_the_oldest_retained_event(http: httpx.AsyncClient, subscribe: Any) -> None:
    await seed_order(http)
    retained = (await http.get("/_sandbox/events", params={"channel": ORDERS})).json()
    subscription = subscribe(preset=pb.EARLIEST, num_requested=2)

    first, second = await subscription.events(2)
    oldest = [m["data"]["event"] for m in retained[:2]]
    assert [replay_int(first.replay_id), replay_int(second.replay_id)] == [e["replayId"] for e in oldest]
    assert first.event.id == oldest[0]["EventUuid"]


async def test_custom_delivers_strictly_after_the_replay_id(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    marker = await last_replay_id(http)
    first_order = await seed_order(http)
    after_first = await last_replay_id(http)
    second_order = await seed_order(http, customer="suzuki")

    replayed = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(2)
    resumed = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(after_first)).events(1)

    ids = [(await decoder.record(e))["ChangeEventHeader"]["recordIds"] for e in replayed + resumed]
    assert ids == [[first_order], [second_order], [second_order]]


async def test_replay_settings_on_later_requests_are_ignored(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    await seed_order(http)
    subscription = subscribe(preset=pb.LATEST, num_requested=1)
    subscription.request(1, topic_name=ORDERS, replay_preset=pb.EARLIEST)
    await subscription.silent(0.3)
    order_id = await seed_order(http, customer="suzuki")

    (event,) = await subscription.events(1)
    assert (await decoder.record(event))["ChangeEventHeader"]["recordIds"] == [order_id]


@pytest.mark.parametrize("raw", [b"\x00\x01", replay_bytes(10**9), replay_bytes(0)], ids=["short", "unissued", "zero"])
async def test_a_custom_replay_id_never_issued_is_corrupted(subscribe: Any, raw: bytes) -> None:
    error = await subscribe(preset=pb.CUSTOM, replay_id=raw).error()

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == PREFIX + "subscription.fetch.replayid.corrupted"


async def test_a_custom_replay_id_outside_retention_is_corrupted() -> None:
    small = SalesforceSandbox(retention=2, pubsub_port=0)
    runner = await small.start()
    try:
        async with httpx.AsyncClient(base_url=small.url, timeout=5) as http:
            token = str((await http.post("/services/oauth2/token", data=TOKEN_FORM)).json()["access_token"])
            for customer in ("tanaka", "suzuki", "tanaka", "suzuki"):
                await seed_order(http, customer)
        md = (("accesstoken", token), ("instanceurl", small.url), ("tenantid", ORG_ID))
        assert small.pubsub_url is not None
        async with aio.insecure_channel(small.pubsub_url) as channel:
            stub = new_stub(channel)
            first = pb.FetchRequest(topic_name=ORDERS, replay_preset=pb.CUSTOM, replay_id=replay_bytes(1),
                                    num_requested=1)  # fmt: skip
            evicted = Subscription(stub, md, first)
            error = await evicted.error()
            await evicted.close()
    finally:
        await runner.cleanup()

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == PREFIX + "subscription.fetch.replayid.corrupted"


# --- flow control ---------------------------------------------------------------------------------
async def test_never_more_than_requested(http: httpx.AsyncClient, subscribe: Any) -> None:
    marker = await last_replay_id(http)
    await overflow_events(http, 5)
    subscription = subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=3)

    first = await subscription.events(3)
    await subscription.silent(0.3)
    subscription.request(1)
    (fourth,) = await subscription.events(1)
    subscription.request(5)
    (fifth,) = await subscription.events(1)
    await subscription.silent(0.3)

    replay_ids = [replay_int(e.replay_id) for e in [*first, fourth, fifth]]
    assert replay_ids == sorted(replay_ids) and len(set(replay_ids)) == 5 and replay_ids[0] > marker


async def test_responses_report_what_is_still_requested(http: httpx.AsyncClient, subscribe: Any) -> None:
    marker = await last_replay_id(http)
    await overflow_events(http, 2)
    subscription = subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=5)

    response = await subscription.next()
    assert len(response.events) == 2 and response.pending_num_requested == 3
    assert response.latest_replay_id == response.events[-1].replay_id and response.rpc_id


async def test_requests_add_up_but_at_most_100_are_pending(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, subscribe: Any
) -> None:
    marker = await last_replay_id(http)
    await overflow_events(http, 105)
    subscription = subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=250)

    assert len(await subscription.events(100)) == 100  # > 100 counts as 100
    await subscription.silent(0.3)
    await http.post("/_sandbox/pubsub/faults", json={"kind": "half_open"})  # hold the sends while requests add up
    subscription.request(60)
    subscription.request(60)
    for _ in range(50):
        streams = (await http.get("/_sandbox/pubsub")).json()["streams"]
        if any(s["pending_num_requested"] == 100 for s in streams):
            break
        await asyncio.sleep(0.05)
    await http.delete("/_sandbox/pubsub/faults")

    rest = await subscription.next()
    assert len(rest.events) == 5 and rest.pending_num_requested == 95


@pytest.mark.parametrize("num_requested", [0, -1])
async def test_a_first_request_asking_for_nothing_is_invalid(subscribe: Any, num_requested: int) -> None:
    error = await subscribe(num_requested=num_requested).error()

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == PREFIX + "subscription.fetch.requested.events.invalid"


async def test_a_later_request_for_nothing_ends_the_stream(subscribe: Any) -> None:
    subscription = subscribe(num_requested=1)
    subscription.request(-5)

    error = await subscription.error()
    assert error_code(error) == PREFIX + "subscription.fetch.requested.events.invalid"


async def test_a_later_request_for_another_topic_is_a_mismatch(subscribe: Any) -> None:
    subscription = subscribe(num_requested=1)
    subscription.request(1, topic_name=PLATFORM)

    error = await subscription.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == PREFIX + "subscription.fetch.topic.mismatch"


# --- keepalive and idle close ---------------------------------------------------------------------
@pytest.mark.usefixtures("short_timers")
async def test_an_idle_stream_with_requests_gets_empty_keepalives(http: httpx.AsyncClient, subscribe: Any) -> None:
    subscription = subscribe(num_requested=4)

    keepalive = await subscription.next(timeout=2)
    again = await subscription.next(timeout=2)
    latest = await last_replay_id(http)
    assert not keepalive.events and keepalive.pending_num_requested == 4 and keepalive.rpc_id
    assert replay_int(again.latest_replay_id) == latest


@pytest.mark.usefixtures("short_timers")
async def test_a_stream_with_nothing_requested_is_closed_by_the_server(http: httpx.AsyncClient, subscribe: Any) -> None:
    marker = await last_replay_id(http)
    await overflow_events(http, 1)
    subscription = subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=1)

    assert len(await subscription.events(1)) == 1
    ended = await asyncio.wait_for(subscription.responses.get(), 3)
    assert ended is None and await subscription.call.code() == grpc.StatusCode.OK  # closed, no error


@pytest.mark.usefixtures("short_timers")
async def test_a_stream_that_keeps_requesting_stays_open(subscribe: Any) -> None:
    subscription = subscribe(num_requested=1)
    for _ in range(3):
        await subscription.next(timeout=2)  # keepalives: something is still requested


# --- decoding -------------------------------------------------------------------------------------
async def test_a_create_is_the_full_record_with_unchanged_fields_null(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    marker = await last_replay_id(http)
    order_id = await seed_order(http, EffectiveDate="2026-03-10")
    (event,) = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(1)
    record = await decoder.record(event)
    order = (await http.get(f"/_sandbox/records/Order/{order_id}")).json()

    header = record["ChangeEventHeader"]
    assert (header["changeType"], header["recordIds"], header["changedFields"]) == ("CREATE", [order_id], [])
    assert header["changeOrigin"] == "com/salesforce/api/rest/60.0;client=customer-portal"
    assert record["Status"] == "Pending Review" and record["AccountId"] == order["AccountId"]
    assert record["Name"] is None and record["Activation_Status__c"] is None
    assert record["EffectiveDate"] == ms(datetime.combine(date(2026, 3, 10), datetime.min.time(), UTC))
    assert record["CreatedDate"] == ms(datetime.strptime(order["CreatedDate"], "%Y-%m-%dT%H:%M:%S.%f%z"))
    assert record["BillingAddress"]["City"] == order["BillingCity"] and record["BillingAddress"]["Latitude"] is None


async def test_an_update_carries_only_changed_fields_and_bitmaps_that_name_them(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    order_id = await seed_order(http)
    await edit(http, order_id, Activation_Error_Code__c="E42")
    marker = await last_replay_id(http)
    await http.post(f"/_sandbox/orders/{order_id}/approve", json={})  # clears the error code: a nulled field
    await edit(http, order_id, BillingCity="Minato-ku", BillingStreet=None)
    approve, move = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(2)

    record = await decoder.record(approve)
    assert set(await decoder.names(approve, "changedFields")) == {
        "Status", "Activation_Status__c", "Activation_Error_Code__c", "LastModifiedDate"}  # fmt: skip
    assert await decoder.names(approve, "nulledFields") == ["Activation_Error_Code__c"]
    assert record["Status"] == "Approved" and record["Activation_Error_Code__c"] is None
    assert record["AccountId"] is None  # unchanged, so null
    assert record["ChangeEventHeader"]["diffFields"] == []

    moved = await decoder.record(move)
    assert set(await decoder.names(move, "changedFields")) == {
        "BillingAddress.City", "BillingAddress.Street", "LastModifiedDate"}  # fmt: skip
    assert await decoder.names(move, "nulledFields") == ["BillingAddress.Street"]
    assert moved["BillingAddress"]["City"] == "Minato-ku" and moved["BillingAddress"]["Street"] is None
    entries = moved["ChangeEventHeader"]["changedFields"]
    assert entries[0].startswith("0x") and any(e.endswith("-0x03") for e in entries[1:])  # Street=bit 0, City=bit 1


async def test_gap_and_platform_events_decode(http: httpx.AsyncClient, subscribe: Any, decoder: Decoder) -> None:
    order_id = await seed_order(http)
    marker = await last_replay_id(http)
    await http.post("/_sandbox/events/gap", json={"entity": "Order", "record_ids": [order_id]})
    fields = {"Account_Id__c": "0015g00000000001AA", "Eligibility_Status__c": "Eligible"}
    await http.post("/_sandbox/events/platform", json={"fields": fields})

    (gap,) = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(1)
    (platform,) = await subscribe(topic=PLATFORM, preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(1)
    gap_record, platform_record = await decoder.record(gap), await decoder.record(platform)

    assert gap_record["ChangeEventHeader"]["changeType"] == "GAP_UPDATE" and gap_record["Status"] is None
    assert (
        platform_record["Account_Id__c"] == "0015g00000000001AA" and platform_record["Verification_Status__c"] is None
    )
    assert isinstance(platform_record["CreatedDate"], int) and platform_record["CreatedById"].startswith("005")


async def test_out_of_order_and_duplicate_deliveries_reach_grpc_subscribers(
    http: httpx.AsyncClient, subscribe: Any
) -> None:
    subscription = subscribe(num_requested=10)
    await streams_registered(http, 1)  # LATEST starts where the server registers it
    await http.post("/_sandbox/events/out-of-order", json={"channel": ORDERS, "count": 2})
    await seed_order(http)
    await seed_order(http, customer="suzuki")
    late, early = await subscription.events(2)
    await http.post("/_sandbox/pubsub/faults", json={"kind": "duplicate", "channel": ORDERS})
    (again,) = await subscription.events(1)

    assert replay_int(late.replay_id) > replay_int(early.replay_id)
    assert (again.replay_id, again.event.id) == (late.replay_id, late.event.id)  # the channel's last event


# --- schema evolution -----------------------------------------------------------------------------
async def test_a_schema_can_evolve_mid_stream(
    http: httpx.AsyncClient, stub: Any, metadata: Any, subscribe: Any, decoder: Decoder
) -> None:
    marker = await last_replay_id(http)
    order_id = await seed_order(http)
    subscription = subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=10)
    (before,) = await subscription.events(1)
    field = f"Promo_{marker}__c"
    evolved = await http.post("/_sandbox/pubsub/schemas", json={"topic": ORDERS, "field": field})
    await http.post("/_sandbox/events/merged", json={"entity": "Order", "record_ids": [order_id],
                                                     "fields": {field: "SPRING"}})  # fmt: skip
    (after,) = await subscription.events(1)
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=metadata)
    (replayed,) = await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker), num_requested=1).events(1)

    assert evolved.status_code == 201 and evolved.json()["previous_schema_id"] == before.event.schema_id
    assert after.event.schema_id == evolved.json()["schema_id"] == topic.schema_id != before.event.schema_id
    assert (await decoder.record(after))[field] == "SPRING"
    assert field in await decoder.names(after, "changedFields")
    assert replayed.event.schema_id == before.event.schema_id  # the old event keeps its schema
    assert field not in (await decoder.record(replayed))


async def test_schema_evolution_rejects_bad_requests(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/_sandbox/pubsub/schemas", json={"topic": "/data/Nope", "field": "X__c"})
    taken = await http.post("/_sandbox/pubsub/schemas", json={"topic": ORDERS, "field": "Status"})
    badtype = await http.post("/_sandbox/pubsub/schemas", json={"topic": ORDERS, "field": "Y__c", "type": "blob"})
    assert (unknown.status_code, taken.status_code, badtype.status_code) == (404, 400, 400)


# --- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("reset", grpc.StatusCode.UNAVAILABLE, "service.unavailable"),
        ("internal", grpc.StatusCode.INTERNAL, "subscription.internal.error"),
        ("auth_expiry", grpc.StatusCode.UNAUTHENTICATED, "service.auth.error"),
    ],  # fmt: skip
)
async def test_stream_ending_faults_end_every_open_stream(
    http: httpx.AsyncClient, subscribe: Any, kind: str, status: grpc.StatusCode, code: str
) -> None:
    first, second = subscribe(num_requested=1), subscribe(topic=PLATFORM, num_requested=1)
    await streams_registered(http, 2)  # LATEST starts where the server registers it
    before = (await http.get("/_sandbox/pubsub")).json()["streams"]

    answer = await http.post("/_sandbox/pubsub/faults", json={"kind": kind})
    errors = [await first.error(), await second.error()]

    assert answer.status_code == 201 and answer.json()["streams"] >= 2 and len(before) >= 2
    assert all(e.code() == status and error_code(e) == PREFIX + code for e in errors)


async def test_expiring_tokens_ends_streams_and_the_old_token_fails(
    http: httpx.AsyncClient, stub: Any, metadata: Any, subscribe: Any
) -> None:
    subscription = subscribe(num_requested=1)
    await streams_registered(http, 1)  # LATEST starts where the server registers it
    expired = (await http.post("/_sandbox/expire-tokens")).json()

    error = await subscription.error()
    with pytest.raises(aio.AioRpcError) as later:
        await stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=metadata)
    assert expired["pubsub_streams_ended"] >= 1
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error_code(error) == PREFIX + "service.auth.error"
    assert later.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_invalid_replay_answers_the_next_subscribe_only(http: httpx.AsyncClient, subscribe: Any) -> None:
    await http.post("/_sandbox/pubsub/faults", json={"kind": "invalid_replay"})

    error = await subscribe(preset=pb.LATEST).error()
    after = subscribe(num_requested=1)
    await after.silent(0.3)  # open and quiet: the fault fired once
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == PREFIX + "subscription.fetch.replayid.corrupted"


async def test_allocation_exhausted_refuses_subscribes_until_cleared(
    http: httpx.AsyncClient, subscribe: Any, decoder: Decoder
) -> None:
    await http.post("/_sandbox/pubsub/faults", json={"kind": "allocation_exhausted"})
    refusals = [await subscribe().error(), await subscribe().error()]
    await http.delete("/_sandbox/pubsub/faults")
    marker = await last_replay_id(http)
    await overflow_events(http, 1)

    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refusals)
    assert all(error_code(e) == PREFIX + "subscription.limit.exceeded" for e in refusals)
    assert len(await subscribe(preset=pb.CUSTOM, replay_id=replay_bytes(marker)).events(1)) == 1


@pytest.mark.usefixtures("short_timers")
async def test_a_half_open_stream_goes_silent_without_closing(http: httpx.AsyncClient, subscribe: Any) -> None:
    subscription = subscribe(num_requested=5)
    await subscription.next(timeout=2)  # a keepalive: the stream is alive
    await http.post("/_sandbox/pubsub/faults", json={"kind": "half_open"})
    await seed_order(http)
    await asyncio.sleep(0.3)
    while not subscription.responses.empty():  # a keepalive that was already on its way
        subscription.responses.get_nowait()

    await subscription.silent(0.8)  # no event, no keepalive, no close (idle close is 0.3 s)
    state = (await http.get("/_sandbox/pubsub")).json()
    await http.delete("/_sandbox/pubsub/faults")
    assert state["faults"] == ["half_open"] and state["streams"]
    assert len(await subscription.events(1)) == 1


async def test_drop_connections_ends_grpc_streams_too(http: httpx.AsyncClient, subscribe: Any) -> None:
    subscription = subscribe(num_requested=1)
    await streams_registered(http, 1)  # LATEST starts where the server registers it
    dropped = (await http.post("/_sandbox/drop-connections", json={})).json()

    error = await subscription.error()
    assert dropped["pubsub_dropped"] >= 1 and error_code(error) == PREFIX + "service.unavailable"


async def test_an_unknown_fault_kind_is_refused(http: httpx.AsyncClient) -> None:
    assert (await http.post("/_sandbox/pubsub/faults", json={"kind": "meteor"})).status_code == 400


# --- wiring -----------------------------------------------------------------------------------------
async def test_the_runner_serves_pubsub_with_the_salesforce_sandbox_and_reports_it(tmp_path: Path) -> None:
    ready, stop = tmp_path / "ready.json", asyncio.Event()
    running = asyncio.create_task(
        run_sandboxes("127.0.0.1", {"salesforce": 0, "salesforce_pubsub": 0}, stop=stop, ready_file=ready)
    )
    for _ in range(100):
        if ready.exists():
            break
        await asyncio.sleep(0.05)
    ports = json.loads(ready.read_text())
    async with httpx.AsyncClient(base_url=f"http://localhost:{ports['salesforce']}", timeout=5) as http:
        token = (await http.post("/services/oauth2/token", data=TOKEN_FORM)).json()
    md = (("accesstoken", token["access_token"]), ("instanceurl", token["instance_url"]), ("tenantid", ORG_ID))
    async with aio.insecure_channel(f"127.0.0.1:{ports['salesforce_pubsub']}") as channel:
        topic = await new_stub(channel).GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=md)
    stop.set()
    await running

    assert topic.schema_id and set(ports) == {"salesforce", "salesforce_pubsub"}
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", ports["salesforce_pubsub"]), timeout=1):
        pass  # it died with the sandbox


async def test_a_taken_pubsub_port_leaves_the_http_sandbox_serving() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        world = SalesforceSandbox(pubsub_port=taken.getsockname()[1])
        runner = await world.start()
        try:
            async with httpx.AsyncClient(base_url=world.url, timeout=5) as http:
                state = (await http.get("/_sandbox/state")).json()
        finally:
            await runner.cleanup()

    assert world.pubsub_url is None and state["pubsub"]["url"] is None


async def test_without_a_pubsub_port_nothing_extra_is_served() -> None:
    world = SalesforceSandbox()
    runner = await world.start()
    await runner.cleanup()
    assert world.pubsub_url is None
