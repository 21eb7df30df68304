"""The demo world shared by all sandboxes and by the fleet's ``id_mappings`` seed.

One consistent set of customers across systems: Salesforce Accounts, WHMCS clients (some with
pay methods, one without, one Salesforce account never mapped), the portal catalog (Product2 with
``WH_Product_ID__c`` / ``Billing_Cycle__c``, one portal pricebook) and the portal's
``id_mappings`` rows linking them. Ids have Salesforce's 18-character shape and key prefixes.
Data only; no behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PORTAL_PRICEBOOK_ID = "01s5g00000PORTALAA"
STANDARD_PRICEBOOK_ID = "01s5g00000STANDAAA"
INTEGRATION_USER_ID = "0055g00000FLEETAAA"


def sf_id(prefix: str, n: int) -> str:
    """A syntactically valid 18-character Salesforce id: 3-char key prefix + zero-padded counter."""
    body = f"{prefix}5g00000{n:06d}"
    return (body + "AAA")[:18]


# --- customers ------------------------------------------------------------------------------
CUSTOMERS: list[dict[str, Any]] = [
    {
        "key": "tanaka",
        "sf_account_id": sf_id("001", 1),
        "sf_account_no": "C-100001",
        "name": "Tanaka Taro",
        "email": "taro.tanaka@example.jp",
        "whmcs_client_id": 1001,
        "user_id": "7c0e6f3a-1f49-4b8e-9c1a-000000000001",
        "paymethods": [{"id": 11, "type": "CreditCard", "description": "Visa ending 4242", "card_last_four": "4242"}],
    },
    {
        "key": "suzuki",
        "sf_account_id": sf_id("001", 2),
        "sf_account_no": "C-100002",
        "name": "Suzuki Hanako",
        "email": "hanako.suzuki@example.jp",
        "whmcs_client_id": 1002,
        "user_id": "7c0e6f3a-1f49-4b8e-9c1a-000000000002",
        "paymethods": [{"id": 21, "type": "BankAccount", "description": "MUFG ordinary 1234567"}],
    },
    {
        "key": "sato",  # mapped, but has no payment method: fulfillment parks with PAYMENT_METHOD_MISSING
        "sf_account_id": sf_id("001", 3),
        "sf_account_no": "C-100003",
        "name": "Sato Kenji",
        "email": "kenji.sato@example.jp",
        "whmcs_client_id": 1003,
        "user_id": "7c0e6f3a-1f49-4b8e-9c1a-000000000003",
        "paymethods": [],
    },
    {
        "key": "yamada",  # Salesforce account with no WHMCS client: WHMCS_CLIENT_NOT_MAPPED
        "sf_account_id": sf_id("001", 4),
        "sf_account_no": "C-100004",
        "name": "Yamada Ichiro",
        "email": "ichiro.yamada@example.jp",
        "whmcs_client_id": None,
        "user_id": None,
        "paymethods": [],
    },
]


def id_mappings() -> list[dict[str, Any]]:
    """Rows for the portal's ``id_mappings`` table (user_id, whmcs_client_id, sf_account_id)."""
    return [
        {
            "user_id": c["user_id"],
            "whmcs_client_id": c["whmcs_client_id"],
            "sf_account_id": c["sf_account_id"],
        }
        for c in CUSTOMERS
        if c["whmcs_client_id"] is not None
    ]


# --- catalog (pids from the portal's Sep 2025 mapping reference) ----------------------------
def _product(
    n: int,
    name: str,
    sku: str,
    family: str,
    item_class: str,
    pid: int | None,
    cycle: str | None,
    price: int,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "Id": sf_id("01t", n),
        "Name": name,
        "StockKeepingUnit": sku,
        "SKU__c": sku,
        "Family": family,
        "Product2Categories1__c": family,
        "Item_Class__c": item_class,
        "Portal_Catalog__c": True,
        "Portal_Accessible__c": True,
        "IsActive": True,
        "WH_Product_ID__c": None if pid is None else str(pid),
        "WH_Product_Name__c": name if pid is not None else None,
        "Billing_Cycle__c": cycle,
        "UnitPrice": price,
        **extra,
    }


