"""Which replay id the Salesforce CDC subscriber may checkpoint (``Watermark``), and its duplicate window.

Delivery semantics, the reason this module exists: a channel's replay id is written only after
Kafka acknowledged (``acks=all``, idempotent producer) every domain event derived from that change
*and from every change received before it* on the channel. Changes may complete out of order
(the subscriber works on several records at once), so ``Watermark`` tracks them in receive order
and only hands out the latest replay id below which everything is done (the highest for CometD's
integers, the last received for the Pub/Sub API's opaque bytes). A crash therefore
resumes from a replay id whose changes are all on Kafka: what follows it is delivered again
(deterministic CloudEvent ids, so downstream inboxes drop the repeats) and nothing is lost.

Owns that bookkeeping, in memory. Must not write anything: the rows (and the pending catch-up
marker a row carries) belong to ``adapters.cdc_checkpoints``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from adapters.cdc_checkpoints import Checkpoint, ReplayId


@dataclass
class _Entry:
    replay_id: ReplayId
    at: datetime | None
    done: bool = False


class Watermark:
    """One channel's changes in receive order; completed in any order; the safe position is the
    latest position of the completed prefix.

    Integer replay ids (CometD): the highest of the prefix, not the last. When the platform delivers
    a batch out of order (10, 12, 11), the prefix 10..11 being done means 12 is done too, and the
    position never moves backwards.

    Bytes replay ids (Pub/Sub API): the last entry of the prefix in receive order. They are opaque:
    Salesforce promises nothing about their bytes, so comparing them (as bytes or as numbers) could
    pick a position that is not the latest; the gRPC stream hands a subscription's events out in
    replay order, so the last one received is the latest one. Should an older change be delivered
    again, the position may move back to it: a restart then replays more, and loses nothing.

    One watermark holds one kind: a session reads one source, and a source one kind. A change of
    the other kind is a bug upstream, refused with ``TypeError`` rather than compared.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._safe: _Entry | None = None
        self._kind: type[int] | type[bytes] | None = None
        self._dirty = False

    @property
    def pending(self) -> int:
        return len(self._open)

    def begin(self, replay_id: ReplayId, at: datetime | None) -> int:
        """Register a received change; returns the token to pass to ``done``."""
        kind = bytes if isinstance(replay_id, bytes) else int
        if self._kind is not None and kind is not self._kind:
            raise TypeError(f"a {kind.__name__} replay id in a watermark of {self._kind.__name__} replay ids")
        self._kind = kind
        token = self._next
        self._next += 1
        self._open[token] = _Entry(replay_id, at)
        return token

    def done(self, token: int) -> None:
        """Mark a change as durable on Kafka (or deliberately dropped) and advance the prefix."""
        entry = self._open.get(token)
        if entry is None:
            return
        entry.done = True
        while self._open:
            first_token, first = next(iter(self._open.items()))
            if not first.done:
                break
            del self._open[first_token]
            if self._safe is None or _later(first.replay_id, self._safe.replay_id):
                self._safe, self._dirty = first, True

    @property
    def position(self) -> ReplayId | None:
        """The latest position of the completed prefix so far (None before the first)."""
        return self._safe.replay_id if self._safe is not None else None

    def take(self, channel: str) -> Checkpoint | None:
        """The position to write, once per advance (None when nothing new became safe)."""
        if not self._dirty or self._safe is None:
            return None
        self._dirty = False
        return Checkpoint(channel, self._safe.replay_id, self._safe.at)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Put back a position whose write failed, so the next flush tries again."""
        if self._safe is not None and checkpoint.replay_id == self._safe.replay_id:
            self._dirty = True


def _later(new: ReplayId, safe: ReplayId) -> bool:
    """Whether ``new``, completing the prefix after ``safe``, becomes the position: bytes always
    (receive order, never compared), an int when higher."""
    if isinstance(new, bytes) or isinstance(safe, bytes):
        return True
    return new > safe


class RecentIds:
    """The in-memory duplicate window: identities of the last ``capacity`` changes dispatched.

    Catches the platform's at-least-once redeliveries within one process lifetime; across restarts
    the deterministic CloudEvent ids let downstream inboxes drop what this window forgot.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, keys: Sequence[str]) -> bool:
        return any(key in self._keys for key in keys)

    def add(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
