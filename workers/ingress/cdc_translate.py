"""Thin translation of Salesforce change events into the fleet's domain events (the sf-cdc rules).

``parse`` turns one CometD delivery into a ``Change`` or raises ``InvalidPayload`` (the subscriber
dead-letters it). The rules are pure functions over what a change carries. When a guard needs a
field the change does not carry (updates carry only the changed fields, gap events none at all),
``Translator`` re-reads the record through the Salesforce port instead of guessing. A change that
may start fulfillment (activation, SIM activation, a gap on an Order) always reads the Order with
its lines, in bulk with the reads of other lanes (``order_reads``), and the request carries that
read as its ``snapshot`` (vendor fields translated to ours here, ``events/`` stays free of them),
so the saga need not read again. Overflow events and wildcard record ids become a
``ResyncRequested`` that ``Translator.resync`` serves with a SOQL window on ``LastModifiedDate``.
Both transports translate alike: a Pub/Sub API delivery differs only by its bytes replay id, which
dedupe keys, the events' ``replay_id`` and their audit copy show in hex (the copy as ``replayIdHex``,
``json_safe``). No Kafka, checkpoints or connections here.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from adapters.cdc_checkpoints import ReplayId, replay_id_text
from adapters.salesforce.port import OrderWithItems
from events.base import DomainEvent
from events.errors import InvalidPayload, PermanentError
from events.salesforce import (
    AccountEligibilityChanged,
    CatalogChanged,
    OrderActivationRequested,
    OrderChanged,
    OrderLineSnapshot,
    OrderSnapshot,
    ResyncRequested,
    SimActivationRequested,
)
from schemas.salesforce_api import OrderItemRecord
from schemas.salesforce_cdc import (
    CREATE,
    DELETE,
    GAP_DELETE,
    UNDELETE,
    UPDATE,
    AccountEligibilityMessage,
    ChangeEventHeader,
    ChangeEventMessage,
    EventInfo,
)
from workers.ingress.order_reads import BulkOrderReader

log = structlog.get_logger()

ORDER, ORDER_ITEM, PRODUCT2, PRICEBOOK_ENTRY = "Order", "OrderItem", "Product2", "PricebookEntry"
ACCOUNT_ELIGIBILITY = "Account_Eligibility_Update__e"
ACTIVATING, ACTIVATED, PROCESSED, SIM = "Activating", "Activated", "Processed", "SIM"
ACTIVATION_STATUS, STATUS, WHMCS_ORDER_ID = "Activation_Status__c", "Status", "WHMCS_Order_ID__c"

#: domain-facts §2.3: an OrderChanged is emitted only when one of these changed (Billing* included)
CUSTOMER_FACING_ORDER_FIELDS = frozenset(
    {
        "Status",
        "TotalAmount",
        "EffectiveDate",
        "Type",
        "Activation_Type__c",
        # the portal shows the activation date; the fulfillment saga moves a scheduled order's timer
        "Activation_Scheduled_At__c",
        "Installation_Type__c",
        "Access_Mode__c",
        "Hikari_Denwa__c",
        "VPN_Region__c",
        "SIM_Type__c",
        "EID__c",
        "Address_Changed__c",
    }
)
CUSTOMER_FACING_ORDER_ITEM_FIELDS = frozenset(
    {"Quantity", "UnitPrice", "Description", "Product2Id", "Billing_Cycle__c"}
)
#: what the fleet itself writes back and the portal does not show; never a reason for an
#: OrderChanged (documentation and tests). The fleet also writes ``Status`` (a failed SIM order goes
#: back to Approved): customer-facing, so that own write does yield one (``Translator._own_write``)
INTERNAL_ORDER_FIELDS = frozenset(
    {ACTIVATION_STATUS, WHMCS_ORDER_ID, "Activation_Error_Code__c", "Activation_Error_Message__c"}
)
INTERNAL_ORDER_ITEM_FIELDS = frozenset({"WHMCS_Service_ID__c"})
SYSTEM_FIELDS = frozenset({"LastModifiedDate", "LastModifiedById", "SystemModstamp", "LastReferencedDate"})

#: the fields the state rules read, per entity (gap re-reads and resync queries select these)
RESYNC_FIELDS: dict[str, tuple[str, ...]] = {
    ORDER: ("AccountId", STATUS, "Type", ACTIVATION_STATUS, WHMCS_ORDER_ID, "SIM_Type__c"),
    ORDER_ITEM: ("OrderId",),
    PRODUCT2: (),
    PRICEBOOK_ENTRY: ("Product2Id",),
}
#: an order with more lines travels without a snapshot (the saga reads it): keeps every request far
#: below Kafka's 1 MB record limit, whatever the order's size
MAX_SNAPSHOT_LINES = 200
#: how long the event bus keeps changes: the widest window a lost position can need
RETENTION = timedelta(hours=72)
#: an overflow's records were modified while its (possibly long) transaction ran
OVERFLOW_LOOKBACK = timedelta(minutes=15)

_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_WILDCARD_ID = re.compile(r"^[A-Za-z0-9]{0,17}\*$")
_KNOWN_CHANGE_TYPES = frozenset({CREATE, UPDATE, DELETE, UNDELETE})
_ID_NAMESPACE = uuid.UUID("5b0c7a4e-3f0e-4d8e-9a51-6c1f2d3e4a5b")


class UnresolvableChange(PermanentError):
    """A valid change the rules cannot place (e.g. a deleted OrderItem whose order is unknown)."""

    default_code = "CDC_UNRESOLVABLE"


class RecordReader(Protocol):
    """The slice of ``SalesforcePort`` the re-read hook uses (any port implementation fits)."""

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]: ...

    async def query(self, soql: str) -> list[dict[str, Any]]: ...

    async def records_modified_between(
        self, sobject: str, since: datetime, until: datetime, fields: Sequence[str]
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Rules:
    """Settings the rules depend on (``SalesforceSettings``)."""

    trigger_statuses: frozenset[str]
    own_client: str


@dataclass(frozen=True)
class Change:
    """One parsed delivery: a change event (``header`` set) or a platform event (``header`` None)."""

    channel: str
    replay_id: ReplayId
    event_uuid: str | None
    entity: str
    header: ChangeEventHeader | None
    values: Mapping[str, Any]
    raw: dict[str, Any]
    occurred_at: datetime | None

    @property
    def change_type(self) -> str:
        return self.header.change_type if self.header else "EVENT"

    @property
    def basis(self) -> str:
        """What identifies this change across redeliveries: the EventUuid when the platform sent
        one (replay ids are not unique across org migrations), else transaction key + sequence,
        else channel + replay id. Every CloudEvent id derived from the change starts from it."""
        if self.event_uuid:
            return f"uuid:{self.event_uuid}"
        h = self.header
        if h is not None and h.transaction_key and h.sequence_number is not None:
            return f"tx:{h.transaction_key}:{h.sequence_number}:{h.entity_name}"
        return f"replay:{self.channel}:{replay_id_text(self.replay_id)}"

    def dedupe_keys(self) -> tuple[str, ...]:
        """Seeing any of these again means the same change was delivered twice."""
        by_replay = f"replay:{self.channel}:{replay_id_text(self.replay_id)}"
        return (by_replay,) if self.basis == by_replay else (by_replay, self.basis)

    @property
    def event_replay_id(self) -> int | str:
        """The replay id the domain events carry (``replay_id: int | str | None``): CometD's int as
        it is, the Pub/Sub API's bytes in hex (as in their ``change``: ``event.replayIdHex``)."""
        return replay_id_text(self.replay_id) if isinstance(self.replay_id, bytes) else self.replay_id

    def changed_fields(self) -> frozenset[str]:
        """Top-level names of the changed fields (``BillingAddress.City`` -> ``BillingAddress``);
        a create lists no changedFields, so every field it carries counts."""
        if self.header is None:
            return frozenset(self.values)
        names = self.header.changed_fields or ([] if self.change_type != CREATE else list(self.values))
        return frozenset(name.split(".", 1)[0] for name in names)

    def knows(self, name: str) -> bool:
        """Whether the change says what ``name`` is now: a create carries every non-null field (an
        absent one is null); an update only the changed ones (an absent one is unknown)."""
        if self.change_type == CREATE:
            return True
        nulled = self.header.nulled_fields if self.header else []
        return name in self.values or name in nulled


