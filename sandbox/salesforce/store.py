"""The sandbox org's records: the sObject schema the fleet touches, ids, field checks, snapshots.

Pure data. It knows which fields each object has, which are read-only, how ids look (key prefix +
counter, 18 characters) and how Salesforce formats datetimes; it does not know HTTP or change
events (``org.py`` pairs every write with its event).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
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
    "Order": "801",
    "OrderItem": "802",
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
    "Order": (
        "AccountId", "Name", "Description", "EffectiveDate", "Status", "Type", "Pricebook2Id",
        "OrderNumber", "TotalAmount", "Order_Type__c", "Activation_Type__c", "Activation_Scheduled_At__c",
        "Activation_Status__c", "Activation_Error_Code__c", "Activation_Error_Message__c",
        "WHMCS_Order_ID__c", "Internet_Plan_Tier__c", "Installation_Type__c", "Weekend_Install__c",
        "Access_Mode__c", "Hikari_Denwa__c", "VPN_Region__c", "SIM_Type__c", "EID__c",
        "SIM_Voice_Mail__c", "SIM_Call_Waiting__c", "Address_Changed__c", *_BILLING,
    ),
    "OrderItem": (
        "OrderId", "OrderItemNumber", "PricebookEntryId", "Product2Id", "Quantity", "UnitPrice",
        "TotalPrice", "Description", "WHMCS_Service_ID__c", "Billing_Cycle__c",
    ),
}  # fmt: skip


class FieldProblem(Exception):
    """A write names a field the object lacks or may not set; carries Salesforce's error entry."""

    def __init__(self, code: str, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.code = code
        self.fields = fields
        self.entry: dict[str, Any] = {"errorCode": code, "message": message, "fields": fields}


def sf_datetime(moment: datetime) -> str:
    """Salesforce's REST datetime format: ``2026-01-01T09:30:00.000+0000``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_sf_datetime(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def all_fields(sobject: str) -> tuple[str, ...]:
    return SYSTEM_FIELDS + FIELDS[sobject]


class Store:
    """Records by type and id, plus the id and auto-number counters."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in FIELDS}
        self._counters = {name: itertools.count(1001) for name in FIELDS}
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
        record_id = fields.get("Id") or demo_data.sf_id(KEY_PREFIX[sobject], next(self._counters[sobject]))
        stamp = sf_datetime(now)
        record: dict[str, Any] = dict.fromkeys(FIELDS[sobject])
        record.update({k: v for k, v in fields.items() if k in FIELDS[sobject]})
        record.update(Id=record_id, CreatedDate=stamp, CreatedById=user, LastModifiedDate=stamp,
                      LastModifiedById=user, SystemModstamp=stamp)  # fmt: skip
        if sobject == "Order" and record["OrderNumber"] is None:
            record["OrderNumber"] = f"{next(self._order_numbers):08d}"
        self.records[sobject][record_id] = record
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
