"""The sf-cdc translation rules: each change event kind -> the right domain events, re-reading only
when a guard needs a field the event does not carry. Helpers here build CometD deliveries shaped
like Salesforce's (and the sandbox's) and are reused by the other sf-cdc unit tests."""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.salesforce import FakeSalesforce
from events.base import to_envelope
from events.envelope import to_record
from events.errors import InvalidPayload, RejectedByUpstream
from events.salesforce import (
    AccountEligibilityChanged,
    CatalogChanged,
    OrderActivationRequested,
    OrderChanged,
    ResyncRequested,
    SimActivationRequested,
)
from schemas.salesforce_cdc import EventInfo
from workers.ingress.cdc_translate import (
    INTERNAL_ORDER_FIELDS,
    MAX_SNAPSHOT_LINES,
    OVERFLOW_LOOKBACK,
    Rules,
    Translator,
    UnresolvableChange,
    json_safe,
    parse,
)

OWN_CLIENT = "fulfillment-fleet"
RULES = Rules(frozenset({"Processed", "Reactivate", "Approved"}), OWN_CLIENT)
COMMIT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_replay = itertools.count(1000)

CHANNELS = {
    "Order": "/data/OrderChangeEvent",
    "OrderItem": "/data/OrderItemChangeEvent",
    "Product2": "/data/Product2ChangeEvent",
    "PricebookEntry": "/data/PricebookEntryChangeEvent",
}


def sf_id(prefix: str, n: int) -> str:
    return (f"{prefix}5g00000{n:06d}AAA")[:18]


ORDER_ID = sf_id("801", 1)
SIM_ORDER_ID = sf_id("801", 2)
ITEM_ID = sf_id("802", 1)
ACCOUNT_ID = sf_id("001", 1)


def change_message(
    entity: str,
    change_type: str = "UPDATE",
    record_ids: list[str] | None = None,
    fields: dict[str, Any] | None = None,
    *,
    changed: list[str] | None = None,
    origin: str = "",
    replay_id: int | bytes | None = None,
    event_uuid: str | None = "auto",
    transaction_key: str | None = None,
    commit_ms: int = COMMIT_MS,
    channel: str | None = None,
) -> dict[str, Any]:
    """A CometD change-event delivery; ``changedFields`` defaults to the field names for updates."""
    fields = dict(fields or {})
    if changed is None:
        changed = [*fields, "LastModifiedDate"] if change_type == "UPDATE" else []
    header = {
        "entityName": entity,
        "recordIds": [ORDER_ID] if record_ids is None else record_ids,
        "changeType": change_type,
        "changeOrigin": origin,
        "transactionKey": transaction_key or str(uuid.uuid4()),
        "sequenceNumber": 1,
        "commitTimestamp": commit_ms,
        "commitNumber": 1,
        "commitUser": sf_id("005", 2),
        "changedFields": changed,
    }
    event: dict[str, Any] = {"replayId": next(_replay) if replay_id is None else replay_id}
    if event_uuid is not None:
        event["EventUuid"] = str(uuid.uuid4()) if event_uuid == "auto" else event_uuid
    return {
        "channel": channel or CHANNELS[entity],
        "data": {"schema": "abc", "payload": {"ChangeEventHeader": header, **fields}, "event": event},
    }


def eligibility_message(account_id: str = ACCOUNT_ID, **fields: Any) -> dict[str, Any]:
    payload = {"Account_Id__c": account_id, "CreatedDate": "2026-01-01T00:00:00.000Z", **fields}
    return {
        "channel": "/event/Account_Eligibility_Update__e",
        "data": {
            "schema": "x",
            "payload": payload,
            "event": {"replayId": next(_replay), "EventUuid": str(uuid.uuid4())},
        },
    }


def over_pubsub(message: dict[str, Any], replay_id: bytes) -> dict[str, Any]:
    """``message`` as the Pub/Sub API source hands it over: the same shape, an opaque bytes replay id."""
    again = copy.deepcopy(message)
    again["data"]["event"]["replayId"] = replay_id
    return again


