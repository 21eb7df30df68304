"""WHMCS External API responses (``/includes/api.php``, ``responsetype=json``) as WHMCS sends them.

Models are frozen and ignore fields they do not name (``extra="ignore"``): WHMCS adds response
fields between versions and we must not break on that. Pydantic's lax mode absorbs WHMCS's habit
of sending numbers as strings ("orderid": "1"). Shapes follow developers.whmcs.com/api-reference
(AddOrder, AcceptOrder, GetOrders, GetClientsProducts, GetPayMethods, GetClientsDetails,
UpdateClientProduct). No business rules here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Vendor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class WhmcsResult(_Vendor):
    """The envelope every action shares: ``result`` plus ``message`` on error."""

    result: Literal["success", "error"]
    message: str | None = None


class ClientRecord(_Vendor):
    id: int
    firstname: str = ""
    lastname: str = ""
    email: str = ""
    status: str = "Active"


class GetClientsDetailsResponse(WhmcsResult):
    client: ClientRecord


class PayMethodRecord(_Vendor):
    id: int
    type: str
    description: str = ""
    gateway_name: str = ""
    card_last_four: str | None = None


class GetPayMethodsResponse(WhmcsResult):
    clientid: int
    paymethods: list[PayMethodRecord] = []


class AddOrderResponse(WhmcsResult):
    orderid: int
    #: comma-separated; called ``productids`` before WHMCS 7.8
    serviceids: str = ""
    addonids: str = ""
    domainids: str = ""
    invoiceid: int | None = None

    @field_validator("invoiceid", mode="before")
    @classmethod
    def _zero_means_none(cls, value: object) -> object:
        return None if value in (0, "0", "", None) else value


class LineItem(_Vendor):
    type: str = "product"
    relid: int = 0
    product: str = ""
    billingcycle: str = ""
    amount: str = ""
    status: str = ""


class LineItems(_Vendor):
    lineitem: list[LineItem] = []


class OrderRecord(_Vendor):
    id: int
    ordernum: str | int = ""
    userid: int
    date: str = ""
    amount: str = ""
    paymentmethod: str = ""
    invoiceid: int = 0
    status: str
    notes: str = ""
    lineitems: LineItems = LineItems()


class OrderList(_Vendor):
    order: list[OrderRecord] = []


class GetOrdersResponse(WhmcsResult):
    totalresults: int = 0
    startnumber: int = 0
    numreturned: int = 0
    #: WHMCS nests the list one level deeper than you would expect: ``orders.order[]``
    orders: OrderList = Field(default_factory=OrderList)

    @field_validator("orders", mode="before")
    @classmethod
    def _empty_is_list(cls, value: object) -> object:
        # with zero results WHMCS sends ``"orders": []`` or an empty string instead of an object
        return {} if value in ([], "", None) else value


class CustomFieldValue(_Vendor):
    id: int
    name: str
    value: str = ""


class CustomFieldList(_Vendor):
    customfield: list[CustomFieldValue] = []


class ProductRecord(_Vendor):
    """One service ("client product") as GetClientsProducts lists it."""

    id: int
    clientid: int
    orderid: int = 0
    pid: int
    name: str = ""
    qty: int = 1
    billingcycle: str = ""
    status: str
    regdate: str = ""
    customfields: CustomFieldList = CustomFieldList()


class ProductList(_Vendor):
    product: list[ProductRecord] = []


class GetClientsProductsResponse(WhmcsResult):
    totalresults: int = 0
    startnumber: int = 0
    numreturned: int = 0
    products: ProductList = Field(default_factory=ProductList)

    @field_validator("products", mode="before")
    @classmethod
    def _empty_is_list(cls, value: object) -> object:
        return {} if value in ([], "", None) else value


class UpdateClientProductResponse(WhmcsResult):
    serviceid: int
