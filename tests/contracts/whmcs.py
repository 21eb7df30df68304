"""The WhmcsPort contract, written once; run against ``FakeWhmcs`` (unit) and ``HttpWhmcs`` + the
WHMCS sandbox over real HTTP (integration).

A subclass provides two fixtures: ``whmcs`` (the port under test, seeded with the demo world of
``sandbox.demo_data``) and ``whmcs_world`` (a ``WhmcsWorld`` to add clients the test needs).
Every test uses its own ``sfOrderId`` marker, so one world can serve many tests.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from adapters.whmcs import FakeWhmcs, OrderLine, PayMethod, WhmcsPort
from events.errors import MappingMissing, RejectedByUpstream
from sandbox.whmcs.state import demo_world
from tests.contracts.support import unique

TANAKA, SUZUKI, SATO = 1001, 1002, 1003  # demo clients; Sato has no pay method
UNKNOWN_CLIENT = 999_999
GOLD, INSTALL, SIM_5GB = 182, 242, 301  # demo pids; SIM_5GB has the SIM custom fields
INTERNET = [OrderLine(GOLD, "monthly"), OrderLine(INSTALL, "onetime")]


class WhmcsWorld(Protocol):
    async def add_client(self, client_id: int, *, status: str = "Active") -> None: ...


def seeded_fake_whmcs() -> FakeWhmcs:
    """A fake holding exactly the sandbox's demo world (same clients, pay methods, products, fields)."""
    fake, world = FakeWhmcs(), demo_world()
    for c in world.clients.values():
        methods = [PayMethod(p["id"], p["type"], p["description"]) for p in c.paymethods]
        fake.add_client(c.id, name=f"{c.firstname} {c.lastname}", email=c.email, status=c.status, pay_methods=methods)
    for p in world.products.values():
        fake.add_product(p.pid, p.name, tuple(p.custom_fields.values()))
    return fake


def marker() -> str:
    return unique("sfOrderId=801")