def fake_org() -> FakeSalesforce:
    sf = FakeSalesforce()
    sf.add_record(
        "Order",
        {"Id": ORDER_ID, "AccountId": ACCOUNT_ID, "Status": "Approved", "Type": "Internet",
         "Activation_Status__c": "Activating", "WHMCS_Order_ID__c": None},
    )  # fmt: skip
    sf.add_record(
        "Order",
        {"Id": SIM_ORDER_ID, "AccountId": ACCOUNT_ID, "Status": "Processed", "Type": "SIM",
         "SIM_Type__c": "eSIM", "Activation_Status__c": None, "WHMCS_Order_ID__c": "5001"},
    )  # fmt: skip
    sf.add_record("OrderItem", {"Id": ITEM_ID, "OrderId": ORDER_ID, "Quantity": 1})
    return sf


def translator(sf: FakeSalesforce | None = None) -> Translator:
    return Translator(RULES, sf or fake_org(), clock=lambda: datetime(2026, 1, 1, 1, tzinfo=UTC))


async def emitted(message: dict[str, Any], t: Translator | None = None) -> list[Any]:
    result = await (t or translator()).translate(parse(message))
    return [e.event for e in result.emissions]


def types(events: list[Any]) -> list[type]:
    return [type(e) for e in events]


# --- order activation ---------------------------------------------------------------------------
async def test_activating_with_a_trigger_status_requests_activation_after_rereading_the_missing_guard() -> None:
    """The Flow's change carries Status and Activation_Status__c but not WHMCS_Order_ID__c: re-read it."""
    sf = fake_org()
    t = translator(sf)
    events = await emitted(
        change_message("Order", fields={"Status": "Approved", "Activation_Status__c": "Activating"}), t
    )
    assert types(events) == [OrderActivationRequested, OrderChanged]
    activation = events[0]
    assert activation.sf_order_id == ORDER_ID and activation.sf_account_id == ACCOUNT_ID
    assert activation.status == "Approved" and activation.order_type == "Internet"
    assert activation.change["payload"]["Activation_Status__c"] == "Activating"
    assert t.rereads == 1
    assert events[1].changed_fields == ["Status"]


async def test_activation_is_skipped_when_the_reread_shows_a_whmcs_order_already() -> None:
    sf = fake_org()
    sf.records["Order"][ORDER_ID]["WHMCS_Order_ID__c"] = "7001"
    events = await emitted(change_message("Order", fields={"Activation_Status__c": "Activating"}), translator(sf))
    assert events == []


async def test_activation_needs_a_status_in_the_trigger_set() -> None:
    message = change_message("Order", fields={"Status": "Draft", "Activation_Status__c": "Activating"})
    assert types(await emitted(message)) == [OrderChanged]


async def test_activation_reads_the_status_when_the_event_does_not_carry_it() -> None:
    t = translator()
    events = await emitted(change_message("Order", fields={"Activation_Status__c": "Activating"}), t)
    assert types(events) == [OrderActivationRequested]
    assert events[0].status == "Approved" and t.rereads == 1


async def test_a_create_knows_every_guard_field_but_an_activation_still_carries_a_snapshot() -> None:
    """The guards pass on the change alone; the read is for the saga (its snapshot), and an order
    the read no longer finds is not activated."""
    sf = fake_org()
    new_id = sf_id("801", 9)
    sf.add_record("Order", {"Id": new_id, "AccountId": ACCOUNT_ID, "Status": "Approved", "Type": "VPN"})
    t = translator(sf)
    fields = {"Status": "Approved", "Activation_Status__c": "Activating", "AccountId": ACCOUNT_ID, "Type": "VPN"}
    events = await emitted(change_message("Order", "CREATE", [new_id], fields), t)
    assert types(events) == [OrderActivationRequested, OrderChanged]
    assert t.rereads == 1 and events[0].order_type == "VPN"
    assert events[0].snapshot is not None and events[0].snapshot.order_type == "VPN"


