"""Salesforce REST API payloads (v60.0) as Salesforce sends them, and the one write body we send.

Covers the OAuth token endpoint (answers and ``invalid_grant``-style errors), the REST error list
(``[{"errorCode", "message", "fields"}]``), query pages (``totalSize``/``done``/``nextRecordsUrl``),
sObject Collections save results, the Order / OrderItem records the fleet reads, and the SIM
inventory cards (``SIM_Inventory__c``) fulfillment assigns to SIM orders.

Tolerance: envelopes ignore fields they do not name; records (``OrderRecord``...) keep unknown
fields in ``model_extra`` (``extra="allow"``) because admins add custom fields at any time and a
new field must never fail a parse. Attribute names are ours (snake_case), aliases are the vendor's.
No I/O, no business rules, no imports from our other packages.

Sources: REST API Developer Guide, "Status Codes and Error Responses", "Limit Info Header",
"Update Records Using sObject Collections"; OAuth 2.0 JWT Bearer Flow (help.salesforce.com).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class _Record(BaseModel):
    """A record as returned by ``GET /sobjects/...`` or a query: unknown fields are kept."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


# --- OAuth ------------------------------------------------------------------------------------
class TokenResponse(_Envelope):
    """``POST /services/oauth2/token`` success body (JWT bearer, refresh token and password grants).

    Salesforce sends no ``expires_in``: a session lives until the org's timeout, so clients learn
    about expiry from a 401 ``INVALID_SESSION_ID``.
    """

    access_token: str = Field(min_length=1)
    instance_url: str = Field(min_length=1)
    id: str | None = None
    token_type: str = "Bearer"
    issued_at: str | None = None
    signature: str | None = None
    scope: str | None = None


class OAuthError(_Envelope):
    """Token endpoint refusal, e.g. ``{"error": "invalid_grant", "error_description": "audience is invalid"}``."""

    error: str
    error_description: str = ""


# --- REST errors ------------------------------------------------------------------------------
class ApiError(_Envelope):
    """One entry of the REST error list every non-2xx answer carries."""

    error_code: str = Field(alias="errorCode")
    message: str = ""
    fields: list[str] = []


API_ERRORS: TypeAdapter[list[ApiError]] = TypeAdapter(list[ApiError])


# --- sObject Collections ----------------------------------------------------------------------
class SaveError(_Envelope):
    status_code: str = Field(alias="statusCode")
    message: str = ""
    fields: list[str] = []


class SaveResult(_Envelope):
    """One element of the ``PATCH /composite/sobjects`` answer, in request order."""

    id: str | None = None
    success: bool
    errors: list[SaveError] = []


SAVE_RESULTS: TypeAdapter[list[SaveResult]] = TypeAdapter(list[SaveResult])


class CollectionRecord(BaseModel):
    """One record of an sObject Collections update: ``attributes.type``, ``id`` and the fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    attributes: dict[str, str]
    id: str


class CollectionUpdateRequest(BaseModel):
    """The body of ``PATCH /services/data/vXX.X/composite/sobjects`` (at most 200 records)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    all_or_none: bool = Field(False, alias="allOrNone")
    records: list[CollectionRecord] = Field(max_length=200)


# --- queries ----------------------------------------------------------------------------------
class QueryPage(_Envelope):
    """``GET /query?q=...`` answer; ``next_records_url`` is set while ``done`` is false.

    A parent-to-child sub-query's rows arrive in the same shape, nested under the relationship name
    of each parent record (``"OrderItems": {"totalSize", "done", "records"}``), or ``null`` when the
    parent has none (SOQL and SOSL Reference, "Understanding Query Results")."""

    total_size: int = Field(alias="totalSize")
    done: bool
    next_records_url: str | None = Field(None, alias="nextRecordsUrl")
    records: list[dict[str, Any]]


# --- records the fleet reads ------------------------------------------------------------------
class ProductRef(_Record):
    """The ``Product2`` relationship of an OrderItem: the WHMCS product mapping lives here."""

    name: str | None = Field(None, alias="Name")
    sku: str | None = Field(None, alias="StockKeepingUnit")
    whmcs_product_id: str | None = Field(None, alias="WH_Product_ID__c")
    billing_cycle: str | None = Field(None, alias="Billing_Cycle__c")
    item_class: str | None = Field(None, alias="Item_Class__c")


