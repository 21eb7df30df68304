"""``HttpSalesforce.free_sim_cards`` against the Salesforce sandbox over real HTTP: the shared SIM
inventory contract (``tests/unit/test_salesforce_sim_inventory.py``), then the demo inventory the
sandbox starts with and the one SOQL request a page costs.

The sandbox runs in-process on an ephemeral port (``SalesforceSandbox.start``), as in
``test_salesforce_contract.py``; each contract test replaces the whole inventory through
``POST /_sandbox/sim-inventory`` (``{"clear": true, "cards": [...]}``), so tests share one sandbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.salesforce import SIM_INVENTORY, HttpSalesforce, PasswordAuth, RecordUpdate
from sandbox.salesforce import SalesforceSandbox
from tests.integration.test_salesforce_contract import SandboxUpstream
from tests.unit.test_salesforce_sim_inventory import ORDER_ID, Inventory, SimInventoryContract, taken

pytestmark = pytest.mark.integration

CALL_OPTIONS_CLIENT = "fleet-sim-inventory-test"


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    world = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=2.0)) as http:
        yield http


@pytest.fixture
def salesforce(client: httpx.AsyncClient, sandbox: SalesforceSandbox) -> HttpSalesforce:
    auth = PasswordAuth(client, sandbox.url, "fleet-connected-app", "sandbox-client-secret",
                        "integration@fleet.example", "sandbox-password")  # fmt: skip
    return HttpSalesforce(client, auth, "60.0", CALL_OPTIONS_CLIENT)


class SandboxInventory(SandboxUpstream):
    """The contract's ``Inventory`` over the sandbox's control routes (``control`` from the upstream contract)."""

    async def replace(self, cards: list[dict[str, Any]]) -> list[str]:
        added = await self.control("POST", "/_sandbox/sim-inventory", json={"clear": True, "cards": cards})
        return [str(c["Id"]) for c in added["cards"]]

    async def cards(self, **filters: str) -> list[dict[str, Any]]:
        return list(await self.control("GET", "/_sandbox/sim-inventory", params=filters))

    async def queries(self) -> list[dict[str, Any]]:
        return list(await self.control("GET", "/_sandbox/requests", params={"endpoint": "query"}))


@pytest.fixture
def world(salesforce: HttpSalesforce, client: httpx.AsyncClient, sandbox: SalesforceSandbox) -> SandboxInventory:
    return SandboxInventory(salesforce, client, sandbox.url)


class TestHttpSimInventory(SimInventoryContract):
    """The shared contract, with the sandbox's inventory behind the port."""

    @pytest.fixture
    def inventory(self, world: SandboxInventory) -> Inventory:
        return world


# --- the demo inventory -----------------------------------------------------------------------
async def test_the_demo_inventory_pages_by_name_and_a_taken_card_drops_out(world: SandboxInventory) -> None:
    await world.control("POST", "/_sandbox/reset")  # the demo seed: 3,000 physical cards, 3,000 eSIM profiles

    first = await world.port.free_sim_cards("Physical", limit=50)
    second = await world.port.free_sim_cards("Physical", after=first[-1].name, limit=50)
    esim = await world.port.free_sim_cards("eSIM", limit=2)
    (result,) = await world.port.update_records([taken(first[0].id)])
    again = await world.port.free_sim_cards("Physical", limit=50)

    assert [c.name for c in first] == [f"SIM-{n:06d}" for n in range(1, 51)]
    assert [c.name for c in second] == [f"SIM-{n:06d}" for n in range(51, 101)]
    assert first[0].phone_number.startswith("080") and len(first[0].serial_number or "") == 15
    assert [(c.name, c.phone_number[:3], c.serial_number) for c in esim] == [
        ("ESIM-000001", "070", None),
        ("ESIM-000002", "070", None),
    ]
    assert result.success
    assert [c.name for c in again] == [f"SIM-{n:06d}" for n in range(2, 52)]
    (assigned,) = await world.cards(status="Assigned")
    assert (assigned["Name"], assigned["Assigned_Order__c"]) == ("SIM-000001", ORDER_ID)


async def test_a_page_is_one_soql_request_with_escaped_literals(world: SandboxInventory) -> None:
    await world.replace([{"Name": "SIM-'1", "Phone_Number__c": "08099999991"}])
    before = len(await world.queries())

    assert await world.port.free_sim_cards("Physical", after="SIM-'0") != []

    (request,) = (await world.queries())[before:]
    assert request["status"] == 200
    assert request["query"]["q"].endswith(
        "WHERE Status__c = 'Available' AND Assigned_Order__c = null AND SIM_Type__c = 'Physical' "
        "AND Name > 'SIM-\\'0' ORDER BY Name LIMIT 50"
    )
    assert f"FROM {SIM_INVENTORY} " in request["query"]["q"]


async def test_taking_several_cards_in_one_collection_request(world: SandboxInventory) -> None:
    ids = await world.replace([{"Name": f"SIM-{n:06d}", "Phone_Number__c": f"080{n:08d}"} for n in range(1, 6)])

    results = await world.port.update_records(
        [
            RecordUpdate(SIM_INVENTORY, card_id, {"Status__c": "Assigned", "Assigned_Order__c": ORDER_ID})
            for card_id in ids[:3]
        ],  # fmt: skip
        all_or_none=True,
    )

    assert all(r.success for r in results)
    assert [c.id for c in await world.port.free_sim_cards("Physical")] == ids[3:]