async def test_an_activation_request_carries_the_order_and_its_lines_as_read() -> None:
    sf = fake_org()
    sf.add_record(
        "Product2",
        {
            "Id": sf_id("01t", 1),
            "Name": "Gold",
            "StockKeepingUnit": "INT-1G-GOLD",
            "WH_Product_ID__c": "182",
            "Billing_Cycle__c": "Monthly",
            "Item_Class__c": "Service",
        },
    )
    sf.records["OrderItem"][ITEM_ID].update({"Product2Id": sf_id("01t", 1), "Quantity": 2})  # fmt: skip
    read_at = datetime(2026, 1, 1, 1, tzinfo=UTC)
    events = await emitted(
        change_message("Order", fields={"Status": "Approved", "Activation_Status__c": "Activating"}), translator(sf)
    )
    snapshot = events[0].snapshot
    assert snapshot.read_at == read_at and snapshot.sf_account_id == ACCOUNT_ID
    assert (snapshot.order_type, snapshot.status, snapshot.whmcs_order_id) == ("Internet", "Approved", None)
    (line,) = snapshot.lines
    assert line.sf_order_item_id == ITEM_ID and line.quantity == 2
    assert (line.whmcs_product_id, line.product_billing_cycle, line.sku) == ("182", "Monthly", "INT-1G-GOLD")
    assert "WH_Product_ID__c" not in events[0].model_dump_json()  # events carry our names, not Salesforce's


async def test_an_order_with_too_many_lines_travels_without_a_snapshot() -> None:
    sf = fake_org()
    for n in range(MAX_SNAPSHOT_LINES):
        sf.add_record("OrderItem", {"Id": sf_id("802", 500 + n), "OrderId": ORDER_ID, "Quantity": 1})
    events = await emitted(change_message("Order", fields={"Activation_Status__c": "Activating"}), translator(sf))
    assert types(events) == [OrderActivationRequested] and events[0].snapshot is None


async def test_concurrent_rereads_share_one_bulk_query() -> None:
    """Lanes re-reading at the same time cost one SOQL query (with the lines as a sub-query), not one each."""
    sf = fake_org()
    ids = [sf_id("801", 100 + n) for n in range(12)]
    for order_id in ids:
        sf.add_record("Order", {"Id": order_id, "AccountId": ACCOUNT_ID, "Status": "Approved", "Type": "VPN"})
    t = translator(sf)
    messages = [change_message("Order", record_ids=[i], fields={"Activation_Status__c": "Activating"}) for i in ids]
    results = await asyncio.gather(*(t.translate(parse(m)) for m in messages))
    assert [r.emissions[0].event.sf_order_id for r in results] == ids
    assert t.rereads == 1 and sf.bulk_reads == [ids]


async def test_an_activation_of_a_deleted_order_emits_nothing() -> None:
    t = translator()
    message = change_message("Order", record_ids=[sf_id("801", 77)], fields={"Activation_Status__c": "Activating"})
    assert await emitted(message, t) == []


async def test_reread_errors_other_than_not_found_propagate() -> None:
    sf = fake_org()
    sf.fail_next_with(RejectedByUpstream("boom", code="INVALID_SESSION"))
    with pytest.raises(RejectedByUpstream):
        await emitted(change_message("Order", fields={"Activation_Status__c": "Activating"}), translator(sf))


# --- SIM activation -----------------------------------------------------------------------------
async def test_status_processed_on_a_sim_order_requests_sim_activation() -> None:
    message = change_message("Order", record_ids=[SIM_ORDER_ID], fields={"Status": "Processed"})
    events = await emitted(message)
    assert types(events) == [SimActivationRequested, OrderChanged]
    assert events[0].sim_type == "eSIM" and events[0].sf_order_id == SIM_ORDER_ID


async def test_status_processed_on_an_internet_order_is_only_a_change() -> None:
    assert types(await emitted(change_message("Order", fields={"Status": "Processed"}))) == [OrderChanged]


async def test_the_sim_rule_uses_the_type_the_event_carries() -> None:
    t = translator()
    message = change_message("Order", record_ids=[ORDER_ID], fields={"Status": "Processed", "Type": "SIM"})
    events = await emitted(message, t)
    assert types(events) == [SimActivationRequested, OrderChanged]  # the record says Internet: the event wins
    assert t.rereads == 1 and events[0].snapshot is not None


# --- order changed ------------------------------------------------------------------------------
async def test_internal_fields_alone_emit_nothing() -> None:
    t = translator()
    fields = dict.fromkeys(INTERNAL_ORDER_FIELDS - {"Activation_Status__c"}, "x")
    result = await t.translate(parse(change_message("Order", fields=fields)))
    assert result.emissions == () and result.note == "no_rule_matched"


async def test_a_billing_address_change_is_customer_facing() -> None:
    message = change_message(
        "Order", fields={"BillingAddress": {"City": "Osaka"}}, changed=["BillingAddress.City", "LastModifiedDate"]
    )
    events = await emitted(message)
    assert types(events) == [OrderChanged] and events[0].changed_fields == ["BillingAddress"]


