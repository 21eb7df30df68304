"""Salesforce payload models: CometD change events, platform events and REST records parse as sent,
and tolerate fields Salesforce or an admin adds later."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.salesforce_api import API_ERRORS, SAVE_RESULTS, CollectionUpdateRequest, OrderItemRecord, OrderRecord
from schemas.salesforce_cdc import (
    CHANGE_EVENT_MESSAGE,
    AccountEligibilityMessage,
    ChangeEventPayload,
    OrderChangeEvent,
    OrderItemChangeEvent,
)


def delivery(header: dict[str, Any], channel: str = "/data/OrderChangeEvent", **fields: Any) -> dict[str, Any]:
    base_header = {
        "entityName": "Order",
        "recordIds": ["8015g00000001001AA"],
        "changeType": "UPDATE",
        "changeOrigin": "",
        "transactionKey": "0004-ab",
        "sequenceNumber": 1,
        "commitTimestamp": 1_795_678_380_006,
        "commitNumber": 11_006_708_389,
        "commitUser": "005",
    }
    return {
        "channel": channel,
        "data": {
            "schema": "awHoPBPUwFQUZ7ztbP7RoA",
            "payload": {"ChangeEventHeader": {**base_header, **header}, **fields},
            "event": {"replayId": 42, "EventUuid": "e-1", "createdDate": "2026-11-26T07:33:00.006Z"},
        },
    }


def test_an_order_update_carries_only_its_changed_fields() -> None:
    message = CHANGE_EVENT_MESSAGE.validate_python(
        delivery(
            {"changedFields": ["Activation_Status__c", "LastModifiedDate"],
             "changeOrigin": "com/salesforce/api/rest/60.0;client=fulfillment-fleet"},
            Activation_Status__c="Activating", LastModifiedDate="2026-11-26T07:33:00.006Z",
        )
    )  # fmt: skip

    payload = message.data.payload
    assert isinstance(payload, OrderChangeEvent)
    assert payload.changed_values() == {
        "Activation_Status__c": "Activating",
        "LastModifiedDate": "2026-11-26T07:33:00.006Z",
    }
    assert payload.carries("Activation_Status__c") and not payload.carries("Status")
    assert message.header.origin_client == "fulfillment-fleet"
    assert message.replay_id == 42


def test_unknown_header_and_record_fields_are_tolerated() -> None:
    """Salesforce adds header fields between releases; admins add custom fields."""
    message = CHANGE_EVENT_MESSAGE.validate_python(
        delivery({"isTransactionEnd": True, "nulledFields": ["EID__c"]}, Brand_New__c="x")
    )

    assert message.header.nulled_fields == ["EID__c"]
    assert message.data.payload.changed_values()["Brand_New__c"] == "x"


@pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
def test_gap_events_are_header_only(change_type: str) -> None:
    message = CHANGE_EVENT_MESSAGE.validate_python(delivery({"changeType": change_type, "changeOrigin": None}))

    assert message.header.is_gap and not message.header.is_overflow
    assert message.data.payload.changed_values() == {}
    assert message.header.change_origin == "" and message.header.origin_client is None


def test_an_overflow_event_names_the_entity_but_no_record() -> None:
    message = CHANGE_EVENT_MESSAGE.validate_python(delivery({"changeType": "GAP_OVERFLOW", "recordIds": []}))

    assert message.header.is_overflow and message.header.record_ids == []


def test_the_entity_name_picks_the_payload_class() -> None:
    item = CHANGE_EVENT_MESSAGE.validate_python(delivery({"entityName": "OrderItem"}, "/data/OrderItemChangeEvent"))
    other = CHANGE_EVENT_MESSAGE.validate_python(delivery({"entityName": "Account"}, "/data/AccountChangeEvent"))

    assert isinstance(item.data.payload, OrderItemChangeEvent)
    assert type(other.data.payload) is ChangeEventPayload


def test_a_compound_billing_address_arrives_nested() -> None:
    message = CHANGE_EVENT_MESSAGE.validate_python(
        delivery({"changedFields": ["BillingAddress.City", "LastModifiedDate"]}, BillingAddress={"City": "Minato-ku"})
    )

    assert message.data.payload.carries("BillingAddress.City")
    assert message.data.payload.changed_values()["BillingAddress"] == {"City": "Minato-ku"}


def test_a_change_event_without_a_replay_id_is_invalid() -> None:
    broken = delivery({})
    del broken["data"]["event"]["replayId"]

    with pytest.raises(ValidationError):
        CHANGE_EVENT_MESSAGE.validate_python(broken)


def test_the_account_eligibility_platform_event_parses() -> None:
    message = AccountEligibilityMessage.model_validate(
        {"channel": "/event/Account_Eligibility_Update__e",
         "data": {"schema": "s", "event": {"replayId": 9, "createdDate": "2026-01-01T00:00:00.000Z"},
                  "payload": {"Account_Id__c": "0015g00000000001AA", "Eligibility_Status__c": "Eligible",
                              "Verification_Status__c": "Verified", "CreatedDate": "2026-01-01T00:00:00.000Z",
                              "CreatedById": "005", "Extra__c": 1}}}
    )  # fmt: skip

    assert message.data.payload.account_id == "0015g00000000001AA"
    assert message.data.payload.eligibility_status == "Eligible"


def test_an_order_record_keeps_unknown_fields_and_parses_salesforce_datetimes() -> None:
    order = OrderRecord.model_validate(
        {"attributes": {"type": "Order", "url": "/x"}, "Id": "8015g00000001001AA", "Status": "Approved",
         "TotalAmount": 27500.0, "LastModifiedDate": "2026-11-26T07:32:59.969+0000", "Some_New_Field__c": "y"}
    )  # fmt: skip

    assert order.total_amount == Decimal("27500.0")
    assert order.last_modified_date is not None and order.last_modified_date.utcoffset() is not None
    assert (order.model_extra or {})["Some_New_Field__c"] == "y"


def test_an_order_item_without_product_has_no_mapping() -> None:
    item = OrderItemRecord.model_validate({"Id": "8025g00000001001AA", "OrderId": "801", "Product2": None})

    assert item.whmcs_product_id is None and item.effective_billing_cycle is None


def test_rest_error_lists_and_save_results_parse() -> None:
    (error,) = API_ERRORS.validate_json(b'[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]')
    results = SAVE_RESULTS.validate_python(
        [
            {
                "id": "801",
                "success": False,
                "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "m", "fields": []}],
            }
        ]
    )

    assert error.error_code == "INVALID_SESSION_ID"
    assert results[0].errors[0].status_code == "UNABLE_TO_LOCK_ROW"


def test_a_collection_update_holds_at_most_200_records() -> None:
    records = [{"attributes": {"type": "Order"}, "id": f"801{n:015d}"} for n in range(201)]

    with pytest.raises(ValidationError):
        CollectionUpdateRequest.model_validate({"allOrNone": False, "records": records})
