"""The Salesforce sandbox's org in memory: the SOQL subset, transactions and their change events,
and the event bus's replay rules (no HTTP involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox import demo_data
from sandbox.salesforce import soql
from sandbox.salesforce.events import EventBus, InvalidReplayId
from sandbox.salesforce.org import AGENT, Org, api_actor
from sandbox.salesforce.store import Store

GOLD = demo_data.product_by_sku("INT-1G-GOLD")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def org(clock: Clock) -> Org:
    store = Store()
    store.seed_demo(clock())
    return Org(store, EventBus(retention=5, clock=clock), clock)


def place_order(org: Org, skus: list[str] = ["INT-1G-GOLD"]) -> tuple[str, list[str]]:  # noqa: B006
    with org.transaction(api_actor("60.0", "client=customer-portal")) as tx:
        order = tx.create("Order", {"AccountId": demo_data.CUSTOMERS[0]["sf_account_id"], "Status": "Draft",
                                    "Type": "Internet", "BillingCity": "Shibuya-ku"})  # fmt: skip
        items = []
        for sku in skus:
            product = demo_data.product_by_sku(sku)
            items.append(tx.create("OrderItem", {"OrderId": order["Id"], "Product2Id": product["Id"], "Quantity": 2,
                                                 "UnitPrice": product["UnitPrice"]})["Id"])  # fmt: skip
    return order["Id"], items


def events(org: Org, channel: str = "/data/OrderChangeEvent") -> list[dict[str, Any]]:
    return [m["data"]["payload"] for m in org.bus.retained(channel)]


def query(org: Org, text: str) -> list[dict[str, Any]]:
    return soql.run(org.store, soql.parse(text), api_version="60.0")


# --- SOQL -------------------------------------------------------------------------------------
def test_soql_follows_lookups_and_nests_the_related_record(org: Org) -> None:
    order_id, (item_id,) = place_order(org)

    (row,) = query(org, f"SELECT Id, Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM OrderItem "
                        f"WHERE OrderId = '{order_id}'")  # fmt: skip

    assert row["Id"] == item_id
    assert row["Product2"]["WH_Product_ID__c"] == "182" and row["Product2"]["Billing_Cycle__c"] == "Monthly"
    assert row["Product2"]["attributes"]["type"] == "Product2"


def test_soql_filters_with_in_datetimes_and_and(org: Org, clock: Clock) -> None:
    first, _ = place_order(org)
    clock.tick(3600)
    second, _ = place_order(org)

    rows = query(org, f"SELECT Id FROM Order WHERE Id IN ('{first}', '{second}') AND "
                      "LastModifiedDate >= 2026-03-01T09:30:00Z")  # fmt: skip

    assert [r["Id"] for r in rows] == [second]


def test_soql_orders_and_limits(org: Org) -> None:
    rows = query(
        org, "SELECT Id, StockKeepingUnit FROM Product2 WHERE Family = 'SIM' ORDER BY StockKeepingUnit DESC LIMIT 2"
    )

    assert [r["StockKeepingUnit"] for r in rows] == ["SIM-DV-5GB", "SIM-D-20GB"]


def test_soql_walks_two_lookups(org: Org) -> None:
    entry = demo_data.pricebook_entries()[1]
    with org.transaction(AGENT) as tx:
        order = tx.create("Order", {"AccountId": demo_data.CUSTOMERS[0]["sf_account_id"]})
        tx.create("OrderItem", {"OrderId": order["Id"], "PricebookEntryId": entry["Id"], "Product2Id": GOLD["Id"]})

    (row,) = query(
        org, f"SELECT PricebookEntry.Product2.WH_Product_ID__c FROM OrderItem WHERE OrderId = '{order['Id']}'"
    )

    assert row["PricebookEntry"]["Product2"]["WH_Product_ID__c"] == "182"


def test_soql_parent_to_child_subquery_nests_each_orders_items_as_a_query_result(org: Org) -> None:
    first, items = place_order(org, ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    with org.transaction(AGENT) as tx:
        empty = tx.create("Order", {"AccountId": demo_data.CUSTOMERS[0]["sf_account_id"]})["Id"]

    rows = query(org, f"SELECT Id, Status, (SELECT Id, Quantity, Product2.WH_Product_ID__c FROM OrderItems "
                      f"ORDER BY Id) FROM Order WHERE Id IN ('{first}', '{empty}')")  # fmt: skip

    by_id = {r["Id"]: r for r in rows}
    nested = by_id[first]["OrderItems"]
    assert list(by_id[first]) == ["attributes", "Id", "Status", "OrderItems"]
    assert (nested["totalSize"], nested["done"]) == (2, True)
    assert [r["Id"] for r in nested["records"]] == sorted(items)
    assert nested["records"][0]["attributes"]["type"] == "OrderItem"
    assert {r["Product2"]["WH_Product_ID__c"] for r in nested["records"]} == {"182", "242"}
    assert by_id[empty]["OrderItems"] is None  # no children: null, as the REST API answers


def test_soql_subquery_filters_and_limits_the_children(org: Org) -> None:
    order_id, items = place_order(org, ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])

    (row,) = query(org, f"SELECT Id, (SELECT Id FROM OrderItems WHERE Id != '{items[0]}' LIMIT 5) FROM Order "
                        f"WHERE Id = '{order_id}'")  # fmt: skip

    assert [r["Id"] for r in row["OrderItems"]["records"]] == [items[1]]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("SELEKT Id FROM Order", "MALFORMED_QUERY"),
        ("SELECT Id FROM Order WHERE", "MALFORMED_QUERY"),
        ("SELECT Id FROM Order WHERE Id = 'a' OR Id = 'b'", "MALFORMED_QUERY"),
        ("SELECT Nope__c FROM Order", "INVALID_FIELD"),
        ("SELECT Foo.Name FROM OrderItem", "INVALID_FIELD"),
        ("SELECT Id FROM Invoice__c", "INVALID_TYPE"),
        ("SELECT Id, (SELECT Id FROM Lines) FROM Order", "INVALID_TYPE"),
        ("SELECT Id, (SELECT Nope__c FROM OrderItems) FROM Order", "INVALID_FIELD"),
        ("SELECT Id, (SELECT Id, (SELECT Id FROM OrderItems) FROM Orders) FROM Account", "MALFORMED_QUERY"),
        ("SELECT Id, (SELECT Id FROM OrderItems FROM Order", "MALFORMED_QUERY"),
    ],
)
def test_bad_soql_is_answered_with_salesforce_error_codes(org: Org, text: str, code: str) -> None:
    with pytest.raises(soql.SoqlError) as caught:
        query(org, text)

    assert caught.value.entry["errorCode"] == code


# --- transactions and change events -----------------------------------------------------------
def test_a_create_event_carries_every_non_null_field_and_the_client(org: Org) -> None:
    order_id, _ = place_order(org)

    created = events(org)[-1]
    header = created["ChangeEventHeader"]
    assert (header["changeType"], header["recordIds"], header["changedFields"]) == ("CREATE", [order_id], [])
    assert header["changeOrigin"] == "com/salesforce/api/rest/60.0;client=customer-portal"
    assert created["Status"] == "Draft" and created["TotalAmount"] == 11000.0  # the roll-up of its line
    assert created["BillingAddress"] == {"City": "Shibuya-ku"}
    assert "Id" not in created and "WHMCS_Order_ID__c" not in created
    assert created["LastModifiedDate"].endswith("Z")


def test_several_writes_to_one_record_in_one_transaction_make_one_event(org: Org) -> None:
    order_id, _ = place_order(org)
    with org.transaction(AGENT) as tx:
        tx.update("Order", order_id, {"Status": "Approved"})
        tx.update("Order", order_id, {"Activation_Status__c": "Activating"})

    update = events(org)[-1]
    assert update["ChangeEventHeader"]["changedFields"] == ["Status", "LastModifiedDate", "Activation_Status__c"]
    assert update["ChangeEventHeader"]["changeOrigin"] == ""
    assert (update["Status"], update["Activation_Status__c"]) == ("Approved", "Activating")


def test_a_transaction_ending_in_an_exception_rolls_back_and_emits_nothing(org: Org) -> None:
    order_id, _ = place_order(org)
    before = len(events(org))

    with pytest.raises(RuntimeError), org.transaction(AGENT) as tx:
        tx.update("Order", order_id, {"Status": "Approved"})
        raise RuntimeError("validation failed")

    assert org.store.records["Order"][order_id]["Status"] == "Draft"
    assert len(events(org)) == before


def test_a_merged_event_lists_every_record_with_the_same_change(org: Org) -> None:
    first, _ = place_order(org)
    second, _ = place_order(org)
    with org.transaction(AGENT) as tx:
        tx.merged_update("Order", [first, second], {"Status": "Activated"})

    merged = events(org)[-1]
    assert merged["ChangeEventHeader"]["recordIds"] == [first, second]
    assert merged["Status"] == "Activated"


# --- the bus ----------------------------------------------------------------------------------
def test_replay_ids_grow_across_channels_and_old_ones_fall_out_of_retention(org: Org) -> None:
    place_order(org)  # 1 Order + 1 OrderItem event
    ids = [m["data"]["event"]["replayId"] for ch in org.bus.channels for m in org.bus.retained(ch)]
    assert sorted(ids) == list(range(1, len(ids) + 1))

    for _ in range(6):
        place_order(org)  # 7 Order events in all; retention is 5 per channel
    retained = org.bus.retained("/data/OrderChangeEvent")
    assert len(retained) == 5
    oldest = retained[0]["data"]["event"]["replayId"]

    with pytest.raises(InvalidReplayId, match=r"^400::The replayId \{1\} you provided was invalid\."):
        org.bus.cursor("/data/OrderChangeEvent", 1)
    assert org.bus.retained("/data/OrderChangeEvent", org.bus.cursor("/data/OrderChangeEvent", -2))[0] == retained[0]
    assert org.bus.cursor("/data/OrderChangeEvent", oldest) == oldest
    assert org.bus.cursor("/data/OrderChangeEvent", -1) == org.bus.last_replay_id


def test_out_of_order_delivery_reverses_the_next_events_but_retains_them_in_order(org: Org) -> None:
    delivered: list[int] = []
    org.bus.listen(lambda channel, m: delivered.append(m["data"]["event"]["replayId"]))
    org.bus.reverse_next("/data/OrderChangeEvent", 2)

    place_order(org)
    place_order(org)

    order_ids = [m["data"]["event"]["replayId"] for m in org.bus.retained("/data/OrderChangeEvent")]
    item_ids = [m["data"]["event"]["replayId"] for m in org.bus.retained("/data/OrderItemChangeEvent")]
    assert [d for d in delivered if d in order_ids] == list(reversed(order_ids))
    assert [d for d in delivered if d in item_ids] == item_ids
