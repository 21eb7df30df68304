"""Salesforce Change Data Capture and platform event messages as delivered over CometD (Streaming API).

A CometD delivery is ``{"channel": "/data/OrderChangeEvent", "data": {"schema", "payload",
"event": {"replayId", ...}}}``; a change event payload is a ``ChangeEventHeader`` plus ONLY the
fields that changed (creates carry the record's fields). A field absent from the payload was not
modified: it is not null. Gap events (``GAP_*``) carry the header only, and an overflow event
(``GAP_OVERFLOW``) names the entity but no records: both mean "re-read from the API".
The Pub/Sub API (gRPC) source hands over the same shape, decoded from Avro, except that its
``replayId`` is opaque bytes, not an integer: ``EventInfo.replay_id`` keeps either kind as it came
(an int stays an int, bytes stay bytes; a string never becomes bytes).

Tolerance: every model accepts extra vendor fields (``extra="allow"`` on payloads so the changed
fields are kept, ``"ignore"`` on headers and envelopes), because Salesforce adds header fields
between releases (``nulledFields``/``diffFields`` arrived with the Pub/Sub API) and admins add
custom fields; ``changeType`` is a plain string so a new kind never fails a parse.
No I/O, no business rules, no imports from our other packages.

Sources: Change Data Capture Developer Guide ("Change Event Message Structure", "Change Event
Header Fields", "Gap Events", "Overflow Events", "Get Compound Fields in Change Events");
Platform Events Developer Guide ("Subscribe to Platform Event Notifications with CometD").
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter

CREATE, UPDATE, DELETE, UNDELETE = "CREATE", "UPDATE", "DELETE", "UNDELETE"
GAP_CREATE, GAP_UPDATE, GAP_DELETE, GAP_UNDELETE = "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"
GAP_OVERFLOW = "GAP_OVERFLOW"

#: the channel of each change event the fleet subscribes to, and the platform event channel
ORDER_CHANNEL = "/data/OrderChangeEvent"
ORDER_ITEM_CHANNEL = "/data/OrderItemChangeEvent"
PRODUCT2_CHANNEL = "/data/Product2ChangeEvent"
PRICEBOOK_ENTRY_CHANNEL = "/data/PricebookEntryChangeEvent"
ACCOUNT_ELIGIBILITY_CHANNEL = "/event/Account_Eligibility_Update__e"


def _none_to_empty(value: Any) -> Any:
    return "" if value is None else value


class _Vendor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ChangeEventHeader(_Vendor):
    entity_name: str = Field(alias="entityName")
    record_ids: list[str] = Field(default_factory=list, alias="recordIds")
    change_type: str = Field(alias="changeType")
    #: updates only; always includes ``LastModifiedDate``; compound fields as ``BillingAddress.City``
    changed_fields: list[str] = Field(default_factory=list, alias="changedFields")
    #: ``com/salesforce/api/rest/60.0;client=<Sforce-Call-Options client>`` for API writes, empty for UI
    change_origin: Annotated[str, BeforeValidator(_none_to_empty)] = Field("", alias="changeOrigin")
    transaction_key: str | None = Field(None, alias="transactionKey")
    sequence_number: int | None = Field(None, alias="sequenceNumber")
    commit_timestamp: int = Field(alias="commitTimestamp")
    commit_number: int | None = Field(None, alias="commitNumber")
    commit_user: str | None = Field(None, alias="commitUser")
    nulled_fields: list[str] = Field(default_factory=list, alias="nulledFields")
    diff_fields: list[str] = Field(default_factory=list, alias="diffFields")

    @property
    def is_gap(self) -> bool:
        """Header-only event: the record changed but the fields are not in the message."""
        return self.change_type.startswith("GAP_")

    @property
    def is_overflow(self) -> bool:
        return self.change_type == GAP_OVERFLOW

    @property
    def origin_client(self) -> str | None:
        """The ``client=`` part of ``changeOrigin`` (our own writes carry our client id)."""
        _, sep, rest = self.change_origin.partition(";client=")
        if not sep:
            return None
        return rest.split(";")[0] or None


class ChangeEventPayload(BaseModel):
    """Header plus the changed fields of any entity; ``changed_values()`` returns the fields."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    ENTITY: ClassVar[str | None] = None

    header: ChangeEventHeader = Field(alias="ChangeEventHeader")

    def changed_values(self) -> dict[str, Any]:
        """The record fields the message carries, by API name (absent = not modified)."""
        return dict(self.model_extra or {})

    def carries(self, field: str) -> bool:
        """Whether the message carries ``field`` (a compound subfield counts via its parent)."""
        values = self.changed_values()
        return field in values or field in self.header.changed_fields


