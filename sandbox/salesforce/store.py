"""The sandbox org's records: the sObject schema the fleet touches, ids, field checks, snapshots.

``SIM_Inventory__c`` (the physical SIM cards and eSIM profiles the portal assigns to SIM orders) is
our inference, not a confirmed schema: Salesforce is known to hold SIM inventory with
``Assigned_Account__c``, ``Assigned_Order__c`` and ``SIM_Type__c``, but the object's API name, its
``Status__c`` picklist (``Available`` / ``Assigned`` here) and the ``Phone_Number__c`` /
``Serial_Number__c`` field names are our choices. It has no CDC channel (writes emit no events).

Pure data. It knows which fields each object has, which are read-only, how ids look (key prefix,
pod, a base-62 record number that no earlier sandbox process handed out, and the case-safe
suffix: 18 characters) and how Salesforce formats datetimes; it does not know HTTP or change
events (``org.py`` pairs every write with its event).
"""

from __future__ import annotations

import copy
import itertools
import string
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sandbox import demo_data

KEY_PREFIX = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Product2": "01t",
    "Pricebook2": "01s",
    "PricebookEntry": "01u",
    "Opportunity": "006",
    "Order": "801",
    "OrderItem": "802",
    "SIM_Inventory__c": "a0S",  # a custom object: its key prefix is org-specific; a0S is our pick
}
SYSTEM_FIELDS = ("Id", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp")
#: fields no API write may set (auto-numbers, roll-ups and audit fields)
READ_ONLY = frozenset({*SYSTEM_FIELDS, "IsDeleted", "OrderNumber", "TotalAmount", "TotalPrice", "OrderItemNumber"})
_BILLING = ("BillingStreet", "BillingCity", "BillingState", "BillingPostalCode", "BillingCountry")

FIELDS: dict[str, tuple[str, ...]] = {
    "Account": ("Name", "SF_Account_No__c", "WH_Account__c", "PersonEmail", "Phone", *_BILLING),
    "Contact": ("AccountId", "FirstName", "LastName", "Email"),
    "User": ("Name", "Username"),
    "Product2": (
        "Name", "Description", "StockKeepingUnit", "SKU__c", "Family", "Product2Categories1__c",
        "Item_Class__c", "Portal_Catalog__c", "Portal_Accessible__c", "IsActive", "WH_Product_ID__c",
        "WH_Product_Name__c", "Billing_Cycle__c", "Internet_Plan_Tier__c", "Internet_Offering_Type__c",
        "SIM_Data_Size__c", "SIM_Plan_Type__c", "SIM_Has_Family_Discount__c", "VPN_Display_Order__c",
    ),
    "Pricebook2": ("Name", "IsActive", "IsStandard"),
    "PricebookEntry": ("Pricebook2Id", "Product2Id", "UnitPrice", "IsActive", "UseStandardPrice"),
    "Opportunity": ("Name", "AccountId", "StageName", "CloseDate", "WHMCS_Service_ID__c", "WH_Registeration__c"),
    "Order": (
        "AccountId", "Name", "Description", "EffectiveDate", "Status", "Type", "Pricebook2Id",
        "OrderNumber", "TotalAmount", "Order_Type__c", "Activation_Type__c", "Activation_Scheduled_At__c",
        "Activation_Status__c", "Activation_Error_Code__c", "Activation_Error_Message__c",
        "WHMCS_Order_ID__c", "Internet_Plan_Tier__c", "Installation_Type__c", "Weekend_Install__c",
        "Access_Mode__c", "Hikari_Denwa__c", "VPN_Region__c", "SIM_Type__c", "EID__c",
        "SIM_Voice_Mail__c", "SIM_Call_Waiting__c", "Address_Changed__c", "OpportunityId",
        "MNP_Reservation_Number__c", "MNP_Expiry_Date__c", "MNP_Phone_Number__c", *_BILLING,
    ),
    "OrderItem": (
        "OrderId", "OrderItemNumber", "PricebookEntryId", "Product2Id", "Quantity", "UnitPrice",
        "TotalPrice", "Description", "WHMCS_Service_ID__c", "Billing_Cycle__c",
    ),
    "SIM_Inventory__c": (
        "Name", "Phone_Number__c", "Serial_Number__c", "SIM_Type__c", "Status__c", "Assigned_Account__c",
        "Assigned_Order__c",
    ),
}  # fmt: skip


class FieldProblem(Exception):
    """A write names a field the object lacks or may not set; carries Salesforce's error entry."""

    def __init__(self, code: str, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.code = code
        self.fields = fields
        self.entry: dict[str, Any] = {"errorCode": code, "message": message, "fields": fields}


# --- record ids ---------------------------------------------------------------------------------
#: Salesforce's base-62 digits in its own order (0-9, A-Z, a-z): numbers of one width sort as strings
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
#: between the key prefix and the record number: the pod ("5g", as in the demo ids) and a reserved "0"
POD = "5g0"
RECORD_DIGITS = 9  # 3 (key prefix) + 3 (pod) + 9 = the 15-character id
_SUFFIX = string.ascii_uppercase + "012345"


def record_number_base(now_s: float) -> int:
    """Where a sandbox process starts numbering records: the wall clock in microseconds.

    Salesforce never hands out an id twice in an org; a sandbox process keeps its org in memory,
    so it starts above every number an earlier process can have handed out: one that started a
    second earlier would have needed a million records in that second. Nine base-62 digits hold
    this until the year 2398."""
    return int(now_s * 1_000_000)


def case_safe_suffix(id15: str) -> str:
    """The three characters that make an 18-character id: one per 5-character chunk, encoding
    which of its characters are upper-case letters (so the id survives case-insensitive systems)."""
    chunks = (id15[n : n + 5] for n in (0, 5, 10))
    return "".join(_SUFFIX[sum(1 << i for i, c in enumerate(chunk) if c in string.ascii_uppercase)] for chunk in chunks)


def sf_record_id(prefix: str, number: int) -> str:
    """The 18-character id of record ``number`` of the object with key prefix ``prefix``."""
    digits = ""
    for _ in range(RECORD_DIGITS):
        number, digit = divmod(number, 62)
        digits = BASE62[digit] + digits
    if number:
        raise OverflowError("record number does not fit nine base-62 digits")
    id15 = prefix + POD + digits
    return id15 + case_safe_suffix(id15)


#: one numbering for every record this process creates, in every org (a reset or a second sandbox
#: in the same process continues it), starting at the wall clock when the process imported this
RECORD_NUMBERS: Iterator[int] = itertools.count(record_number_base(time.time()))


def sf_datetime(moment: datetime) -> str:
    """Salesforce's REST datetime format: ``2026-01-01T09:30:00.000+0000``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_sf_datetime(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def all_fields(sobject: str) -> tuple[str, ...]:
    return SYSTEM_FIELDS + FIELDS[sobject]


class Store:
    """Records by type and id, plus the auto-number counter. New records are numbered from the
    process-wide ``RECORD_NUMBERS``; records seeded with an ``Id`` (the demo world) keep it."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in FIELDS}
        self._order_numbers = itertools.count(100)

    # --- reading ------------------------------------------------------------------------------
    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        return self.records.get(sobject, {}).get(record_id)

    def rows(self, sobject: str) -> Iterable[dict[str, Any]]:
        return self.records[sobject].values()

    # --- checks -------------------------------------------------------------------------------
    @staticmethod
    def check_writable(sobject: str, fields: Iterable[str]) -> None:
        """Raise ``FieldProblem`` as Salesforce does for an unknown or read-only field."""
        known = set(all_fields(sobject))
        for name in fields:
            if name not in known:
                raise FieldProblem("INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}", [name])
        locked = sorted(set(fields) & READ_ONLY)
        if locked:
            message = (
                f"Unable to create/update fields: {', '.join(locked)}. Please check the security settings "
                "of this field and verify that it is read/write for your profile or permission set."
            )
            raise FieldProblem("INVALID_FIELD_FOR_INSERT_UPDATE", message, locked)

    # --- writing (callers check fields first) -------------------------------------------------
    def insert(self, sobject: str, fields: dict[str, Any], *, user: str, now: datetime) -> dict[str, Any]:
        new_id = fields.get("Id") or sf_record_id(KEY_PREFIX[sobject], next(RECORD_NUMBERS))
        stamp = sf_datetime(now)
        record: dict[str, Any] = dict.fromkeys(FIELDS[sobject])
        record.update({k: v for k, v in fields.items() if k in FIELDS[sobject]})
        record.update(Id=new_id, CreatedDate=stamp, CreatedById=user, LastModifiedDate=stamp,
                      LastModifiedById=user, SystemModstamp=stamp)  # fmt: skip
        if sobject == "Order" and record["OrderNumber"] is None:
            record["OrderNumber"] = f"{next(self._order_numbers):08d}"
        self.records[sobject][new_id] = record
        return record

    def apply(
        self, sobject: str, record_id: str, fields: dict[str, Any], *, user: str, now: datetime
    ) -> dict[str, Any]:
        """Write ``fields`` and the audit fields; return the fields whose value changed (incl. LastModifiedDate)."""
        record = self.records[sobject][record_id]
        changed = {name: value for name, value in fields.items() if record.get(name) != value}
        record.update(fields)
        stamp = sf_datetime(now)
        record.update(LastModifiedDate=stamp, LastModifiedById=user, SystemModstamp=stamp)
        changed["LastModifiedDate"] = stamp
        return changed

    def snapshot(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        record = self.get(sobject, record_id)
        return copy.deepcopy(record) if record is not None else None

    def restore(self, sobject: str, record_id: str, snapshot: dict[str, Any] | None) -> None:
        if snapshot is None:
            self.records[sobject].pop(record_id, None)
        else:
            self.records[sobject][record_id] = snapshot

    def order_total(self, order_id: str) -> float:
        items = (i for i in self.records["OrderItem"].values() if i["OrderId"] == order_id)
        return float(sum((i["Quantity"] or 0) * (i["UnitPrice"] or 0) for i in items))

    # --- the demo world -----------------------------------------------------------------------
    def seed_demo(self, now: datetime) -> None:
        user = demo_data.INTEGRATION_USER_ID
        self.insert("User", {"Id": user, "Name": "Fleet Integration", "Username": "integration@fleet.example"},
                    user=user, now=now)  # fmt: skip
        for customer in demo_data.CUSTOMERS:
            self.insert("Account", _account_fields(customer), user=user, now=now)
        for pricebook_id, name, standard in (
            (demo_data.STANDARD_PRICEBOOK_ID, "Standard Price Book", True),
            (demo_data.PORTAL_PRICEBOOK_ID, "Portal Pricebook", False),
        ):
            self.insert("Pricebook2", {"Id": pricebook_id, "Name": name, "IsActive": True, "IsStandard": standard},
                        user=user, now=now)  # fmt: skip
        for product in demo_data.PRODUCTS:
            self.insert("Product2", product, user=user, now=now)
        for entry in demo_data.pricebook_entries():
            self.insert("PricebookEntry", entry, user=user, now=now)
        cards = demo_data.sim_inventory(RECORD_NUMBERS)
        self.seed_sim_inventory([{**card, "Id": sf_record_id(KEY_PREFIX["SIM_Inventory__c"], n)} for n, card in cards],
                                user=user, now=now)  # fmt: skip

    def seed_sim_inventory(self, cards: Iterable[dict[str, Any]], *, user: str, now: datetime) -> None:
        """Add inventory cards directly (thousands at start-up: one shared audit stamp, no change
        events, since ``SIM_Inventory__c`` has no CDC channel). Cards need their ``Id``."""
        stamp = sf_datetime(now)
        audit = {"CreatedDate": stamp, "CreatedById": user, "LastModifiedDate": stamp, "LastModifiedById": user,
                 "SystemModstamp": stamp}  # fmt: skip
        blank = dict.fromkeys(FIELDS["SIM_Inventory__c"])
        rows = self.records["SIM_Inventory__c"]
        for card in cards:
            rows[card["Id"]] = {**blank, **card, **audit}


def _account_fields(customer: dict[str, Any]) -> dict[str, Any]:
    whmcs = customer["whmcs_client_id"]
    return {
        "Id": customer["sf_account_id"],
        "Name": customer["name"],
        "SF_Account_No__c": customer["sf_account_no"],
        "WH_Account__c": f"#{whmcs} - {customer['name']}" if whmcs else None,
        "PersonEmail": customer["email"],
        "BillingStreet": "1-2-3 Shibuya",
        "BillingCity": "Shibuya-ku",
        "BillingState": "Tokyo",
        "BillingPostalCode": "150-0002",
        "BillingCountry": "Japan",
    }