class OrderItemRecord(_Record):
    id: str = Field(alias="Id")
    order_id: str = Field(alias="OrderId")
    pricebook_entry_id: str | None = Field(None, alias="PricebookEntryId")
    product2_id: str | None = Field(None, alias="Product2Id")
    quantity: Decimal = Field(Decimal(1), alias="Quantity")
    unit_price: Decimal | None = Field(None, alias="UnitPrice")
    whmcs_service_id: str | None = Field(None, alias="WHMCS_Service_ID__c")
    billing_cycle: str | None = Field(None, alias="Billing_Cycle__c")
    product: ProductRef | None = Field(None, alias="Product2")

    @property
    def whmcs_product_id(self) -> str | None:
        return self.product.whmcs_product_id if self.product else None

    @property
    def effective_billing_cycle(self) -> str | None:
        """The line's own cycle when set, else the product's (how the portal maps lines to WHMCS)."""
        if self.billing_cycle:
            return self.billing_cycle
        return self.product.billing_cycle if self.product else None


class OrderRecord(_Record):
    """An Order as ``GET /sobjects/Order/<id>`` returns it (fields from the portal's data model)."""

    id: str = Field(alias="Id")
    account_id: str | None = Field(None, alias="AccountId")
    status: str | None = Field(None, alias="Status")
    type: str | None = Field(None, alias="Type")
    effective_date: str | None = Field(None, alias="EffectiveDate")
    pricebook2_id: str | None = Field(None, alias="Pricebook2Id")
    order_number: str | None = Field(None, alias="OrderNumber")
    total_amount: Decimal | None = Field(None, alias="TotalAmount")
    activation_type: str | None = Field(None, alias="Activation_Type__c")
    activation_scheduled_at: datetime | None = Field(None, alias="Activation_Scheduled_At__c")
    activation_status: str | None = Field(None, alias="Activation_Status__c")
    activation_error_code: str | None = Field(None, alias="Activation_Error_Code__c")
    activation_error_message: str | None = Field(None, alias="Activation_Error_Message__c")
    whmcs_order_id: str | None = Field(None, alias="WHMCS_Order_ID__c")
    sim_type: str | None = Field(None, alias="SIM_Type__c")
    eid: str | None = Field(None, alias="EID__c")
    sim_voice_mail: bool | None = Field(None, alias="SIM_Voice_Mail__c")
    sim_call_waiting: bool | None = Field(None, alias="SIM_Call_Waiting__c")
    vpn_region: str | None = Field(None, alias="VPN_Region__c")
    #: the Opportunity the order came from (standard field); linked both ways on success
    opportunity_id: str | None = Field(None, alias="OpportunityId")
    #: MNP (number portability) details collected at checkout. The portal's field names were not
    #: visible (domain-facts §2.1 "plus MNP fields"): these three are our choice (docs/fulfillment.md)
    mnp_reservation_number: str | None = Field(None, alias="MNP_Reservation_Number__c")
    mnp_expiry_date: date | None = Field(None, alias="MNP_Expiry_Date__c")
    mnp_phone_number: str | None = Field(None, alias="MNP_Phone_Number__c")
    billing_street: str | None = Field(None, alias="BillingStreet")
    billing_city: str | None = Field(None, alias="BillingCity")
    billing_state: str | None = Field(None, alias="BillingState")
    billing_postal_code: str | None = Field(None, alias="BillingPostalCode")
    billing_country: str | None = Field(None, alias="BillingCountry")
    created_date: datetime | None = Field(None, alias="CreatedDate")
    last_modified_date: datetime | None = Field(None, alias="LastModifiedDate")
    #: the ``OrderItems`` sub-query result when the query selected one (None: not selected, or no lines)
    order_items: QueryPage | None = Field(None, alias="OrderItems")


class SimCardRecord(_Record):
    """A ``SIM_Inventory__c`` record: one physical SIM card or eSIM profile the portal assigns to an
    order. Our inference of the object: only ``Assigned_Account__c``, ``Assigned_Order__c`` and
    ``SIM_Type__c`` are known fields; the object name, ``Status__c`` (``Available`` / ``Assigned``),
    ``Phone_Number__c`` and ``Serial_Number__c`` are our choices."""

    id: str = Field(alias="Id")
    #: ``SIM-000001`` (physical) / ``ESIM-000001`` (eSIM); the inventory pages by it
    name: str = Field(alias="Name")
    #: the MSISDN, 11 digits (``08012345678``)
    phone_number: str = Field(alias="Phone_Number__c")
    #: the physical card's product number (2 letters + 13 digits, Freebit's ``productNumber``); eSIM: None
    serial_number: str | None = Field(None, alias="Serial_Number__c")
    #: ``Physical`` or ``eSIM``
    sim_type: str = Field(alias="SIM_Type__c")
    status: str = Field(alias="Status__c")
    assigned_order_id: str | None = Field(None, alias="Assigned_Order__c")
    assigned_account_id: str | None = Field(None, alias="Assigned_Account__c")