class OrderChangeEvent(ChangeEventPayload):
    ENTITY = "Order"


class OrderItemChangeEvent(ChangeEventPayload):
    ENTITY = "OrderItem"


class Product2ChangeEvent(ChangeEventPayload):
    ENTITY = "Product2"


class PricebookEntryChangeEvent(ChangeEventPayload):
    ENTITY = "PricebookEntry"


_KNOWN_ENTITIES = {"Order", "OrderItem", "Product2", "PricebookEntry"}


def _entity_tag(value: Any) -> str:
    if isinstance(value, dict):
        header = value.get("ChangeEventHeader") or {}
        entity = header.get("entityName") if isinstance(header, dict) else None
    else:
        entity = getattr(getattr(value, "header", None), "entity_name", None)
    # a malformed header may carry a list or dict here: only a string can name a known entity
    return entity if isinstance(entity, str) and entity in _KNOWN_ENTITIES else "other"


#: a change event payload of any entity, discriminated on ``ChangeEventHeader.entityName``;
#: entities we have no class for parse as the generic ``ChangeEventPayload``
AnyChangeEvent = Annotated[
    Annotated[OrderChangeEvent, Tag("Order")]
    | Annotated[OrderItemChangeEvent, Tag("OrderItem")]
    | Annotated[Product2ChangeEvent, Tag("Product2")]
    | Annotated[PricebookEntryChangeEvent, Tag("PricebookEntry")]
    | Annotated[ChangeEventPayload, Tag("other")],
    Discriminator(_entity_tag),
]


#: a replay id as delivered: CometD's integer, or the Pub/Sub API's opaque bytes. Strict bytes, so
#: only real bytes are bytes (a string replay id stays what it was: an int if numeric, else an error)
ReplayIdValue = int | Annotated[bytes, Strict()]


class EventInfo(_Vendor):
    """``data.event``: the replay id (opaque; CometD's increase, the Pub/Sub API's are bytes that
    must not even be compared; never compute with either) and, on newer API versions, the event's
    UUID and creation date."""

    replay_id: ReplayIdValue = Field(alias="replayId")
    event_uuid: str | None = Field(None, alias="EventUuid")
    created_date: str | None = Field(None, alias="createdDate")


class ChangeEventData(_Vendor):
    schema_id: str | None = Field(None, alias="schema")
    payload: AnyChangeEvent
    event: EventInfo


class ChangeEventMessage(_Vendor):
    """One CometD delivery on a ``/data/<Entity>ChangeEvent`` channel."""

    channel: str
    data: ChangeEventData

    @property
    def replay_id(self) -> int | bytes:
        return self.data.event.replay_id

    @property
    def header(self) -> ChangeEventHeader:
        return self.data.payload.header


# --- platform events --------------------------------------------------------------------------
class AccountEligibilityUpdate(BaseModel):
    """Payload of ``/event/Account_Eligibility_Update__e`` (custom fields per the portal's docs)."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    account_id: str = Field(alias="Account_Id__c")
    eligibility_status: str | None = Field(None, alias="Eligibility_Status__c")
    verification_status: str | None = Field(None, alias="Verification_Status__c")
    created_date: str | None = Field(None, alias="CreatedDate")
    created_by_id: str | None = Field(None, alias="CreatedById")


class AccountEligibilityData(_Vendor):
    schema_id: str | None = Field(None, alias="schema")
    payload: AccountEligibilityUpdate
    event: EventInfo


class AccountEligibilityMessage(_Vendor):
    channel: str
    data: AccountEligibilityData


CHANGE_EVENT_MESSAGE: TypeAdapter[ChangeEventMessage] = TypeAdapter(ChangeEventMessage)
