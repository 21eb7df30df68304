"""The Salesforce sandbox's Pub/Sub encoder (``sandbox.salesforce.pubsub_avro``): schemas, bitmaps, records.

Pins the conventions the gRPC sandbox promises (docs/sandboxes.md, "Pub/Sub API (gRPC)"): field 0 is the
header, every object field a nullable union, Billing compounded into ``BillingAddress``; bitmaps
upper-case hex over whole bytes, LSB = position 0, ``P-0xHH`` for compound children; dates and
datetimes as epoch milliseconds; schema ids stable per schema and new after evolution, while events
already published keep theirs.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from sandbox.salesforce import SalesforceSandbox
from sandbox.salesforce.events import CDC_ENTITIES, change_body, channel_for
from sandbox.salesforce.pubsub_avro import (
    HEADER,
    EncodingError,
    SchemaRegistry,
    bitmaps,
    build_change_event,
    change_record,
    date_ms,
    epoch_ms,
    platform_record,
)

ORDERS = "/data/OrderChangeEvent"


def header(change_type: str = "UPDATE", changed: list[str] | None = None) -> dict[str, Any]:
    return {"entityName": "Order", "recordIds": ["8015g00000000001AA"], "changeType": change_type,
            "changeOrigin": "", "transactionKey": "tx-1", "sequenceNumber": 1, "commitTimestamp": 1_700_000_000_000,
            "commitNumber": 42, "commitUser": "0055g00000FLEETAAA", "changedFields": changed or []}  # fmt: skip


def message(payload: dict[str, Any], replay_id: int = 7, channel: str = ORDERS) -> dict[str, Any]:
    return {"channel": channel, "data": {"payload": payload, "event": {"replayId": replay_id, "EventUuid": "u"}}}


def decode(registry: SchemaRegistry, schema_id: str, raw: bytes) -> dict[str, Any]:
    version = registry.get(schema_id)
    assert version is not None
    record: Any = fastavro.schemaless_reader(io.BytesIO(raw), fastavro.parse_schema(version.schema))
    return dict(record)


def test_a_change_event_schema_puts_the_header_first_and_compounds_billing() -> None:
    version = build_change_event("Order")

    assert version.fields[0] == HEADER and version.schema["name"] == "OrderChangeEvent"
    assert "BillingAddress" in version.fields and not any(f.startswith("Billing") and f != "BillingAddress"
                                                          for f in version.fields)  # fmt: skip
    assert version.fields[-4:] == ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
    assert version.children["BillingAddress"][:2] == ("Street", "City")


def test_bitmaps_are_upper_case_whole_bytes_lsb_first_with_compound_children() -> None:
    version = build_change_event("Order")
    status, address = version.position("Status"), version.position("BillingAddress")

    assert bitmaps(version, []) == []
    assert bitmaps(version, ["Status"]) == [f"0x{1 << status:02X}"]
    assert bitmaps(version, ["Status", "LastModifiedDate"])[0] == "0x" + format(
        1 << status | 1 << version.position("LastModifiedDate"), "X").rjust(10, "0")  # fmt: skip
    assert bitmaps(version, ["BillingAddress.City", "BillingAddress.Street"]) == ["0x00", f"{address}-0x03"]
    assert bitmaps(version, ["No_Such__c", "BillingAddress.Nowhere"]) == []


def test_an_update_record_has_only_changed_values_and_names_the_nulled_ones() -> None:
    registry = SchemaRegistry()
    version = registry.current(ORDERS)
    assert version is not None
    changed = ["Status", "Activation_Error_Code__c", "BillingAddress.Street", "LastModifiedDate"]
    payload = {HEADER: header("UPDATE", changed), "Status": "Approved", "Activation_Error_Code__c": None,
               "BillingAddress": {"Street": None}, "LastModifiedDate": "2026-01-02T03:04:05.678Z",
               "Not_A_Field__c": "ignored"}  # fmt: skip

    record = change_record(version, payload)

    assert record["Status"] == "Approved" and record["AccountId"] is None
    assert record["LastModifiedDate"] == 1_767_323_045_678
    assert record["BillingAddress"] == dict.fromkeys(version.children["BillingAddress"])
    assert record[HEADER]["changedFields"] == bitmaps(version, changed)
    assert record[HEADER]["nulledFields"] == bitmaps(version, ["Activation_Error_Code__c", "BillingAddress.Street"])
    assert record[HEADER]["diffFields"] == []
    schema_id, raw = registry.encode(message(payload))
    assert decode(registry, schema_id, raw)["Status"] == "Approved"


def test_a_create_names_no_nulled_fields_and_keeps_changed_fields_empty() -> None:
    version = build_change_event("Order")
    record = change_record(version, {HEADER: header("CREATE"), "Status": "Draft", "EffectiveDate": "2026-03-10"})

    assert record[HEADER]["changedFields"] == [] and record[HEADER]["nulledFields"] == []
    assert record["EffectiveDate"] == int(datetime(2026, 3, 10, tzinfo=UTC).timestamp()) * 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00.000Z", 1_767_225_600_000),
        ("2026-01-01T00:00:00.250+0000", 1_767_225_600_250),
        ("2026-01-01T09:00:00+09:00", 1_767_225_600_000),
        ("2026-01-01T00:00:00", 1_767_225_600_000),
    ],  # fmt: skip
)
def test_datetimes_become_epoch_milliseconds(value: str, expected: int) -> None:
    assert epoch_ms(value) == expected


def test_dates_become_epoch_milliseconds_at_utc_midnight() -> None:
    assert date_ms("2026-01-01") == 1_767_225_600_000


def test_a_value_the_schema_cannot_hold_is_an_encoding_error() -> None:
    version = build_change_event("Order")
    with pytest.raises(EncodingError, match="Weekend_Install__c"):
        change_record(version, {HEADER: header("CREATE"), "Weekend_Install__c": "maybe"})


def test_every_demo_record_of_every_cdc_entity_encodes() -> None:
    """Each field's schema type matches what the org stores (a wrong type would kill a gRPC stream)."""
    registry = SchemaRegistry()
    sandbox = SalesforceSandbox()
    sandbox.control.seed({"orders": [{"customer": "tanaka", "lines": ["VPN-TOKYO"]}]})
    for entity in CDC_ENTITIES:
        for row in sandbox.store.rows(entity):
            body, _ = change_body({k: v for k, v in row.items() if v is not None})
            channel = channel_for(entity)
            assert channel is not None
            schema_id, raw = registry.encode(message({HEADER: {**header("CREATE"), "entityName": entity}, **body},
                                                     channel=channel))  # fmt: skip
            assert decode(registry, schema_id, raw)[HEADER]["entityName"] == entity