async def test_a_deleted_order_is_a_change() -> None:
    events = await emitted(change_message("Order", "DELETE"))
    assert types(events) == [OrderChanged] and events[0].change_type == "DELETE"


# --- own writes, merged, duplicates -------------------------------------------------------------
async def test_the_fleets_own_writes_trigger_nothing_but_a_customer_facing_one_busts_the_cache() -> None:
    """Our own Status revert must reach the cache (the portal shows Status) without re-triggering an
    activation; an own write of internal fields only emits nothing."""
    origin = f"com/salesforce/api/rest/60.0;client={OWN_CLIENT}"
    message = change_message(
        "Order", fields={"Status": "Approved", "Activation_Status__c": "Activating"}, origin=origin
    )
    result = await translator().translate(parse(message))
    assert types([e.event for e in result.emissions]) == [OrderChanged]
    assert result.emissions[0].event.model_dump()["changed_fields"] == ["Status"]
    internal = change_message("Order", fields={"Activation_Status__c": "Activating"}, origin=origin)
    quiet = await translator().translate(parse(internal))
    assert quiet.emissions == () and quiet.note == "own_write"


async def test_another_clients_writes_are_translated() -> None:
    message = change_message("Order", fields={"Status": "Draft"}, origin="com/salesforce/api/rest/60.0;client=portal")
    assert types(await emitted(message)) == [OrderChanged]


async def test_a_merged_event_emits_one_event_per_record_with_distinct_ids() -> None:
    ids = [ORDER_ID, SIM_ORDER_ID]
    result = await translator().translate(parse(change_message("Order", record_ids=ids, fields={"Status": "Draft"})))
    assert [e.event.model_dump()["sf_order_id"] for e in result.emissions] == ids
    assert len({e.event_id for e in result.emissions}) == 2


async def test_the_same_change_delivered_twice_gets_the_same_event_ids() -> None:
    message = change_message("Order", fields={"Status": "Draft"}, event_uuid="d9f1c1a0-0000-4000-8000-000000000001")
    first = await translator().translate(parse(message))
    again = await translator().translate(parse({**message}))
    assert [e.event_id for e in first.emissions] == [e.event_id for e in again.emissions]


async def test_without_event_uuid_the_id_comes_from_transaction_key_and_sequence() -> None:
    a = parse(change_message("Order", event_uuid=None, transaction_key="tx-1", replay_id=5))
    b = parse(change_message("Order", event_uuid=None, transaction_key="tx-1", replay_id=6))
    assert a.basis == b.basis == "tx:tx-1:1:Order"
    assert set(a.dedupe_keys()) & set(b.dedupe_keys())


# --- order items ----------------------------------------------------------------------------------
async def test_an_order_item_change_is_keyed_by_its_order_found_by_rereading() -> None:
    sf = fake_org()
    t = translator(sf)
    events = await emitted(change_message("OrderItem", record_ids=[ITEM_ID], fields={"Quantity": 2}), t)
    assert types(events) == [OrderChanged]
    assert events[0].sf_order_id == ORDER_ID and events[0].entity == "OrderItem" and events[0].record_id == ITEM_ID
    assert sf.queries == [f"SELECT Id, OrderId FROM OrderItem WHERE Id = '{ITEM_ID}'"]


async def test_the_whmcs_service_id_on_an_item_is_internal() -> None:
    message = change_message("OrderItem", record_ids=[ITEM_ID], fields={"WHMCS_Service_ID__c": "9"})
    assert await emitted(message) == []


async def test_a_deleted_item_finds_its_order_from_an_earlier_create() -> None:
    sf = fake_org()
    t = translator(sf)
    new_item = sf_id("802", 50)
    await emitted(change_message("OrderItem", "CREATE", [new_item], {"OrderId": SIM_ORDER_ID, "Quantity": 1}), t)
    events = await emitted(change_message("OrderItem", "DELETE", [new_item]), t)
    assert events[0].sf_order_id == SIM_ORDER_ID and sf.queries == []


async def test_a_deleted_item_with_an_unknown_order_is_unresolvable() -> None:
    with pytest.raises(UnresolvableChange):
        await emitted(change_message("OrderItem", "DELETE", [sf_id("802", 99)]))


