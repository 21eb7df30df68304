"""Which offset of one partition may be committed: the first offset not done yet.

Owns the done/not-done bookkeeping of received records. Must not talk to Kafka: the worker reads
``committable`` and commits it. Offsets are not assumed contiguous (compaction and transaction
markers leave gaps), so the tracker remembers the offsets it was given, in fetch order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class OffsetTracker:
    """Done offsets of one partition; ``committable`` = the first received offset not done yet.

    Kafka's committed offset means "everything before this is done", so a record finished out of
    order (a later key overtaking an earlier one) moves nothing until every earlier record is done.
    In-order completion, the common case, costs one ``popleft`` per record.
    """

    __slots__ = ("_pending", "_done_ahead", "committable", "committed", "received_up_to")

    def __init__(self, start: int | None = None) -> None:
        self._pending: deque[int] = deque()  # received, in fetch order, not yet folded into committable
        self._done_ahead: set[int] = set()  # done while an earlier offset is still pending
        #: the offset a commit would store now (None until something is done)
        self.committable: int | None = start
        #: the offset last committed successfully
        self.committed: int | None = start
        #: one past the last received offset (the consumer's fetch position as this tracker saw it)
        self.received_up_to: int | None = start

    def received(self, offsets: Iterable[int]) -> None:
        self._pending.extend(offsets)
        if self._pending:
            self.received_up_to = self._pending[-1] + 1

    def done(self, offset: int) -> None:
        pending = self._pending
        if pending and pending[0] == offset:
            pending.popleft()
            self.committable = offset + 1
            if self._done_ahead:
                self._fold()
        else:
            self._done_ahead.add(offset)

    def _fold(self) -> None:
        pending, ahead = self._pending, self._done_ahead
        while pending and pending[0] in ahead:
            offset = pending.popleft()
            ahead.discard(offset)
            self.committable = offset + 1

    @property
    def pending(self) -> int:
        """Records received and not yet folded into ``committable`` (buffered or in flight)."""
        return len(self._pending)

    @property
    def first_not_done(self) -> int | None:
        """The lowest received offset not done yet, else ``committable`` (what lag is measured from)."""
        return self._pending[0] if self._pending else self.committable

    def mark_committed(self, offset: int) -> None:
        self.committed = offset


class InOrderTracker:
    """The worker's tracker: for a partition whose records finish strictly in fetch order.

    Each partition's records are finished by one task, front to back of its buffer (batch mode too,
    see ``workers.runtime.batch._finish``), so the first offset not done is always the buffer's head
    and everything fetched before it is done: ``committable`` is one past the last record finished,
    with no per-offset bookkeeping (``OffsetTracker`` costs a ``deque`` append and ``popleft`` per
    record for out-of-order completion, which the worker never does). Gaps (compaction, transaction
    markers) need nothing either: the committed offset is one past a record that was handled.
    """

    __slots__ = ("committable", "committed", "received_up_to")

    def __init__(self) -> None:
        #: the offset a commit would store now (None until something is done)
        self.committable: int | None = None
        #: the offset last committed successfully
        self.committed: int | None = None
        #: one past the last received offset (the consumer's fetch position as this tracker saw it)
        self.received_up_to: int | None = None

    def done(self, offset: int) -> None:
        """``offset`` is finished, and so is every offset received before it (the caller's guarantee)."""
        assert self.committable is None or offset >= self.committable, "records finish in fetch order"
        self.committable = offset + 1

    def mark_committed(self, offset: int) -> None:
        self.committed = offset