def test_schema_ids_are_stable_and_change_with_evolution() -> None:
    first, second = SchemaRegistry(), SchemaRegistry()
    old = first.current(ORDERS)
    assert old is not None and second.current(ORDERS) == old

    new = first.add_field(ORDERS, "Promo_Code__c", published=[7])

    assert new.schema_id != old.schema_id and new.fields[-1] == "Promo_Code__c"
    assert first.get(old.schema_id) == old and first.current(ORDERS) == new
    assert first.for_event(ORDERS, 7) == old and first.for_event(ORDERS, 8) == new
    payload = {HEADER: header("UPDATE", ["Promo_Code__c"]), "Promo_Code__c": "SPRING"}
    schema_id, raw = first.encode(message(payload, replay_id=8))
    assert schema_id == new.schema_id and decode(first, schema_id, raw)["Promo_Code__c"] == "SPRING"


@pytest.mark.parametrize("name", ["Status", "BillingAddress", "bad name", ""])
def test_evolution_refuses_existing_or_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a new, valid Avro field name"):
        SchemaRegistry().add_field(ORDERS, name)


def test_a_platform_event_needs_its_created_fields() -> None:
    registry = SchemaRegistry()
    version = registry.current("/event/Account_Eligibility_Update__e")
    assert version is not None
    record = platform_record(version, {"CreatedDate": "2026-01-01T00:00:00.000Z", "CreatedById": "005",
                                       "Account_Id__c": "001", "Unknown__c": "x"})  # fmt: skip

    assert record == {"CreatedDate": 1_767_225_600_000, "CreatedById": "005", "Account_Id__c": "001",
                      "Eligibility_Status__c": None, "Verification_Status__c": None}  # fmt: skip
    with pytest.raises(EncodingError):
        platform_record(version, {"Account_Id__c": "001"})