class WhmcsContract:
    # --- clients and pay methods -----------------------------------------------------------------
    async def test_get_client_reads_the_demo_client(self, whmcs: WhmcsPort) -> None:
        client = await whmcs.get_client(TANAKA)
        assert (client.client_id, client.status, client.email) == (TANAKA, "Active", "taro.tanaka@example.jp")

    async def test_unknown_client_is_a_missing_mapping(self, whmcs: WhmcsPort) -> None:
        with pytest.raises(MappingMissing) as caught:
            await whmcs.get_client(UNKNOWN_CLIENT)
        assert caught.value.code == "WHMCS_CLIENT_NOT_FOUND"
        with pytest.raises(MappingMissing):
            await whmcs.list_pay_methods(UNKNOWN_CLIENT)

    async def test_pay_methods_are_listed_and_empty_when_there_are_none(self, whmcs: WhmcsPort) -> None:
        methods = await whmcs.list_pay_methods(TANAKA)
        assert [(m.paymethod_id, m.type) for m in methods] == [(11, "CreditCard")]
        assert await whmcs.list_pay_methods(SATO) == []

    # --- orders --------------------------------------------------------------------------------
    async def test_add_order_then_find_order_by_note_finds_it_pending(self, whmcs: WhmcsPort) -> None:
        note = marker()
        added = await whmcs.add_order(TANAKA, INTERNET, notes=f"{note} via fleet")
        found = await whmcs.find_order_by_note(TANAKA, note)
        assert found is not None
        assert (found.order_id, found.status, found.service_ids) == (added.order_id, "Pending", added.service_ids)
        assert len(added.service_ids) == 2
        assert added.invoice_id is None  # the fleet orders with noinvoice

    async def test_find_order_by_note_matches_whole_markers_only(self, whmcs: WhmcsPort) -> None:
        note = marker()
        await whmcs.add_order(TANAKA, INTERNET, notes=note + "X")
        assert await whmcs.find_order_by_note(TANAKA, note) is None
        assert await whmcs.find_order_by_note(SUZUKI, note + "X") is None  # another client's order

    async def test_accept_order_makes_order_and_services_active_and_is_idempotent(self, whmcs: WhmcsPort) -> None:
        added = await whmcs.add_order(SUZUKI, [OrderLine(SIM_5GB, "monthly")], notes=marker())
        await whmcs.accept_order(added.order_id)
        await whmcs.accept_order(added.order_id)
        active = await whmcs.find_orders(SUZUKI, status="Active")
        assert added.order_id in [o.order_id for o in active]
        services = {s.service_id: s for s in await whmcs.list_services(SUZUKI)}
        assert [services[i].status for i in added.service_ids] == ["Active"]

    async def test_accepting_an_unknown_order_is_rejected(self, whmcs: WhmcsPort) -> None:
        with pytest.raises(RejectedByUpstream) as caught:
            await whmcs.accept_order(987_654_321)
        assert caught.value.code == "ORDER_NOT_PENDING"

    async def test_cancel_order_is_idempotent_but_refused_once_active(self, whmcs: WhmcsPort) -> None:
        pending = await whmcs.add_order(TANAKA, INTERNET, notes=marker())
        await whmcs.cancel_order(pending.order_id)
        await whmcs.cancel_order(pending.order_id)
        assert pending.order_id in [o.order_id for o in await whmcs.find_orders(TANAKA, status="Cancelled")]
        accepted = await whmcs.add_order(TANAKA, INTERNET, notes=marker())
        await whmcs.accept_order(accepted.order_id)
        with pytest.raises(RejectedByUpstream) as caught:
            await whmcs.cancel_order(accepted.order_id)
        assert caught.value.code == "ORDER_NOT_PENDING"

    async def test_unknown_product_is_a_missing_mapping(self, whmcs: WhmcsPort) -> None:
        with pytest.raises(MappingMissing) as caught:
            await whmcs.add_order(TANAKA, [OrderLine(999, "monthly")], notes=marker())
        assert caught.value.code == "WHMCS_PRODUCT_NOT_FOUND"

    async def test_order_for_unknown_client_is_a_missing_mapping(self, whmcs: WhmcsPort) -> None:
        with pytest.raises(MappingMissing):
            await whmcs.add_order(UNKNOWN_CLIENT, INTERNET, notes=marker())

    @pytest.mark.parametrize(
        ("lines", "payment_method", "code"),
        [([], "mailin", "NO_ITEMS"), (INTERNET, "bitcoin", "INVALID_PAYMENT_METHOD")],
    )
    async def test_business_errors_are_rejections(
        self, whmcs: WhmcsPort, lines: list[OrderLine], payment_method: str, code: str
    ) -> None:
        with pytest.raises(RejectedByUpstream) as caught:
            await whmcs.add_order(TANAKA, lines, notes=marker(), payment_method=payment_method)
        assert caught.value.code == code

    async def test_a_closed_client_cannot_order(self, whmcs: WhmcsPort, whmcs_world: WhmcsWorld) -> None:
        await whmcs_world.add_client(4242, status="Closed")
        with pytest.raises(RejectedByUpstream) as caught:
            await whmcs.add_order(4242, INTERNET, notes=marker())
        assert caught.value.code == "CLIENT_CLOSED"

    async def test_orders_are_found_by_client_and_status(self, whmcs: WhmcsPort, whmcs_world: WhmcsWorld) -> None:
        await whmcs_world.add_client(4343)
        first = await whmcs.add_order(4343, INTERNET, notes=marker())
        second = await whmcs.add_order(4343, INTERNET, notes=marker())
        await whmcs.accept_order(second.order_id)
        assert [o.order_id for o in await whmcs.find_orders(4343)] == [first.order_id, second.order_id]
        assert [o.order_id for o in await whmcs.find_orders(4343, status="Pending")] == [first.order_id]

    # --- services ------------------------------------------------------------------------------
    async def test_sim_custom_fields_are_set_by_name(self, whmcs: WhmcsPort) -> None:
        added = await whmcs.add_order(SUZUKI, [OrderLine(SIM_5GB, "monthly")], notes=marker())
        (service_id,) = added.service_ids
        fields = {"SIM Number": "08012345678", "Serial Number": "AX1234567890123", "EID": ""}
        await whmcs.update_service_custom_fields(service_id, fields)
        await whmcs.update_service_custom_fields(service_id, {"OpportunityId": "0065g00000OPP0001"})
        service = next(s for s in await whmcs.list_services(SUZUKI) if s.service_id == service_id)
        assert service.custom_fields == fields | {"OpportunityId": "0065g00000OPP0001"}

    async def test_custom_field_errors_are_missing_mappings(self, whmcs: WhmcsPort) -> None:
        added = await whmcs.add_order(TANAKA, [OrderLine(GOLD, "monthly")], notes=marker())
        with pytest.raises(MappingMissing) as caught:
            await whmcs.update_service_custom_fields(added.service_ids[0], {"EID": "x"})  # not a SIM product
        assert caught.value.code == "WHMCS_CUSTOM_FIELD_MISSING"
        with pytest.raises(MappingMissing) as caught:
            await whmcs.update_service_custom_fields(123_456_789, {"EID": "x"})
        assert caught.value.code == "WHMCS_SERVICE_NOT_FOUND"