@dataclass(frozen=True)
class Emission:
    """A domain event with its deterministic CloudEvent id (same change -> same id)."""

    event: DomainEvent
    event_id: str
    correlation_id: str


@dataclass(frozen=True)
class Translation:
    emissions: tuple[Emission, ...] = ()
    #: ``ResyncRequested`` emissions: publish them, then run ``Translator.resync`` for each
    resyncs: tuple[Emission, ...] = ()
    #: why nothing was emitted (a metrics label), None when something was
    note: str | None = None


def event_id(basis: str, record_id: str, event_type: str) -> str:
    """The CloudEvent id of ``event_type`` for ``record_id`` derived from change ``basis``."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{basis}|{record_id}|{event_type}"))


# --- parsing ------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """``value`` with every bytes value made JSON text: in an object, ``key: b"..."`` becomes
    ``keyHex: "<lowercase hex>"`` (so a Pub/Sub API ``event.replayId`` reads ``event.replayIdHex``:
    a clear key, never a string that could pass for the number), in an array the hex alone.
    Everything else is kept (a copy): a CometD delivery, which holds no bytes, comes back equal."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {f"{k}Hex" if isinstance(v, bytes) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def parse(message: Any) -> Change:
    """A CometD delivery as a ``Change``; ``InvalidPayload`` names what is wrong."""
    if not isinstance(message, dict):
        raise InvalidPayload("delivery is not a JSON object")
    channel = message.get("channel")
    if not isinstance(channel, str):
        raise InvalidPayload("delivery has no channel")
    try:
        if channel.startswith("/data/"):
            return _parse_change(channel, message)
        if channel.startswith("/event/"):
            return _parse_platform_event(channel, message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise InvalidPayload(f"{channel}: {where}: {first['msg']}") from exc
    raise InvalidPayload(f"unsupported channel {channel!r}")


def _parse_change(channel: str, message: dict[str, Any]) -> Change:
    parsed = ChangeEventMessage.model_validate(message)
    header = parsed.header
    _check_record_ids(header)
    return Change(
        channel=channel,
        replay_id=parsed.replay_id,
        event_uuid=parsed.data.event.event_uuid,
        entity=header.entity_name,
        header=header,
        values=parsed.data.payload.changed_values(),
        raw=json_safe(message["data"]),
        occurred_at=_from_epoch_ms(header.commit_timestamp),
    )


def _parse_platform_event(channel: str, message: dict[str, Any]) -> Change:
    name = channel.removeprefix("/event/")
    data = message.get("data")
    if not isinstance(data, dict):
        raise InvalidPayload(f"{channel}: data is not an object")
    if name == ACCOUNT_ELIGIBILITY:
        parsed = AccountEligibilityMessage.model_validate(message)
        if not parsed.data.payload.account_id:
            raise InvalidPayload(f"{channel}: Account_Id__c is empty")
        info = parsed.data.event
    else:  # a platform event we have no rule for: parse the envelope only
        info = EventInfo.model_validate(data.get("event"))
    payload = data.get("payload")
    return Change(
        channel=channel,
        replay_id=info.replay_id,
        event_uuid=info.event_uuid,
        entity=name,
        header=None,
        values=dict(payload) if isinstance(payload, dict) else {},
        raw=json_safe(data),
        occurred_at=_parse_iso(info.created_date),
    )


def _check_record_ids(header: ChangeEventHeader) -> None:
    if header.is_overflow:
        return
    if not header.record_ids:
        raise InvalidPayload(f"{header.entity_name} {header.change_type} change carries no recordIds")
    bad = [r for r in header.record_ids if not (_ID.match(r) or _WILDCARD_ID.match(r))]
    if bad:
        raise InvalidPayload(f"{header.entity_name} change carries malformed record ids {bad[:3]!r}")


def _from_epoch_ms(value: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidPayload(f"commitTimestamp {value!r} is not a time") from None


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- pure rules ---------------------------------------------------------------------------------
def text(value: Any) -> str | None:
    """A field value as a string for comparisons and event fields (non-strings are not values we
    act on: a number where a picklist should be never matches a rule)."""
    return value if isinstance(value, str) else None


def customer_facing_order_fields(changed: frozenset[str]) -> list[str]:
    return sorted(f for f in changed if f in CUSTOMER_FACING_ORDER_FIELDS or f.startswith("Billing"))


def customer_facing_item_fields(changed: frozenset[str]) -> list[str]:
    return sorted(changed & CUSTOMER_FACING_ORDER_ITEM_FIELDS)


def becomes_activating(view: Mapping[str, Any], changed: frozenset[str]) -> bool:
    return ACTIVATION_STATUS in changed and text(view.get(ACTIVATION_STATUS)) == ACTIVATING


def becomes_processed(view: Mapping[str, Any], changed: frozenset[str]) -> bool:
    return STATUS in changed and text(view.get(STATUS)) == PROCESSED


def activation_guards_pass(view: Mapping[str, Any], rules: Rules) -> bool:
    """``Status`` in the trigger set and no WHMCS order yet (else it is provisioning or done)."""
    return text(view.get(STATUS)) in rules.trigger_statuses and not view.get(WHMCS_ORDER_ID)


def is_sim_order(view: Mapping[str, Any]) -> bool:
    return SIM in (text(view.get("Type")), text(view.get("Order_Type__c")))


def activation_pending(view: Mapping[str, Any], rules: Rules) -> bool:
    """State form of the activation rule, for records re-read without a transition to look at."""
    return text(view.get(ACTIVATION_STATUS)) == ACTIVATING and activation_guards_pass(view, rules)


def sim_activation_pending(view: Mapping[str, Any]) -> bool:
    """State form of the SIM rule: Processed SIM order whose SIM step has not completed."""
    processed = text(view.get(STATUS)) == PROCESSED
    return processed and is_sim_order(view) and text(view.get(ACTIVATION_STATUS)) != ACTIVATED


_ACTIVATION_GUARD_FIELDS = (STATUS, WHMCS_ORDER_ID)
_SIM_GUARD_FIELDS = ("Type",)


# --- building events ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """Where the emitted events come from: id basis, replay id, audit copy, change type."""

    basis: str
    replay_id: int | str | None
    change: dict[str, Any]
    change_type: str

    def emit(self, event: DomainEvent, record_id: str) -> Emission:
        # the type's version-free lineage where it has one: one change keeps one id across a version bump
        name = getattr(event, "LINEAGE", event.TYPE)
        return Emission(event, event_id(self.basis, record_id, name), self.basis)


def _order_events(
    src: _Source,
    order_id: str,
    view: Mapping[str, Any],
    *,
    activation: bool,
    sim: bool,
    fields: list[str] | None,
    snapshot: OrderSnapshot | None = None,
) -> list[Emission]:
    common: dict[str, Any] = {
        "sf_order_id": order_id,
        "sf_account_id": text(view.get("AccountId")),
        "status": text(view.get(STATUS)),
        "replay_id": src.replay_id,
        "change": src.change,
    }
    out: list[Emission] = []
    if activation:
        request = OrderActivationRequested(**common, order_type=text(view.get("Type")), snapshot=snapshot)
        out.append(src.emit(request, order_id))
    if sim:
        sim_request = SimActivationRequested(**common, sim_type=text(view.get("SIM_Type__c")), snapshot=snapshot)
        out.append(src.emit(sim_request, order_id))
    if fields is not None:
        del common["status"]
        changed = OrderChanged(**common, record_id=order_id, changed_fields=fields, change_type=src.change_type)
        out.append(src.emit(changed, order_id))
    return out


def _item_changed(src: _Source, item_id: str, order_id: str, fields: list[str]) -> Emission:
    event = OrderChanged(
        sf_order_id=order_id,
        entity="OrderItem",
        record_id=item_id,
        changed_fields=fields,
        change_type=src.change_type,
        replay_id=src.replay_id,
        change=src.change,
    )
    return src.emit(event, item_id)


def _catalog_changed(
    src: _Source, entity: str, record_id: str, values: Mapping[str, Any], fields: list[str]
) -> Emission:
    product2_id = record_id if entity == PRODUCT2 else text(values.get("Product2Id"))
    event = CatalogChanged(
        entity=entity,  # type: ignore[arg-type]  # only Product2 / PricebookEntry reach here
        record_id=record_id,
        product2_id=product2_id,
        changed_fields=fields,
        change_type=src.change_type,
        replay_id=src.replay_id,
        change=src.change,
    )
    return src.emit(event, record_id)


def _eligibility(change: Change) -> Translation:
    account_id = text(change.values.get("Account_Id__c")) or ""
    src = _Source(change.basis, change.event_replay_id, change.raw, change.change_type)
    event = AccountEligibilityChanged(
        sf_account_id=account_id,
        eligibility=text(change.values.get("Eligibility_Status__c")),
        verification_status=text(change.values.get("Verification_Status__c")),
        replay_id=change.event_replay_id,
        change=change.raw,
    )
    return Translation(emissions=(src.emit(event, account_id),))


def _ceil_second(moment: datetime) -> datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def _record_view(read: OrderWithItems) -> dict[str, Any]:
    return read.order.model_dump(by_alias=True, exclude={"order_items"})


def order_snapshot(read: OrderWithItems, read_at: datetime) -> OrderSnapshot:
    """The Order and its lines in the fleet's words (the one place their Salesforce names are mapped)."""
    order = read.order
    return OrderSnapshot(
        sf_order_id=order.id,
        read_at=read_at,
        last_modified_at=order.last_modified_date,
        sf_account_id=order.account_id,
        order_type=order.type,
        status=order.status,
        activation_status=order.activation_status,
        activation_type=order.activation_type,
        activation_scheduled_at=order.activation_scheduled_at,
        whmcs_order_id=order.whmcs_order_id,
        sim_type=order.sim_type,
        eid=order.eid,
        sim_voice_mail=order.sim_voice_mail,
        sim_call_waiting=order.sim_call_waiting,
        opportunity_id=order.opportunity_id,
        mnp_reservation_number=order.mnp_reservation_number,
        mnp_expiry_date=order.mnp_expiry_date,
        mnp_phone_number=order.mnp_phone_number,
        lines=[_line_snapshot(item) for item in read.items],
    )


def _line_snapshot(item: OrderItemRecord) -> OrderLineSnapshot:
    product = item.product
    return OrderLineSnapshot(
        sf_order_item_id=item.id,
        sf_product2_id=item.product2_id,
        product_name=product.name if product else None,
        sku=product.sku if product else None,
        item_class=product.item_class if product else None,
        whmcs_product_id=product.whmcs_product_id if product else None,
        billing_cycle=item.billing_cycle,
        product_billing_cycle=product.billing_cycle if product else None,
        quantity=float(item.quantity),
    )


# --- the translator (rules + the re-read hook) --------------------------------------------------
@dataclass
class Translator:
    """Applies the rules to a ``Change``, re-reading through ``reader`` where a guard needs it.

    ``rereads`` counts API calls made (a metric; a bulk read of many orders counts once);
    ``parents`` remembers OrderItem -> Order ids learnt from creates and re-reads, so the delete of
    a known line still finds its order. Order reads go through ``orders`` (bulk, see ``order_reads``).
    """

    rules: Rules
    reader: RecordReader
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    parent_cache_size: int = 10_000
    queries: int = 0
    parents: OrderedDict[str, str] = field(default_factory=OrderedDict)
    orders: BulkOrderReader = field(init=False)

    def __post_init__(self) -> None:
        self.orders = BulkOrderReader(self.reader.get_orders_with_items, clock=self.clock)

    @property
    def rereads(self) -> int:
        return self.queries + self.orders.calls

    async def translate(self, change: Change) -> Translation:
        """Domain events for ``change``; raises ``UnresolvableChange`` or the port's errors."""
        header = change.header
        if header is None:
            return _eligibility(change) if change.entity == ACCOUNT_ELIGIBILITY else Translation(note="ignored_entity")
        if header.origin_client == self.rules.own_client:
            return await self._own_write(change)
        if change.entity not in RESYNC_FIELDS:
            return Translation(note="ignored_entity")
        if header.is_overflow or any("*" in r for r in header.record_ids):
            reason = header.change_type if header.is_overflow else "WILDCARD_RECORD_IDS"
            return Translation(resyncs=(self._overflow_request(change, reason),))
        if not (header.is_gap or header.change_type in _KNOWN_CHANGE_TYPES):
            return Translation(note="unknown_change_type")
        emissions: list[Emission] = []
        for record_id in dict.fromkeys(header.record_ids):  # merged events: one per record id
            emissions.extend(await self._translate_record(change, record_id))
        return Translation(emissions=tuple(emissions), note=None if emissions else "no_rule_matched")

    async def _own_write(self, change: Change) -> Translation:
        """Our own write-back (``changeOrigin`` client = the fleet, and so any Flow it fired): never
        a trigger, which also means no echo loop. But when it changed a field the portal shows (the
        SIM failure's ``Status = Approved``), the portal's copy is stale from the moment the write
        lands, after the outcome's invalidation: a cache-only ``OrderChanged`` busts it again.
        Internal fields only (``Activation_Status__c``, ``WHMCS_Order_ID__c``...) emit nothing."""
        header = change.header
        assert header is not None
        plain = header.change_type in _KNOWN_CHANGE_TYPES and not any("*" in r for r in header.record_ids)
        if change.entity not in (ORDER, ORDER_ITEM) or not plain:
            return Translation(note="own_write")  # the fleet writes no catalog, and no gaps come from it
        emissions: list[Emission] = []
        for record_id in dict.fromkeys(header.record_ids):
            emissions.extend(await self._translate_record(change, record_id, triggers=False))
        return Translation(emissions=tuple(emissions), note=None if emissions else "own_write")

    async def _translate_record(self, change: Change, record_id: str, *, triggers: bool = True) -> list[Emission]:
        src = _Source(change.basis, change.event_replay_id, change.raw, change.change_type)
        if change.entity == ORDER:
            return await self._order(change, record_id, src, triggers=triggers)
        if change.entity == ORDER_ITEM:
            return await self._order_item(change, record_id, src)
        fields = sorted(change.changed_fields() - SYSTEM_FIELDS)
        return [_catalog_changed(src, change.entity, record_id, change.values, fields)]

    async def _order(self, change: Change, order_id: str, src: _Source, *, triggers: bool) -> list[Emission]:
        """``triggers=False``: an own write, only its ``OrderChanged`` (no request, no re-read)."""
        assert change.header is not None
        if change.header.is_gap:
            return await self._order_gap(change, order_id, src)
        changed = change.changed_fields()
        transitions = triggers and change.change_type in (CREATE, UPDATE)
        view: dict[str, Any] = dict(change.values)
        activation = transitions and becomes_activating(view, changed)
        sim = transitions and becomes_processed(view, changed)
        snapshot = None
        if activation or sim:
            # a request that may start fulfillment always carries the order as read now (one bulk
            # query shared with other lanes), also when the change knows every guard field: the
            # saga then reads nothing, which costs fewer calls than the saga's own two reads
            read = await self._read_order(order_id)
            if read is None:  # deleted since: nothing left to activate
                activation = sim = False
            else:  # what the change carries wins; the re-read only fills what it lacks
                current, snapshot = read
                view = {**current, **view}
        fields = customer_facing_order_fields(changed)
        emit_changed = bool(fields) or change.change_type in (CREATE, DELETE, UNDELETE)
        return _order_events(
            src,
            order_id,
            view,
            activation=activation and activation_guards_pass(view, self.rules),
            sim=sim and is_sim_order(view),
            fields=fields if emit_changed else None,
            snapshot=snapshot,
        )

    async def _order_gap(self, change: Change, order_id: str, src: _Source) -> list[Emission]:
        """Gap events carry no fields: emit from the record's current state."""
        read = None if change.change_type == GAP_DELETE else await self._read_order(order_id)
        if read is None:
            return _order_events(src, order_id, {}, activation=False, sim=False, fields=[])
        return self._order_from_state(src, order_id, *read)

    def _order_from_state(
        self, src: _Source, order_id: str, view: Mapping[str, Any], snapshot: OrderSnapshot | None = None
    ) -> list[Emission]:
        activation, sim = activation_pending(view, self.rules), sim_activation_pending(view)
        return _order_events(src, order_id, view, activation=activation, sim=sim, fields=[], snapshot=snapshot)

    async def _order_item(self, change: Change, item_id: str, src: _Source) -> list[Emission]:
        assert change.header is not None
        fields = customer_facing_item_fields(change.changed_fields())
        structural = change.header.is_gap or change.change_type in (CREATE, DELETE, UNDELETE)
        if not (fields or structural):
            return []  # only internal fields (WHMCS_Service_ID__c) or system fields changed
        order_id = await self._parent_of(item_id, change.values)
        if order_id is None:
            raise UnresolvableChange(f"OrderItem {item_id} ({change.change_type}): parent Order unknown")
        return [_item_changed(src, item_id, order_id, fields)]

    async def _parent_of(self, item_id: str, values: Mapping[str, Any]) -> str | None:
        order_id = text(values.get("OrderId")) or self.parents.get(item_id)
        if order_id is None:
            self.queries += 1
            rows = await self.reader.query(f"SELECT Id, OrderId FROM OrderItem WHERE Id = '{item_id}'")
            order_id = next((text(r.get("OrderId")) for r in rows if text(r.get("OrderId"))), None)
        if order_id is not None:
            self._remember_parent(item_id, order_id)
        return order_id

    def _remember_parent(self, item_id: str, order_id: str) -> None:
        self.parents[item_id] = order_id
        self.parents.move_to_end(item_id)
        while len(self.parents) > self.parent_cache_size:
            self.parents.popitem(last=False)

    async def _read_order(self, order_id: str) -> tuple[dict[str, Any], OrderSnapshot | None] | None:
        """The order's fields (for the rules) and its snapshot, or None when it no longer exists."""
        read, read_at = await self.orders.read(order_id)
        if read is None:
            return None
        for item in read.items:
            self._remember_parent(item.id, order_id)
        snapshot = order_snapshot(read, read_at) if len(read.items) <= MAX_SNAPSHOT_LINES else None
        return _record_view(read), snapshot

    # --- resync ---------------------------------------------------------------------------------
    def resync_request(self, entity: str, since: datetime | None, until: datetime, reason: str, basis: str) -> Emission:
        """A ``ResyncRequested`` for ``entity`` whose id derives from ``basis`` (deterministic)."""
        event = ResyncRequested(entity=entity, since=since, until=until, reason=reason)
        return Emission(event, event_id(basis, entity, event.TYPE), basis)

    def _overflow_request(self, change: Change, reason: str) -> Emission:
        until = self.clock()
        since = (change.occurred_at or until - RETENTION) - OVERFLOW_LOOKBACK
        return self.resync_request(change.entity, since, until, reason, change.basis)

    async def resync(self, request: Emission) -> list[Emission]:
        """Re-read ``request``'s window by SOQL and emit every record's events from its current
        state. Ids derive from the request's id, so running the same request twice emits the same
        ids. Entities without a queryable record (platform events) emit nothing."""
        event = request.event
        assert isinstance(event, ResyncRequested)
        fields = RESYNC_FIELDS.get(event.entity)
        if fields is None:
            log.warning("sf_cdc_resync_unsupported", entity=event.entity, reason=event.reason)
            return []
        until = event.until or self.clock()
        since = event.since or until - RETENTION
        self.queries += 1
        # whole seconds, widened outwards: SOQL datetime literals may carry no fraction, and a
        # window truncated at ``until`` would miss what changed in its last second
        since, until = since.replace(microsecond=0), _ceil_second(until)
        records = await self.reader.records_modified_between(event.entity, since, until, list(fields))
        # the request as it is on sf.resync.v1 (the audit log), joined by its CloudEvent id
        audit = {**event.model_dump(mode="json"), "request_id": request.event_id}
        emissions: list[Emission] = []
        for record in records:
            src = _Source(f"resync:{request.event_id}", None, {"resync": audit, "record": record}, "RESYNC")
            emissions.extend(self._from_record(event.entity, record, src))
        return emissions

    def _from_record(self, entity: str, record: dict[str, Any], src: _Source) -> list[Emission]:
        record_id = text(record.get("Id"))
        if record_id is None:
            log.warning("sf_cdc_resync_record_without_id", entity=entity)
            return []
        if entity == ORDER:
            return self._order_from_state(src, record_id, record)
        if entity == ORDER_ITEM:
            order_id = text(record.get("OrderId"))
            if order_id is None:
                return []
            self._remember_parent(record_id, order_id)
            return [_item_changed(src, record_id, order_id, [])]
        return [_catalog_changed(src, entity, record_id, record, [])]