# --- catalog and platform event -------------------------------------------------------------------
async def test_product_and_pricebook_changes_are_catalog_changes() -> None:
    product = sf_id("01t", 3)
    events = await emitted(change_message("Product2", record_ids=[product], fields={"Name": "Gold+"}))
    assert types(events) == [CatalogChanged]
    assert events[0].product2_id == product and events[0].changed_fields == ["Name"]
    entry = sf_id("01u", 3)
    created = await emitted(change_message("PricebookEntry", "CREATE", [entry], {"Product2Id": product}))
    assert created[0].entity == "PricebookEntry" and created[0].product2_id == product


async def test_the_eligibility_platform_event_becomes_account_eligibility_changed() -> None:
    message = eligibility_message(Eligibility_Status__c="Eligible", Verification_Status__c="Verified")
    events = await emitted(message)
    assert types(events) == [AccountEligibilityChanged]
    assert (events[0].sf_account_id, events[0].eligibility, events[0].verification_status) == (
        ACCOUNT_ID,
        "Eligible",
        "Verified",
    )


async def test_entities_and_platform_events_without_rules_are_ignored() -> None:
    t = translator()
    other = change_message("Account", record_ids=[ACCOUNT_ID], channel="/data/ChangeEvents")
    assert (await t.translate(parse(other))).note == "ignored_entity"
    event = {"channel": "/event/Other__e", "data": {"payload": {"X": 1}, "event": {"replayId": 3}}}
    assert (await t.translate(parse(event))).note == "ignored_entity"


# --- gaps, overflow, wildcards, resync ------------------------------------------------------------
async def test_a_gap_event_rereads_the_record_and_emits_from_its_current_state() -> None:
    t = translator()
    events = await emitted(change_message("Order", "GAP_UPDATE"), t)
    assert types(events) == [OrderActivationRequested, OrderChanged]
    assert events[1].change_type == "GAP_UPDATE" and t.rereads == 1


async def test_a_gap_delete_needs_no_reread() -> None:
    t = translator()
    assert types(await emitted(change_message("Order", "GAP_DELETE"), t)) == [OrderChanged]
    assert t.rereads == 0


async def test_a_gap_on_a_processed_sim_order_requests_the_sim_step_until_it_is_activated() -> None:
    sf = fake_org()
    t = translator(sf)
    assert SimActivationRequested in types(await emitted(change_message("Order", "GAP_UPDATE", [SIM_ORDER_ID]), t))
    sf.records["Order"][SIM_ORDER_ID]["Activation_Status__c"] = "Activated"
    assert types(await emitted(change_message("Order", "GAP_UPDATE", [SIM_ORDER_ID]), t)) == [OrderChanged]


async def test_an_overflow_requests_a_resync_of_the_entity_around_its_commit_time() -> None:
    result = await translator().translate(parse(change_message("Order", "GAP_OVERFLOW", record_ids=[])))
    assert result.emissions == ()
    (request,) = result.resyncs
    assert isinstance(request.event, ResyncRequested)
    commit = datetime.fromtimestamp(COMMIT_MS / 1000, UTC)
    assert request.event.entity == "Order" and request.event.since == commit - OVERFLOW_LOOKBACK
    assert request.event.reason == "GAP_OVERFLOW"


async def test_wildcard_record_ids_become_a_resync() -> None:
    result = await translator().translate(parse(change_message("Order", record_ids=["801*"])))
    assert result.resyncs[0].event.model_dump()["reason"] == "WILDCARD_RECORD_IDS"


async def test_a_resync_emits_every_modified_record_from_its_state_with_repeatable_ids() -> None:
    t = translator()
    until = datetime.now(UTC) + timedelta(minutes=1)
    request = t.resync_request("Order", until - timedelta(hours=1), until, "test", "basis-1")
    first = await t.resync(request)
    assert {type(e.event) for e in first} == {OrderActivationRequested, SimActivationRequested, OrderChanged}
    assert [e.event_id for e in await t.resync(request)] == [e.event_id for e in first]
    items = await t.resync(t.resync_request("OrderItem", until - timedelta(hours=1), until, "test", "basis-1"))
    assert [(e.event.model_dump()["sf_order_id"], e.event.model_dump()["record_id"]) for e in items] == [
        (ORDER_ID, ITEM_ID)
    ]


