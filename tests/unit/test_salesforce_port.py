"""The ``SalesforcePort`` contract, written once and run against two worlds.

``SalesforcePortContract`` holds the behaviour every implementation must show; this module runs
it against ``FakeSalesforce``, and ``tests/integration/test_salesforce_contract.py`` runs the same
class against ``HttpSalesforce`` talking to the Salesforce sandbox over real HTTP. Each world
provides an ``Upstream``: the port plus the levers a test needs behind it (seed an order, read a
record back, make a record fail, spend the API budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import pytest

from adapters.salesforce import FakeSalesforce, RecordUpdate, SalesforcePort
from events.errors import RateLimited, RejectedByUpstream
from sandbox import demo_data


class Upstream(Protocol):
    port: SalesforcePort

    async def seed_order(self, customer: str, skus: list[str], **fields: Any) -> tuple[str, list[str]]:
        """Create an Order with one line per SKU; returns (order id, line ids)."""
        ...

    async def read(self, sobject: str, record_id: str) -> dict[str, Any]: ...

    async def fail_record(self, record_id: str, code: str) -> None:
        """The next collection update of this record fails with ``code``."""
        ...

    async def spend_api_budget(self) -> None: ...

    async def collection_requests(self) -> int:
        """How many sObject Collections requests reached the upstream so far."""
        ...


class SalesforcePortContract:
    """Subclasses provide the ``upstream`` fixture."""

    @pytest.fixture
    def upstream(self) -> Upstream:  # pragma: no cover - overridden
        raise NotImplementedError

    async def test_get_order_returns_the_order_as_salesforce_holds_it(self, upstream: Upstream) -> None:
        order_id, _ = await upstream.seed_order("tanaka", ["INT-1G-GOLD"], Type="Internet", Status="Pending Review")

        order = await upstream.port.get_order(order_id)

        assert (order.id, order.type, order.status) == (order_id, "Internet", "Pending Review")
        assert order.account_id == demo_data.CUSTOMERS[0]["sf_account_id"]
        assert order.whmcs_order_id is None

    async def test_get_order_items_carry_the_whmcs_product_mapping(self, upstream: Upstream) -> None:
        order_id, line_ids = await upstream.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])

        items = await upstream.port.get_order_items(order_id)

        assert [i.id for i in items] == sorted(line_ids)
        by_sku = {i.product.sku if i.product else None: i for i in items}
        assert by_sku["INT-1G-GOLD"].whmcs_product_id == "182"
        assert by_sku["INT-1G-GOLD"].effective_billing_cycle == "Monthly"
        assert by_sku["INT-INSTALL-SINGLE"].whmcs_product_id == "242"
        assert by_sku["INT-INSTALL-SINGLE"].quantity == Decimal(1)

    async def test_a_line_whose_product_is_not_mapped_has_no_whmcs_product_id(self, upstream: Upstream) -> None:
        order_id, _ = await upstream.seed_order("sato", ["INT-LEGACY"])

        (item,) = await upstream.port.get_order_items(order_id)

        assert item.whmcs_product_id is None
        assert item.effective_billing_cycle is None

    async def test_orders_with_items_are_read_in_bulk_with_their_product_mapping(self, upstream: Upstream) -> None:
        """One bulk read returns each existing order with its lines (an unknown id is simply absent)."""
        first, first_lines = await upstream.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"], Type="Internet")
        second, second_lines = await upstream.seed_order("suzuki", ["VPN-TOKYO"], Type="VPN", Status="Approved")
        unknown = demo_data.sf_id("801", 999_998)

        found = {r.order.id: r for r in await upstream.port.get_orders_with_items([first, second, unknown])}

        assert set(found) == {first, second}
        assert (found[second].order.type, found[second].order.status) == ("VPN", "Approved")
        assert found[first].order.account_id == demo_data.CUSTOMERS[0]["sf_account_id"]
        assert [i.id for i in found[first].items] == sorted(first_lines)
        assert [i.id for i in found[second].items] == second_lines
        by_sku = {i.product.sku if i.product else None: i for i in found[first].items}
        assert by_sku["INT-1G-GOLD"].whmcs_product_id == "182"
        assert by_sku["INT-1G-GOLD"].effective_billing_cycle == "Monthly"
        assert all(i.order_id == first for i in found[first].items)

    async def test_an_unknown_order_is_rejected_as_not_found(self, upstream: Upstream) -> None:
        with pytest.raises(RejectedByUpstream) as caught:
            await upstream.port.get_order(demo_data.sf_id("801", 999_999))

        assert caught.value.code == "NOT_FOUND"
        assert not caught.value.retriable

    async def test_update_record_writes_the_fields(self, upstream: Upstream) -> None:
        order_id, _ = await upstream.seed_order("suzuki", ["VPN-TOKYO"], Type="VPN")

        await upstream.port.update_record(
            "Order", order_id, {"WHMCS_Order_ID__c": "7001", "Activation_Status__c": "Activated"}
        )

        record = await upstream.read("Order", order_id)
        assert (record["WHMCS_Order_ID__c"], record["Activation_Status__c"]) == ("7001", "Activated")

    async def test_update_records_reports_each_record_and_keeps_the_good_ones(self, upstream: Upstream) -> None:
        _, line_ids = await upstream.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE", "INT-HIKARI-DENWA"])
        await upstream.fail_record(line_ids[1], "FIELD_CUSTOM_VALIDATION_EXCEPTION")
        updates = [RecordUpdate("OrderItem", i, {"WHMCS_Service_ID__c": f"svc-{n}"}) for n, i in enumerate(line_ids)]

        results = await upstream.port.update_records(updates)

        assert [r.success for r in results] == [True, False, True]
        assert results[1].error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and not results[1].retriable
        assert (await upstream.read("OrderItem", line_ids[0]))["WHMCS_Service_ID__c"] == "svc-0"
        assert (await upstream.read("OrderItem", line_ids[1]))["WHMCS_Service_ID__c"] is None

    async def test_all_or_none_rolls_back_every_record_when_one_fails(self, upstream: Upstream) -> None:
        _, line_ids = await upstream.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
        await upstream.fail_record(line_ids[0], "UNABLE_TO_LOCK_ROW")
        updates = [RecordUpdate("OrderItem", i, {"WHMCS_Service_ID__c": "svc"}) for i in line_ids]

        results = await upstream.port.update_records(updates, all_or_none=True)

        assert [r.error_code for r in results] == ["UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"]
        assert all(r.retriable for r in results)
        for line_id in line_ids:
            assert (await upstream.read("OrderItem", line_id))["WHMCS_Service_ID__c"] is None

    async def test_more_than_200_updates_are_sent_in_chunks_of_200(self, upstream: Upstream) -> None:
        _, line_ids = await upstream.seed_order("tanaka", ["INT-HIKARI-DENWA"] * 205)
        before = await upstream.collection_requests()

        results = await upstream.port.update_records(
            [RecordUpdate("OrderItem", i, {"WHMCS_Service_ID__c": i[-6:]}) for i in line_ids]
        )

        assert len(results) == 205 and all(r.success for r in results)
        assert [r.record_id for r in results] == line_ids
        assert await upstream.collection_requests() - before == 2

    async def test_query_returns_the_matching_records(self, upstream: Upstream) -> None:
        first, _ = await upstream.seed_order("tanaka", ["SIM-D-20GB"], Type="SIM")
        second, _ = await upstream.seed_order("suzuki", ["SIM-DV-5GB"], Type="SIM")

        rows = await upstream.port.query(f"SELECT Id, Type FROM Order WHERE Id IN ('{first}', '{second}')")

        assert sorted((r["Id"], r["Type"]) for r in rows) == sorted([(first, "SIM"), (second, "SIM")])

    async def test_records_modified_between_finds_a_fresh_change(self, upstream: Upstream) -> None:
        since = datetime.now(UTC) - timedelta(seconds=2)
        order_id, _ = await upstream.seed_order("tanaka", ["VPN-TOKYO"])
        await upstream.port.update_record("Order", order_id, {"Activation_Status__c": "Activating"})

        rows = await upstream.port.records_modified_between(
            "Order", since, datetime.now(UTC) + timedelta(seconds=2), ["Activation_Status__c"]
        )

        mine = [r for r in rows if r["Id"] == order_id]
        assert len(mine) == 1 and mine[0]["Activation_Status__c"] == "Activating"
        assert "LastModifiedDate" in mine[0]

    async def test_a_spent_api_budget_raises_rate_limited(self, upstream: Upstream) -> None:
        order_id, _ = await upstream.seed_order("tanaka", ["VPN-TOKYO"])
        await upstream.spend_api_budget()

        with pytest.raises(RateLimited) as caught:
            await upstream.port.get_order(order_id)

        assert caught.value.code == "REQUEST_LIMIT_EXCEEDED" and caught.value.retriable

    async def test_api_usage_is_known_after_a_call(self, upstream: Upstream) -> None:
        order_id, _ = await upstream.seed_order("tanaka", ["VPN-TOKYO"])

        await upstream.port.get_order(order_id)

        usage = upstream.port.api_usage()
        assert usage is not None and 0 < usage[0] <= usage[1]


# --- the fake world ---------------------------------------------------------------------------
class FakeUpstream:
    def __init__(self) -> None:
        self.fake = FakeSalesforce()
        self.port: SalesforcePort = self.fake
        self._ids = iter(range(1, 1_000_000))
        for product in demo_data.PRODUCTS:
            self.fake.add_record("Product2", product)
        for entry in demo_data.pricebook_entries():
            self.fake.add_record("PricebookEntry", entry)

    async def seed_order(self, customer: str, skus: list[str], **fields: Any) -> tuple[str, list[str]]:
        account = next(c for c in demo_data.CUSTOMERS if c["key"] == customer)
        order_id = demo_data.sf_id("801", next(self._ids))
        self.fake.add_record("Order", {"Id": order_id, "AccountId": account["sf_account_id"], **fields})
        line_ids = [self._add_line(order_id, sku) for sku in skus]
        return order_id, line_ids

    def _add_line(self, order_id: str, sku: str) -> str:
        product = demo_data.product_by_sku(sku)
        line: Mapping[str, Any] = {
            "Id": demo_data.sf_id("802", next(self._ids)),
            "OrderId": order_id,
            "Product2Id": product["Id"],
            "Quantity": 1,
            "UnitPrice": product["UnitPrice"],
            "Billing_Cycle__c": product["Billing_Cycle__c"],
            "WHMCS_Service_ID__c": None,
        }
        return str(self.fake.add_record("OrderItem", line)["Id"])

    async def read(self, sobject: str, record_id: str) -> dict[str, Any]:
        return self.fake.records[sobject][record_id]

    async def fail_record(self, record_id: str, code: str) -> None:
        self.fake.fail_record(record_id, code)

    async def spend_api_budget(self) -> None:
        self.fake.spend_api_budget()

    async def collection_requests(self) -> int:
        return len(self.fake.collection_calls)


class TestFakeSalesforceContract(SalesforcePortContract):
    @pytest.fixture
    def upstream(self) -> Upstream:
        return FakeUpstream()


# --- what only the fake offers ----------------------------------------------------------------
async def test_the_fake_records_applied_updates_and_can_fail_the_next_call() -> None:
    """``.updates`` lists what was written; ``fail_next_with`` fails exactly one call."""
    world = FakeUpstream()
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    world.fake.fail_next_with(RateLimited("slow down", retry_after=3))

    with pytest.raises(RateLimited):
        await world.fake.update_record("Order", order_id, {"Status": "Approved"})
    await world.fake.update_record("Order", order_id, {"Status": "Approved"})

    assert world.fake.updates == [RecordUpdate("Order", order_id, {"Status": "Approved"})]