PRODUCTS: list[dict[str, Any]] = [
    _product(
        1,
        "Home 1G Silver",
        "INT-1G-SILVER",
        "Internet",
        "Service",
        181,
        "Monthly",
        4800,
        Internet_Plan_Tier__c="Silver",
    ),
    _product(
        2,
        "Home 1G Gold",
        "INT-1G-GOLD",
        "Internet",
        "Service",
        182,
        "Monthly",
        5500,
        Internet_Plan_Tier__c="Gold",
    ),
    _product(
        3,
        "Home 1G Platinum",
        "INT-1G-PLATINUM",
        "Internet",
        "Service",
        183,
        "Monthly",
        6500,
        Internet_Plan_Tier__c="Platinum",
    ),
    _product(4, "Installation (single)", "INT-INSTALL-SINGLE", "Internet", "Installation", 242, "Onetime", 22000),
    _product(5, "Weekend installation", "INT-INSTALL-WEEKEND", "Internet", "Add-on", 245, "Onetime", 3000),
    _product(6, "Hikari Denwa", "INT-HIKARI-DENWA", "Internet", "Add-on", 246, "Monthly", 450),
    _product(7, "Hikari Denwa installation", "INT-DENWA-INSTALL", "Internet", "Installation", 247, "Onetime", 1000),
    _product(
        8,
        "SIM Data+Voice 5GB",
        "SIM-DV-5GB",
        "SIM",
        "Service",
        301,
        "Monthly",
        1980,
        SIM_Data_Size__c="5GB",
        SIM_Plan_Type__c="DataVoice",
    ),
    _product(
        9,
        "SIM Data 20GB",
        "SIM-D-20GB",
        "SIM",
        "Service",
        302,
        "Monthly",
        2480,
        SIM_Data_Size__c="20GB",
        SIM_Plan_Type__c="Data",
    ),
    _product(10, "SIM activation fee", "SIM-ACTIVATION", "SIM", "Activation", 310, "Onetime", 3300),
    _product(11, "VPN Tokyo", "VPN-TOKYO", "VPN", "Service", 401, "Monthly", 980, VPN_Display_Order__c=1),
    _product(12, "VPN activation fee", "VPN-ACTIVATION", "VPN", "Activation", 410, "Onetime", 1100),
    # a product nobody mapped to WHMCS yet: orders containing it fail with PRODUCT_MAPPING_MISSING
    _product(13, "Legacy Fiber Plan", "INT-LEGACY", "Internet", "Service", None, None, 3900),
]


def product_by_sku(sku: str) -> dict[str, Any]:
    return next(p for p in PRODUCTS if p["StockKeepingUnit"] == sku)


def pricebook_entries() -> list[dict[str, Any]]:
    return [
        {
            "Id": sf_id("01u", i + 1),
            "Pricebook2Id": PORTAL_PRICEBOOK_ID,
            "Product2Id": p["Id"],
            "UnitPrice": p["UnitPrice"],
            "IsActive": True,
        }
        for i, p in enumerate(PRODUCTS)
    ]


# --- demo orders (lines by SKU) the `make run` scenario places ------------------------------
DEMO_ORDERS: list[dict[str, Any]] = [
    {
        "customer": "tanaka",
        "Type": "Internet",
        "lines": ["INT-1G-GOLD", "INT-INSTALL-SINGLE", "INT-HIKARI-DENWA"],
    },
    {
        "customer": "suzuki",
        "Type": "SIM",
        "SIM_Type__c": "Physical SIM",
        "lines": ["SIM-DV-5GB", "SIM-ACTIVATION"],
        "SIM_Voice_Mail__c": True,
    },
    {
        "customer": "tanaka",
        "Type": "SIM",
        "SIM_Type__c": "eSIM",
        "EID__c": "89049032000001000000000000000001",
        "lines": ["SIM-D-20GB", "SIM-ACTIVATION"],
    },
    # a scheduled activation: the demo sets Activation_Scheduled_At__c this many seconds after seeding
    {
        "customer": "suzuki",
        "Type": "VPN",
        "VPN_Region__c": "Tokyo",
        "lines": ["VPN-TOKYO", "VPN-ACTIVATION"],
        "scheduled_in_s": 8,
    },
    {"customer": "sato", "Type": "Internet", "lines": ["INT-1G-SILVER", "INT-INSTALL-SINGLE"]},
]


# --- SIM inventory (SIM_Inventory__c: our inference of the object, see sandbox.salesforce.store) --
#: cards of each type in the demo org: far more than a benchmark or chaos run assigns
SIM_INVENTORY_SIZE = 3000


def sim_card(sim_type: str, n: int, number: int) -> dict[str, Any]:
    """Card ``n`` (from 1) of a type, made from ``number``, a record number no earlier sandbox process
    handed out (``sandbox.salesforce.store.RECORD_NUMBERS``, which also gives the record its Id): the
    phone number and the serial come from it, so the cards of one sandbox run never collide with
    those an earlier run's orders took in the fleet's own, longer-lived Postgres
    (``sim_card_assignments``, ``sim_account``).
    Physical cards ``SIM-000001`` / ``080`` + 8 digits / serial ``AX`` + 13 digits (Freebit's
    productNumber shape), eSIM profiles ``ESIM-000001`` / ``070`` + 8 digits / no serial. The phone
    digits repeat only every 10^8 record numbers (100 s of the sandbox's microsecond numbering): two
    runs whose first cards are that far apart to within their few thousand numbers could share one."""
    physical = sim_type == "Physical"
    return {
        "Name": f"{'SIM' if physical else 'ESIM'}-{n:06d}",
        "Phone_Number__c": f"{'080' if physical else '070'}{number % 10**8:08d}",
        "Serial_Number__c": f"AX{number % 10**13:013d}" if physical else None,
        "SIM_Type__c": sim_type,
        "Status__c": "Available",
        "Assigned_Account__c": None,
        "Assigned_Order__c": None,
    }


def sim_inventory(numbers: Iterator[int], size: int = SIM_INVENTORY_SIZE) -> list[tuple[int, dict[str, Any]]]:
    """The demo org's SIM inventory: ``size`` Available physical cards, then ``size`` eSIM profiles,
    each with the record number it was made from (the sandbox's, for its Id)."""
    made = []
    for sim_type in ("Physical", "eSIM"):
        for n in range(1, size + 1):
            number = next(numbers)
            made.append((number, sim_card(sim_type, n, number)))
    return made