async def test_a_platform_event_window_cannot_be_resynced() -> None:
    t = translator()
    request = t.resync_request("Account_Eligibility_Update__e", None, datetime.now(UTC), "test", "b")
    assert await t.resync(request) == []


# --- parse errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("not a dict", "not a JSON object"),
        ({"data": {}}, "no channel"),
        ({"channel": "/topic/Foo", "data": {}}, "unsupported channel"),
        ({"channel": "/data/OrderChangeEvent", "data": {"payload": {}, "event": {"replayId": 1}}}, "ChangeEventHeader"),
        (change_message("Order", record_ids=[]), "no recordIds"),
        (change_message("Order", record_ids=["nope"]), "malformed record ids"),
        (change_message("Order", commit_ms=10**20), "commitTimestamp"),
        (eligibility_message(account_id=""), "Account_Id__c"),
        ({"channel": "/event/Other__e", "data": "x"}, "not an object"),
    ],
)
def test_malformed_deliveries_are_invalid_payloads(message: Any, fragment: str) -> None:
    with pytest.raises(InvalidPayload, match=fragment):
        parse(message)


# --- both transports: CometD (int replay ids) and the Pub/Sub API (opaque bytes) -----------------
PUBSUB_REPLAY = b"\x00\x00\x00\x00\x00\x01\xe2\x40"


def test_a_replay_id_keeps_its_kind_through_the_schema() -> None:
    """An int stays an int, bytes stay bytes (even bytes of digits), a string never becomes bytes."""
    kept = [EventInfo.model_validate({"replayId": value}).replay_id for value in (7, b"12", PUBSUB_REPLAY)]
    assert kept == [7, b"12", PUBSUB_REPLAY] and [type(v) for v in kept] == [int, bytes, bytes]
    assert EventInfo.model_validate({"replayId": "12"}).replay_id == 12  # as before: a numeric string is a number
    with pytest.raises(ValidationError):
        EventInfo.model_validate({"replayId": "not a replay id"})


async def test_a_pubsub_delivery_translates_as_the_cometd_one_does() -> None:
    """Same change, either transport: the same events with the same ids; the bytes replay id shows in
    hex in the dedupe key, the events' ``replay_id`` and their audit copy (``replayIdHex``)."""
    cometd = change_message("Order", fields={"Status": "Approved", "Activation_Status__c": "Activating"})
    pubsub = over_pubsub(cometd, PUBSUB_REPLAY)
    org = fake_org()
    via_cometd = await translator(org).translate(parse(cometd))
    via_pubsub = await translator(org).translate(parse(pubsub))
    assert via_pubsub.emissions and [e.event_id for e in via_pubsub.emissions] == [
        e.event_id for e in via_cometd.emissions
    ]
    change = parse(pubsub)
    assert change.replay_id == PUBSUB_REPLAY and change.event_replay_id == "000000000001e240"
    assert change.dedupe_keys()[0] == f"replay:{CHANNELS['Order']}:000000000001e240"
    for cometd_emission, emission in zip(via_cometd.emissions, via_pubsub.emissions, strict=True):
        event = emission.event
        assert event.replay_id == event.change["event"]["replayIdHex"] == "000000000001e240"
        assert "replayId" not in event.change["event"]
        assert to_record(to_envelope(event, source="/test", id=emission.event_id))[1]
        same = {"replay_id", "change"}
        assert event.model_dump(exclude=same) == cometd_emission.event.model_dump(exclude=same)


async def test_a_pubsub_platform_event_translates_as_the_cometd_one_does() -> None:
    cometd = eligibility_message(Eligibility_Status__c="Eligible")
    (event,) = await emitted(over_pubsub(cometd, PUBSUB_REPLAY))
    assert isinstance(event, AccountEligibilityChanged) and event.eligibility == "Eligible"
    assert event.change is not None and event.replay_id == event.change["event"]["replayIdHex"] == PUBSUB_REPLAY.hex()


def test_json_safe_spells_bytes_in_hex_under_a_clear_key_and_keeps_the_rest() -> None:
    message = {"event": {"replayId": b"\x01\xff", "EventUuid": "u"}, "list": [b"\x02", 3], "n": 1}
    assert json_safe(message) == {"event": {"replayIdHex": "01ff", "EventUuid": "u"}, "list": ["02", 3], "n": 1}
    cometd = change_message("Order")
    assert json_safe(cometd) == cometd
