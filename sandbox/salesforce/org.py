"""Every write to the sandbox org goes through a ``Transaction`` here, so every write emits its change event.

A transaction records which records it touched (to roll back for all-or-none) and which change
events it owes. As in Salesforce, several writes to one record inside one transaction produce ONE
event of the first change type carrying the data committed at the end (CDC Developer Guide,
"Change Event Generation in a Transaction with Multiple Changes for the Same Record"). On commit
the events get the transaction's key, sequence numbers, commit timestamp/number and user, and go
to the bus. ``changeOrigin`` is ``com/salesforce/api/rest/<ver>;client=<Sforce-Call-Options client>``
for API writes and empty for UI ("agent") edits.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from sandbox import demo_data
from sandbox.salesforce.events import EventBus, change_body, channel_for
from sandbox.salesforce.store import Store

AGENT_USER_ID = demo_data.sf_id("005", 2)
_CLIENT = re.compile(r"client=([^,;\s]+)")
_DATETIME_FIELDS = frozenset({"CreatedDate", "LastModifiedDate", "Activation_Scheduled_At__c"})
_ROLL_UP_INPUTS = frozenset({"Quantity", "UnitPrice"})


class RecordMissing(Exception):
    def __init__(self, sobject: str, record_id: str) -> None:
        super().__init__(f"{sobject} {record_id} does not exist")
        self.entry = {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}


@dataclass(frozen=True)
class Actor:
    """Who writes: the user recorded as ``commitUser`` and the ``changeOrigin`` of the events."""

    user_id: str
    change_origin: str


AGENT = Actor(AGENT_USER_ID, "")


def api_actor(api_version: str, call_options: str | None) -> Actor:
    match = _CLIENT.search(call_options or "")
    origin = f"com/salesforce/api/rest/{api_version}" + (f";client={match.group(1)}" if match else "")
    return Actor(demo_data.INTEGRATION_USER_ID, origin)


@dataclass
class _Owed:
    """One change event the transaction owes; values are re-read from the store at commit."""

    entity: str
    change_type: str
    record_ids: list[str]
    names: dict[str, None] = field(default_factory=dict)  # ordered set of changed record fields
    fields: dict[str, Any] | None = None  # fixed values (merged events); None = read at commit


class Org:
    def __init__(self, store: Store, bus: EventBus, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self._commit_numbers = itertools.count(1_100_670_838_951)

    def transaction(self, actor: Actor) -> Transaction:
        return Transaction(self, actor)

    def next_commit_number(self) -> int:
        return next(self._commit_numbers)


class Transaction:
    """Use as a context manager: commits on a clean exit, rolls back when an exception escapes."""

    def __init__(self, org: Org, actor: Actor) -> None:
        self.org = org
        self.actor = actor
        self.key = str(uuid.uuid4())
        self._owed: dict[tuple[str, str], _Owed] = {}
        self._snapshots: dict[tuple[str, str], dict[str, Any] | None] = {}

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    # --- writes -------------------------------------------------------------------------------
    def create(self, sobject: str, fields: dict[str, Any]) -> dict[str, Any]:
        record = self.org.store.insert(sobject, fields, user=self.actor.user_id, now=self.org.clock())
        self._snapshots.setdefault((sobject, record["Id"]), None)
        self._owe(sobject, record["Id"], "CREATE", ())
        if sobject == "OrderItem":
            self._roll_up(record["OrderId"])
        return record

    def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Write fields; returns the changed ones (always including LastModifiedDate)."""
        store = self.org.store
        if store.get(sobject, record_id) is None:
            raise RecordMissing(sobject, record_id)
        self._snapshots.setdefault((sobject, record_id), store.snapshot(sobject, record_id))
        changed = store.apply(sobject, record_id, fields, user=self.actor.user_id, now=self.org.clock())
        self._owe(sobject, record_id, "UPDATE", changed)
        if sobject == "OrderItem" and _ROLL_UP_INPUTS & changed.keys():
            self._roll_up(str(store.records["OrderItem"][record_id]["OrderId"]))
        return changed

    def merged_update(self, sobject: str, record_ids: list[str], fields: dict[str, Any]) -> None:
        """The same change on several records, announced as ONE event listing every id."""
        for record_id in record_ids:
            self.update(sobject, record_id, fields)
            self._owed.pop((sobject, record_id), None)
        body = {**fields, "LastModifiedDate": self.org.store.records[sobject][record_ids[0]]["LastModifiedDate"]}
        self._owed[(sobject, ",".join(record_ids))] = _Owed(sobject, "UPDATE", record_ids, dict.fromkeys(body), body)

    def header_only(self, entity: str, record_ids: list[str], change_type: str) -> None:
        """A gap (``GAP_*``) or overflow (``GAP_OVERFLOW``) event: header, no fields."""
        self._owed[(entity, f"{change_type}:{','.join(record_ids)}:{len(self._owed)}")] = _Owed(
            entity, change_type, list(record_ids), fields={}
        )

    def _owe(self, sobject: str, record_id: str, change_type: str, names: Iterable[str]) -> None:
        owed = self._owed.get((sobject, record_id))
        if owed is None:
            owed = self._owed[(sobject, record_id)] = _Owed(sobject, change_type, [record_id])
        owed.names.update(dict.fromkeys(names))

    def _roll_up(self, order_id: str) -> None:
        """Order.TotalAmount is a roll-up of its lines; it changes in the same transaction."""
        store = self.org.store
        total = store.order_total(order_id)
        if store.get("Order", order_id) is not None and store.records["Order"][order_id]["TotalAmount"] != total:
            self.update("Order", order_id, {"TotalAmount": total})

    # --- end ----------------------------------------------------------------------------------
    def rollback(self) -> None:
        for (sobject, record_id), snapshot in self._snapshots.items():
            self.org.store.restore(sobject, record_id, snapshot)
        self._owed.clear()
        self._snapshots.clear()

    def commit(self) -> list[dict[str, Any]]:
        published = []
        commit_number = self.org.next_commit_number()
        timestamp = int(self.org.clock().timestamp() * 1000)
        for sequence, owed in enumerate(self._owed.values(), start=1):
            channel = channel_for(owed.entity)
            if channel is None:
                continue  # the entity is not selected for Change Data Capture
            header = self._header(owed, sequence, timestamp, commit_number)
            published.append(self.org.bus.publish(channel, {"ChangeEventHeader": header, **self._body(owed, header)}))
        self._owed.clear()
        self._snapshots.clear()
        return published

    def _header(self, owed: _Owed, sequence: int, timestamp: int, commit_number: int) -> dict[str, Any]:
        return {
            "entityName": owed.entity,
            "recordIds": owed.record_ids,
            "changeType": owed.change_type,
            "changeOrigin": self.actor.change_origin,
            "transactionKey": self.key,
            "sequenceNumber": sequence,
            "commitTimestamp": timestamp,
            "commitNumber": commit_number,
            "commitUser": self.actor.user_id,
            "changedFields": [],
        }

    def _body(self, owed: _Owed, header: dict[str, Any]) -> dict[str, Any]:
        if owed.fields is not None:
            values = owed.fields
        else:
            record = self.org.store.records[owed.entity][owed.record_ids[0]]
            if owed.change_type == "CREATE":
                values = {k: v for k, v in record.items() if v is not None}
            else:
                values = {name: record.get(name) for name in owed.names}
        body, names = change_body({k: _event_value(k, v) for k, v in values.items()})
        if owed.change_type == "UPDATE":
            header["changedFields"] = names
        return body


def _event_value(name: str, value: Any) -> Any:
    # CometD change events carry datetimes as ISO-8601 UTC with "Z", REST records as "+0000"
    if name in _DATETIME_FIELDS and isinstance(value, str) and value.endswith("+0000"):
        return value[:-5] + "Z"
    return value
