"""The Pub/Sub decoder: Avro change events with bitmap headers become the CometD message shape.

The schema and bitmaps here are written by hand from Salesforce's "Event Deserialization
Considerations" (bit i = field at position i, least significant bit first; ``P-0x..`` = the
children of the compound field at position P), not produced by the sandbox's encoder.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import fastavro
import pytest

from adapters.salesforce_pubsub import EventSchema, SchemaCache, expand_bitmaps, to_cometd
from workers.ingress.cdc_translate import parse

_OPTIONAL_STRING = ["null", "string"]
HEADER = {
    "type": "record",
    "name": "ChangeEventHeader",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {
            "name": "changeType",
            "type": {"type": "enum", "name": "ChangeType", "symbols": ["CREATE", "UPDATE", "DELETE"]},
        },
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}
ADDRESS = {
    "type": "record",
    "name": "Address",
    "fields": [
        {"name": n, "type": _OPTIONAL_STRING, "default": None} for n in ("Street", "City", "State", "PostalCode")
    ],
}
SCHEMA = {
    "type": "record",
    "name": "OrderChangeEvent",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "ChangeEventHeader", "type": HEADER},  # 0
        {"name": "Name", "type": _OPTIONAL_STRING, "default": None},  # 1
        {"name": "Status", "type": _OPTIONAL_STRING, "default": None},  # 2
        {"name": "BillingAddress", "type": ["null", ADDRESS], "default": None},  # 3
        {"name": "Activation_Status__c", "type": _OPTIONAL_STRING, "default": None},  # 4
        {"name": "LastModifiedDate", "type": ["null", "long"], "default": None, "doc": "Data:DateTime"},  # 5
        {"name": "EffectiveDate", "type": ["null", "long"], "default": None, "doc": "Data:Date"},  # 6
        {"name": "Description", "type": _OPTIONAL_STRING, "default": None},  # 7
    ],
}
MODIFIED = int(datetime(2026, 12, 7, 21, 30, 5, 123000, tzinfo=UTC).timestamp() * 1000)
EFFECTIVE = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)


def schema() -> EventSchema:
    return EventSchema.from_json("schema-1", json.dumps(SCHEMA))


def header(change_type: str = "UPDATE", changed: list[str] | None = None, nulled: list[str] | None = None) -> dict:
    return {
        "entityName": "Order",
        "recordIds": ["801000000000001AAA"],
        "changeType": change_type,
        "changeOrigin": "com/salesforce/api/rest/60.0;client=agent",
        "transactionKey": "tx-1",
        "sequenceNumber": 1,
        "commitTimestamp": MODIFIED,
        "commitNumber": 42,
        "commitUser": "005000000000001AAA",
        "nulledFields": nulled or [],
        "diffFields": [],
        "changedFields": changed or [],
    }


def encoded(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA), record)
    return out.getvalue()


def test_bitmaps_name_top_level_fields_and_compound_children() -> None:
    # 0x34 = 0b110100: positions 2 (Status), 4 (Activation_Status__c), 5 (LastModifiedDate);
    # 3-0x02: the second child of BillingAddress (City)
    assert expand_bitmaps(schema(), ["0x34", "3-0x02"]) == [
        "Status",
        "Activation_Status__c",
        "LastModifiedDate",
        "BillingAddress.City",
    ]
    assert expand_bitmaps(schema(), ["Status"]) == ["Status"]  # names pass through


def test_a_bitmap_beyond_the_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="position 8"):
        expand_bitmaps(schema(), ["0x100"])
    with pytest.raises(ValueError, match="not compound"):
        expand_bitmaps(schema(), ["2-0x01"])


def test_an_update_carries_only_changed_and_nulled_fields_in_the_cometd_shape() -> None:
    record = {
        "ChangeEventHeader": header(changed=["0xB4", "3-0x02"], nulled=["0x80"]),
        "Name": None,  # unchanged: null in Pub/Sub, absent in CometD
        "Status": "Activated",
        "BillingAddress": {"Street": None, "City": "Osaka", "State": None, "PostalCode": None},
        "Activation_Status__c": "Activated",
        "LastModifiedDate": MODIFIED,
        "EffectiveDate": None,
        "Description": None,  # cleared: named in nulledFields
    }
    decoded = schema().decode(encoded(record))
    message = to_cometd("/data/OrderChangeEvent", schema(), decoded, replay_id=b"\x00\x01", event_id="uuid-1")

    payload = message["data"]["payload"]
    assert payload["ChangeEventHeader"]["changedFields"] == [
        "Status",
        "Activation_Status__c",
        "LastModifiedDate",
        "Description",
        "BillingAddress.City",
    ]
    assert payload["ChangeEventHeader"]["nulledFields"] == ["Description"]
    assert {k: v for k, v in payload.items() if k != "ChangeEventHeader"} == {
        "Status": "Activated",
        "BillingAddress": {"City": "Osaka"},
        "Activation_Status__c": "Activated",
        "LastModifiedDate": "2026-12-07T21:30:05.123Z",
        "Description": None,
    }
    assert message["data"]["event"] == {
        "replayId": b"\x00\x01",
        "EventUuid": "uuid-1",
        "createdDate": "2026-12-07T21:30:05.123Z",
    }
    change = parse(message)  # the translator reads it as it reads a CometD delivery
    assert change.replay_id == b"\x00\x01"
    assert change.changed_fields() == {
        "Status",
        "Activation_Status__c",
        "LastModifiedDate",
        "Description",
        "BillingAddress",
    }
    assert change.knows("Description") and not change.knows("Name")


def test_a_create_carries_every_non_null_field_with_dates_as_cometd_spells_them() -> None:
    record = {
        "ChangeEventHeader": header("CREATE"),
        "Name": "Order 1",
        "Status": "Draft",
        "BillingAddress": {"Street": "1-2-3", "City": "Tokyo", "State": None, "PostalCode": None},
        "Activation_Status__c": None,
        "LastModifiedDate": MODIFIED,
        "EffectiveDate": EFFECTIVE,
        "Description": None,
    }
    message = to_cometd("/data/OrderChangeEvent", schema(), record, replay_id=b"\x07", event_id="")
    payload = message["data"]["payload"]
    assert {k: v for k, v in payload.items() if k != "ChangeEventHeader"} == {
        "Name": "Order 1",
        "Status": "Draft",
        "BillingAddress": {"Street": "1-2-3", "City": "Tokyo"},
        "LastModifiedDate": "2026-12-07T21:30:05.123Z",
        "EffectiveDate": "2026-12-01",
    }
    assert message["data"]["event"]["EventUuid"] is None
    assert parse(message).change_type == "CREATE"


def test_a_platform_event_keeps_its_fields_and_creation_date() -> None:
    platform = EventSchema.from_json(
        "pe-1",
        json.dumps(
            {
                "type": "record",
                "name": "Account_Eligibility_Update__e",
                "fields": [
                    {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
                    {"name": "CreatedById", "type": "string"},
                    {"name": "Account_Id__c", "type": _OPTIONAL_STRING, "default": None},
                    {"name": "Eligibility_Status__c", "type": _OPTIONAL_STRING, "default": None},
                ],
            }
        ),
    )
    record = {"CreatedDate": MODIFIED, "CreatedById": "005x", "Account_Id__c": "001x", "Eligibility_Status__c": None}
    message = to_cometd("/event/Account_Eligibility_Update__e", platform, record, replay_id=b"\x09", event_id="e-1")
    assert message["data"]["payload"] == {
        "CreatedDate": "2026-12-07T21:30:05.123Z",
        "CreatedById": "005x",
        "Account_Id__c": "001x",
    }
    assert message["data"]["event"]["createdDate"] == "2026-12-07T21:30:05.123Z"


async def test_the_schema_cache_fetches_each_id_once() -> None:
    fetched: list[str] = []

    class Info:
        schema_json = json.dumps(SCHEMA)

    async def fetch(schema_id: str) -> Info:
        fetched.append(schema_id)
        return Info()

    cache = SchemaCache(fetch)  # type: ignore[arg-type]
    first = await cache.get("a")
    assert await cache.get("a") is first
    await cache.get("b")  # a new schema id mid-stream (a field was added): fetched too
    assert fetched == ["a", "b"]
