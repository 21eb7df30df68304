"""The SIM inventory (``SIM_Inventory__c``): ``SalesforcePort.free_sim_cards``, the fake's arranging
helper, and the Salesforce sandbox's side of it (demo seed, SOQL, REST writes, control endpoint).

``SimInventoryContract`` is written once and run here against ``FakeSalesforce`` and in
``tests/integration/test_salesforce_sim_inventory.py`` against ``HttpSalesforce`` talking to the
sandbox over real HTTP. Each world provides an ``Inventory``: the port plus a lever that replaces
the whole inventory with given cards. The object is our inference of the portal's schema (see
``sandbox.salesforce.store``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.salesforce import (
    SIM_ASSIGNED,
    SIM_INVENTORY,
    FakeSalesforce,
    RecordUpdate,
    SalesforcePort,
)
from events.errors import InvalidPayload
from sandbox import demo_data
from sandbox.salesforce import SalesforceSandbox, soql
from sandbox.salesforce.store import Store

#: the query the brief (and ``HttpSalesforce.free_sim_cards``) sends, second page of physical cards
FREE_PHYSICAL_AFTER_10 = (
    "SELECT Id, Name, Phone_Number__c, Serial_Number__c, SIM_Type__c, Status__c, Assigned_Order__c, "
    "Assigned_Account__c FROM SIM_Inventory__c WHERE Status__c = 'Available' AND Assigned_Order__c = null "
    "AND SIM_Type__c = 'Physical' AND Name > 'SIM-000010' ORDER BY Name LIMIT 50"
)
ORDER_ID = "8015g00000000001AA"
ACCOUNT_ID = demo_data.CUSTOMERS[0]["sf_account_id"]


def card(name: str, sim_type: str = "Physical", status: str = "Available", order: str | None = None,
         number: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "Name": name,
        "Phone_Number__c": f"{'080' if sim_type == 'Physical' else '070'}{number:08d}",
        "Serial_Number__c": f"AX{number:013d}" if sim_type == "Physical" else None,
        "SIM_Type__c": sim_type,
        "Status__c": status,
        "Assigned_Order__c": order,
        "Assigned_Account__c": ACCOUNT_ID if order else None,
    }


def taken(card_id: str) -> RecordUpdate:
    """The write that takes a card for an order."""
    fields = {"Status__c": SIM_ASSIGNED, "Assigned_Order__c": ORDER_ID, "Assigned_Account__c": ACCOUNT_ID}
    return RecordUpdate(SIM_INVENTORY, card_id, fields)


class Inventory(Protocol):
    port: SalesforcePort

    async def replace(self, cards: list[dict[str, Any]]) -> list[str]:
        """Remove every card, then add these (fields by API name); returns their ids in order."""
        ...


class SimInventoryContract:
    """Subclasses provide the ``inventory`` fixture."""

    @pytest.fixture
    def inventory(self) -> Inventory:  # pragma: no cover - overridden
        raise NotImplementedError

    async def test_free_cards_are_the_available_unassigned_cards_of_the_type_in_name_order(
        self, inventory: Inventory
    ) -> None:
        ids = await inventory.replace([
            card("SIM-000003", number=3),
            card("SIM-000001", number=1),
            card("SIM-000002", status="Assigned", order=ORDER_ID, number=2),
            card("SIM-000004", order=ORDER_ID, number=4),  # assigned, status not yet updated: not free
            card("SIM-000005", status="Assigned", number=5),
            card("ESIM-000001", sim_type="eSIM", number=6),
        ])  # fmt: skip

        physical = await inventory.port.free_sim_cards("Physical")
        esim = await inventory.port.free_sim_cards("eSIM")

        assert [(c.id, c.name) for c in physical] == [(ids[1], "SIM-000001"), (ids[0], "SIM-000003")]
        first = physical[0]
        assert (first.phone_number, first.serial_number) == ("08000000001", "AX0000000000001")
        assert first.sim_type == "Physical"
        assert (first.status, first.assigned_order_id, first.assigned_account_id) == ("Available", None, None)
        assert [(c.name, c.phone_number, c.serial_number) for c in esim] == [("ESIM-000001", "07000000006", None)]

    async def test_after_pages_by_name_and_limit_caps_the_page(self, inventory: Inventory) -> None:
        await inventory.replace([card(f"SIM-{n:06d}", number=n) for n in range(1, 8)])

        first = await inventory.port.free_sim_cards("Physical", limit=3)
        second = await inventory.port.free_sim_cards("Physical", after=first[-1].name, limit=3)
        last = await inventory.port.free_sim_cards("Physical", after="SIM-000006", limit=3)
        beyond = await inventory.port.free_sim_cards("Physical", after="SIM-000007")

        assert [c.name for c in first] == ["SIM-000001", "SIM-000002", "SIM-000003"]
        assert [c.name for c in second] == ["SIM-000004", "SIM-000005", "SIM-000006"]
        assert [c.name for c in last] == ["SIM-000007"]
        assert beyond == []

    async def test_a_card_taken_through_a_collection_update_is_no_longer_free(self, inventory: Inventory) -> None:
        ids = await inventory.replace([card(f"SIM-{n:06d}", number=n) for n in range(1, 4)])

        (result,) = await inventory.port.update_records([taken(ids[0])])
        free = await inventory.port.free_sim_cards("Physical")

        assert result.success
        assert [c.id for c in free] == ids[1:]

    async def test_a_card_taken_through_a_single_record_update_is_no_longer_free(self, inventory: Inventory) -> None:
        ids = await inventory.replace([card("SIM-000001"), card("SIM-000002", number=2)])

        await inventory.port.update_record(SIM_INVENTORY, ids[1], {"Assigned_Order__c": ORDER_ID})

        assert [c.id for c in await inventory.port.free_sim_cards("Physical")] == [ids[0]]

    async def test_an_empty_inventory_has_no_free_cards(self, inventory: Inventory) -> None:
        await inventory.replace([])

        assert await inventory.port.free_sim_cards("Physical") == []
        assert await inventory.port.free_sim_cards("eSIM", after="ESIM-000001") == []

    async def test_after_may_hold_quotes_and_backslashes(self, inventory: Inventory) -> None:
        await inventory.replace([card("SIM-'a", number=1), card("SIM-\\b", number=2), card("SIM-c", number=3)])

        after_quote = await inventory.port.free_sim_cards("Physical", after="SIM-'a")
        after_backslash = await inventory.port.free_sim_cards("Physical", after="SIM-\\b")

        assert [c.name for c in after_quote] == ["SIM-\\b", "SIM-c"]
        assert [c.name for c in after_backslash] == ["SIM-c"]

    async def test_an_unknown_sim_type_is_refused_before_any_call(self, inventory: Inventory) -> None:
        with pytest.raises(InvalidPayload) as refused:
            await inventory.port.free_sim_cards("Physical SIM")  # the Order's SIM_Type__c spelling
        with pytest.raises(InvalidPayload):
            await inventory.port.free_sim_cards("Physical' OR Name != '")
        with pytest.raises(ValueError):
            await inventory.port.free_sim_cards("eSIM", limit=0)

        assert refused.value.code == "INVALID_SIM_TYPE"


# --- the fake world ---------------------------------------------------------------------------
class FakeInventory:
    def __init__(self) -> None:
        self.fake = FakeSalesforce()
        self.port: SalesforcePort = self.fake
        self._ids = iter(range(1, 1_000_000))

    async def replace(self, cards: list[dict[str, Any]]) -> list[str]:
        self.fake.records[SIM_INVENTORY] = {}
        return [self.fake.add_record(SIM_INVENTORY, {"Id": demo_data.sf_id("a0S", next(self._ids)), **c})["Id"]
                for c in cards]  # fmt: skip


class TestFakeSimInventory(SimInventoryContract):
    @pytest.fixture
    def inventory(self) -> Inventory:
        return FakeInventory()


async def test_the_fake_arranges_cards_shaped_like_the_demo_inventory() -> None:
    fake = FakeSalesforce()

    physical = fake.add_sim_cards(3)
    esim = fake.add_sim_cards(2, sim_type="eSIM", start=10)

    assert [c["Name"] for c in physical] == ["SIM-000001", "SIM-000002", "SIM-000003"]
    assert (physical[0]["Phone_Number__c"], physical[0]["Serial_Number__c"]) == ("08000000001", "AX0000000000001")
    assert [(c["Name"], c["Phone_Number__c"], c["Serial_Number__c"]) for c in esim] == [
        ("ESIM-000010", "07000000010", None),
        ("ESIM-000011", "07000000011", None),
    ]
    assert len({c["Id"] for c in physical + esim}) == 5
    assert all(len(c["Id"]) == 18 for c in physical + esim)
    assert [c.name for c in await fake.free_sim_cards("eSIM")] == ["ESIM-000010", "ESIM-000011"]


async def test_fake_updates_of_arranged_cards_change_what_is_free() -> None:
    fake = FakeSalesforce()
    first, second, third = fake.add_sim_cards(3)

    await fake.update_record(SIM_INVENTORY, first["Id"], {"Status__c": SIM_ASSIGNED, "Assigned_Order__c": ORDER_ID})
    await fake.update_records([taken(third["Id"])])

    assert [c.id for c in await fake.free_sim_cards("Physical")] == [second["Id"]]
    assert fake.updates[-1] == taken(third["Id"])


# --- the sandbox org --------------------------------------------------------------------------
@pytest.fixture
def store() -> Store:
    seeded = Store()
    seeded.seed_demo(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    return seeded


def query(store: Store, text: str) -> list[dict[str, Any]]:
    return soql.run(store, soql.parse(text), api_version="60.0")


def test_the_demo_org_holds_3000_physical_cards_and_3000_esim_profiles(store: Store) -> None:
    cards = list(store.rows(SIM_INVENTORY))
    physical = [c for c in cards if c["SIM_Type__c"] == "Physical"]
    esim = [c for c in cards if c["SIM_Type__c"] == "eSIM"]

    assert (len(physical), len(esim)) == (3000, 3000)
    assert {c["Status__c"] for c in cards} == {"Available"}
    assert all(c["Assigned_Order__c"] is None and c["Assigned_Account__c"] is None for c in cards)
    assert (physical[0]["Name"], esim[-1]["Name"], esim[-1]["Serial_Number__c"]) == ("SIM-000001", "ESIM-003000", None)
    assert all(c["Phone_Number__c"][:3] == "080" for c in physical) and all(
        c["Phone_Number__c"][:3] == "070" for c in esim
    )
    assert len({c["Phone_Number__c"] for c in cards}) == 6000 and len({c["Id"] for c in cards}) == 6000
    assert all(len(c["Phone_Number__c"]) == 11 for c in cards)
    assert all(len(c["Serial_Number__c"]) == 15 and c["Serial_Number__c"][:2] == "AX" for c in physical)
    assert all(len(c["Id"]) == 18 and c["Id"].startswith("a0S") for c in cards)


def test_each_sandbox_run_seeds_cards_no_earlier_run_handed_out(store: Store) -> None:
    """Ids, phone numbers and serials come from the process-wide record numbers, so an order of an
    earlier run (its card taken in the fleet's Postgres, which outlives the sandbox) never holds a
    card or a number of this run's inventory."""
    later = Store()
    later.seed_demo(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    for field in ("Id", "Phone_Number__c", "Serial_Number__c"):
        before = {c[field] for c in store.rows(SIM_INVENTORY) if c[field]}
        assert not before & {c[field] for c in later.rows(SIM_INVENTORY) if c[field]}, field


def test_soql_finds_free_cards_of_a_type_by_name_after_a_name(store: Store) -> None:
    rows = query(store, FREE_PHYSICAL_AFTER_10)

    assert [r["Name"] for r in rows] == [f"SIM-{n:06d}" for n in range(11, 61)]
    assert list(rows[0]) == ["attributes", "Id", "Name", "Phone_Number__c", "Serial_Number__c", "SIM_Type__c",
                             "Status__c", "Assigned_Order__c", "Assigned_Account__c"]  # fmt: skip
    assert rows[0]["attributes"]["type"] == SIM_INVENTORY


def test_soql_keyset_paging_walks_the_whole_inventory_once(store: Store) -> None:
    names: list[str] = []
    after = ""
    while True:
        page = query(store, "SELECT Name FROM SIM_Inventory__c WHERE SIM_Type__c = 'eSIM' AND "
                            f"Name > '{after}' ORDER BY Name LIMIT 1000")  # fmt: skip
        if not page:
            break
        names.extend(r["Name"] for r in page)
        after = page[-1]["Name"]

    assert names == [f"ESIM-{n:06d}" for n in range(1, 3001)]


def test_soql_null_and_text_comparisons(store: Store) -> None:
    first = next(c for c in store.rows(SIM_INVENTORY) if c["Name"] == "SIM-000001")
    first.update(Assigned_Order__c=ORDER_ID)

    unassigned = query(store, "SELECT Id FROM SIM_Inventory__c WHERE Assigned_Order__c = null")
    assigned = query(store, "SELECT Name FROM SIM_Inventory__c WHERE Assigned_Order__c != null")
    esim_first = query(store, "SELECT Name FROM SIM_Inventory__c WHERE Name >= 'ESIM-002999' AND Name < 'F'")

    assert len(unassigned) == 5999 and [r["Name"] for r in assigned] == ["SIM-000001"]
    assert [r["Name"] for r in esim_first] == ["ESIM-002999", "ESIM-003000"]


def test_soql_string_literals_unescape_quotes_and_backslashes(store: Store) -> None:
    (condition,) = soql.parse(r"SELECT Id FROM SIM_Inventory__c WHERE Name = 'it\'s \\ here\n'").conditions
    assert condition.values == ("it's \\ here\n",)
    with pytest.raises(soql.SoqlError) as bad:
        soql.parse(r"SELECT Id FROM SIM_Inventory__c WHERE Name = '\q'")
    assert bad.value.entry["errorCode"] == "MALFORMED_QUERY"


# --- the sandbox over HTTP (in-process server) ------------------------------------------------
class SandboxClient:
    def __init__(self, sandbox: SalesforceSandbox, client: TestClient) -> None:  # type: ignore[type-arg]
        self.sandbox = sandbox
        self.client = client
        self.headers: dict[str, str] = {}

    async def login(self) -> None:
        form = {"grant_type": "password", "client_id": "fleet-connected-app", "client_secret": "sandbox-client-secret",
                "username": "integration@fleet.example", "password": "sandbox-password"}  # fmt: skip
        async with self.client.post("/services/oauth2/token", data=form) as response:
            assert response.status == 200
            self.headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}

    async def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        headers = self.headers if path.startswith("/services/") else {}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            assert response.status == status, await response.text()
            return await response.json() if response.content_type == "application/json" else None

    async def soql(self, text: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", "/services/data/v60.0/query", params={"q": text})
        return list(answer["records"])


@pytest.fixture
async def sandbox_client() -> AsyncIterator[SandboxClient]:
    sandbox = SalesforceSandbox()
    async with TestClient(TestServer(sandbox.app())) as client:
        world = SandboxClient(sandbox, client)
        await world.login()
        yield world


async def test_a_card_updated_through_sobject_collections_drops_out_of_the_query(
    sandbox_client: SandboxClient,
) -> None:
    first, second = await sandbox_client.soql(FREE_PHYSICAL_AFTER_10.replace("LIMIT 50", "LIMIT 2"))
    body = {"allOrNone": True, "records": [
        {"attributes": {"type": SIM_INVENTORY}, "id": first["Id"], "Status__c": "Assigned",
         "Assigned_Order__c": ORDER_ID, "Assigned_Account__c": ACCOUNT_ID},
    ]}  # fmt: skip
    events_before = sandbox_client.sandbox.bus.last_replay_id

    results = await sandbox_client.call("PATCH", "/services/data/v60.0/composite/sobjects", json=body)
    after = await sandbox_client.soql(FREE_PHYSICAL_AFTER_10)
    record = await sandbox_client.call("GET", f"/services/data/v60.0/sobjects/{SIM_INVENTORY}/{first['Id']}")

    assert results == [{"id": first["Id"], "success": True, "errors": []}]
    assert after[0]["Id"] == second["Id"] and first["Id"] not in {r["Id"] for r in after}
    assert (record["Status__c"], record["Assigned_Order__c"], record["Assigned_Account__c"]) == (
        "Assigned", ORDER_ID, ACCOUNT_ID)  # fmt: skip
    assert sandbox_client.sandbox.bus.last_replay_id == events_before  # no CDC channel: no change event


async def test_a_card_patched_as_one_record_drops_out_of_the_query(sandbox_client: SandboxClient) -> None:
    (first,) = await sandbox_client.soql(FREE_PHYSICAL_AFTER_10.replace("LIMIT 50", "LIMIT 1"))

    await sandbox_client.call("PATCH", f"/services/data/v60.0/sobjects/{SIM_INVENTORY}/{first['Id']}", status=204,
                              json={"Status__c": "Assigned", "Assigned_Order__c": ORDER_ID})  # fmt: skip

    assert (await sandbox_client.soql(FREE_PHYSICAL_AFTER_10))[0]["Name"] == "SIM-000012"


async def test_the_control_endpoint_adds_lists_and_clears_cards(sandbox_client: SandboxClient) -> None:
    cards = [card("SIM-900002", number=2), {"Name": "SIM-900001", "Phone_Number__c": "08090000001"}]
    added = await sandbox_client.call(
        "POST", "/_sandbox/sim-inventory", status=201, json={"clear": True, "cards": cards}
    )
    listed = await sandbox_client.call("GET", "/_sandbox/sim-inventory")
    free = await sandbox_client.soql(FREE_PHYSICAL_AFTER_10)
    state = sandbox_client.sandbox.state()["sim_inventory"]
    cleared = await sandbox_client.call("DELETE", "/_sandbox/sim-inventory")

    assert added["removed"] == 6000 and [c["Name"] for c in added["cards"]] == ["SIM-900002", "SIM-900001"]
    assert [c["Name"] for c in listed] == ["SIM-900001", "SIM-900002"]
    defaulted = listed[0]
    assert (defaulted["Status__c"], defaulted["SIM_Type__c"], defaulted["Serial_Number__c"]) == (
        "Available", "Physical", None)  # fmt: skip
    assert defaulted["Id"].startswith("a0S") and len(defaulted["Id"]) == 18
    assert [r["Name"] for r in free] == ["SIM-900001", "SIM-900002"]
    assert state == {"Physical": {"Available": 2}}
    assert cleared == {"removed": 2}
    assert await sandbox_client.soql(FREE_PHYSICAL_AFTER_10) == []
    assert await sandbox_client.call("GET", "/_sandbox/sim-inventory") == []


async def test_the_control_endpoint_filters_the_listing_and_refuses_unknown_fields(
    sandbox_client: SandboxClient,
) -> None:
    await sandbox_client.call("POST", "/_sandbox/sim-inventory", status=201, json={"cards": [
        card("SIM-900001", status="Assigned", order=ORDER_ID)]})  # fmt: skip

    assigned = await sandbox_client.call("GET", "/_sandbox/sim-inventory", params={"status": "Assigned"})
    esim = await sandbox_client.call("GET", "/_sandbox/sim-inventory", params={"sim_type": "eSIM"})
    refused = await sandbox_client.call("POST", "/_sandbox/sim-inventory", status=400,
                                        json={"cards": [{"Name": "SIM-1", "Colour__c": "red"}]})  # fmt: skip

    assert [c["Name"] for c in assigned] == ["SIM-900001"] and assigned[0]["Assigned_Order__c"] == ORDER_ID
    assert len(esim) == 3000
    assert refused["errorCode"] == "INVALID_FIELD"


async def test_a_reset_brings_the_demo_inventory_back(sandbox_client: SandboxClient) -> None:
    await sandbox_client.call("DELETE", "/_sandbox/sim-inventory")

    await sandbox_client.call("POST", "/_sandbox/reset")

    assert sandbox_client.sandbox.state()["sim_inventory"] == {"Physical": {"Available": 3000},
                                                               "eSIM": {"Available": 3000}}  # fmt: skip
