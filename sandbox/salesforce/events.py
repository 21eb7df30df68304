"""The sandbox event bus: change events and platform events, retained for replay, fanned out to CometD.

Owns the global replay-id counter (ids only increase, across channels), a bounded buffer of the
last ``retention`` events per channel, replay-id validation for subscriptions, and the delivery
tricks tests ask for (re-deliver the last event, hold back N events and deliver them reversed).
It also shapes a change event payload exactly as CometD delivers one: ``ChangeEventHeader`` plus
only the changed fields, compound Billing address as a nested ``BillingAddress``. It knows nothing
about HTTP or sessions: ``cometd.py`` listens.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

CDC_ENTITIES = ("Order", "OrderItem", "Product2", "PricebookEntry")
PLATFORM_EVENT = "Account_Eligibility_Update__e"
PLATFORM_CHANNEL = f"/event/{PLATFORM_EVENT}"
#: Billing* record fields travel as the compound ``BillingAddress`` in change events
_ADDRESS_PARTS = {
    "BillingStreet": "Street",
    "BillingCity": "City",
    "BillingState": "State",
    "BillingPostalCode": "PostalCode",
    "BillingCountry": "Country",
}
#: fields a change event never carries (the record id travels in ``recordIds``)
_NOT_IN_EVENTS = frozenset({"Id", "SystemModstamp", "IsDeleted"})

Listener = Callable[[str, dict[str, Any]], None]


def channel_for(entity: str) -> str | None:
    return f"/data/{entity}ChangeEvent" if entity in CDC_ENTITIES else None


def schema_id(channel: str) -> str:
    """A stable, schema-id-looking string per channel (Salesforce sends a base64 Avro schema hash)."""
    digest = hashlib.sha256(channel.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def change_body(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Record fields → (payload fields, changedFields names) with the Billing address compounded."""
    body: dict[str, Any] = {}
    names: list[str] = []
    for name, value in fields.items():
        if name in _NOT_IN_EVENTS:
            continue
        part = _ADDRESS_PARTS.get(name)
        if part is None:
            body[name] = value
            names.append(name)
        else:
            body.setdefault("BillingAddress", {})[part] = value
            names.append(f"BillingAddress.{part}")
    return body, names


class InvalidReplayId(Exception):
    def __init__(self, replay_id: int) -> None:
        # the Bayeux error text Salesforce sends (two spaces after "invalid." on the wire)
        super().__init__(
            f"400::The replayId {{{replay_id}}} you provided was invalid.  Please provide a valid ID, "
            "-2 to replay all events, or -1 to replay only new events."
        )


class EventBus:
    def __init__(self, *, retention: int, clock: Callable[[], datetime]) -> None:
        self.retention = retention
        self._clock = clock
        self._replay_ids = itertools.count(1)
        self.last_replay_id = 0
        self._buffers: dict[str, deque[dict[str, Any]]] = {}
        self._evicted_upto: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._held: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self.channels = {c for e in CDC_ENTITIES if (c := channel_for(e))} | {PLATFORM_CHANNEL}

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, channel: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Assign the next replay id, retain the message, deliver it (or hold it back); return it."""
        replay_id = next(self._replay_ids)
        self.last_replay_id = replay_id
        message = {
            "channel": channel,
            "data": {
                "schema": schema_id(channel),
                "payload": payload,
                "event": {"replayId": replay_id, "EventUuid": str(uuid.uuid4()), "createdDate": _iso(self._clock())},
            },
        }
        self._retain(channel, message)
        if channel in self._held:
            self._hold(channel, message)
        else:
            self._deliver(channel, message)
        return message

    def duplicate_last(self, channel: str) -> dict[str, Any] | None:
        """Deliver the channel's last event again, same replay id (at-least-once delivery)."""
        buffer = self._buffers.get(channel)
        if not buffer:
            return None
        self._deliver(channel, buffer[-1])
        return buffer[-1]

    def reverse_next(self, channel: str, count: int) -> None:
        """Hold the next ``count`` events of ``channel`` and deliver them newest first."""
        self._held[channel] = (count, [])

    def _hold(self, channel: str, message: dict[str, Any]) -> None:
        count, held = self._held[channel]
        held.append(message)
        if len(held) >= count:
            del self._held[channel]
            for late in reversed(held):
                self._deliver(channel, late)

    def _retain(self, channel: str, message: dict[str, Any]) -> None:
        buffer = self._buffers.setdefault(channel, deque())
        buffer.append(message)
        while len(buffer) > self.retention:
            evicted = buffer.popleft()
            self._evicted_upto[channel] = evicted["data"]["event"]["replayId"]

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener(channel, message)

    # --- replay -------------------------------------------------------------------------------
    def cursor(self, channel: str, replay_id: int) -> int:
        """Deliver events with replay id > the returned cursor; raise ``InvalidReplayId`` when
        events after ``replay_id`` have left the retention window (or the id was never issued)."""
        if replay_id == -1:
            return self.last_replay_id
        if replay_id == -2:
            return self._evicted_upto.get(channel, 0)
        if replay_id < self._evicted_upto.get(channel, 0) or replay_id > self.last_replay_id:
            raise InvalidReplayId(replay_id)
        return replay_id

    def retained(self, channel: str, after: int = 0) -> list[dict[str, Any]]:
        return [m for m in self._buffers.get(channel, ()) if m["data"]["event"]["replayId"] > after]

    def forget(self) -> None:
        """Drop every retained event (a sandbox reset); replay ids keep increasing."""
        for channel, buffer in self._buffers.items():
            if buffer:
                self._evicted_upto[channel] = buffer[-1]["data"]["event"]["replayId"]
            buffer.clear()
        self._held.clear()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
