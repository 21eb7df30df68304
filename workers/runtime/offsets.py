"""Which offset of one partition may be committed: the first offset not done yet.

Owns the done/not-done bookkeeping of the records a partition task took from its buffer. Must not
talk to Kafka: ``workers.runtime.commits`` reads ``committable`` and commits it. Offsets are not
assumed contiguous (compaction and transaction markers leave gaps), so the tracker remembers the
offsets it was given, in the order the task took them (= offset order).
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Done offsets of one partition; ``committable`` = one past everything done, never past a record
    that is not.

    Kafka's committed offset means "everything before this is done", so a record finished out of
    order (another key overtaking an earlier record, see ``workers.runtime.dispatch``) moves nothing
    until every earlier record is done. The common case costs no bookkeeping at all: a record
    finished while nothing earlier is unfinished sets ``committable`` directly (``finish`` with no
    ``started`` record). Only while some record is in flight or queued behind its key are offsets
    remembered (one ``append`` and one ``popleft`` each).
    """

    __slots__ = ("_pending", "_done_ahead", "committable", "committed", "committed_metadata", "received_up_to")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # taken from the buffer, in offset order, not folded yet
        self._done_ahead: set[int] = set()  # done while an earlier offset in _pending is not
        #: the offset a commit would store now (None until something is done)
        self.committable: int | None = None
        #: the offset last committed successfully, and the metadata committed with it
        self.committed: int | None = None
        self.committed_metadata = ""
        #: one past the last received offset (the consumer's fetch position as this tracker saw it)
        self.received_up_to: int | None = None

    def start(self, offset: int) -> None:
        """``offset`` left the buffer unfinished (in flight, or queued behind its key). Offsets are
        started in offset order: every record taken from the buffer while another is pending is
        either started or finished (``finish`` remembers it as done ahead)."""
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        """``offset`` is done: handled, skipped, or its failure copy acknowledged by Kafka."""
        pending = self._pending
        if not pending:  # nothing earlier unfinished, and the record was never started: the hot path
            self.committable = offset + 1
        elif pending[0] == offset:
            pending.popleft()
            self.committable = offset + 1
            if self._done_ahead:
                self._fold()
        elif offset > pending[-1]:  # finished at once while earlier records are still pending
            pending.append(offset)
            self._done_ahead.add(offset)
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
        """Records taken from the buffer and not yet folded into ``committable``."""
        return len(self._pending)

    @property
    def first_not_done(self) -> int | None:
        """The lowest started offset not done yet, else None."""
        return self._pending[0] if self._pending else None

    def commit_point(self) -> tuple[int | None, frozenset[int]]:
        """What a commit would store now: the first offset not done (None: nothing taken yet) and
        the offsets after it that are done (``workers.runtime.done_ahead`` carries them)."""
        ahead = frozenset(self._done_ahead)
        if self.committable is not None:
            return self.committable, ahead
        # nothing done in order yet: the first record taken is where the partition started, worth
        # committing again only to carry what is done after it
        return (self.first_not_done if ahead else None), ahead

    def mark_committed(self, offset: int, metadata: str = "") -> None:
        self.committed, self.committed_metadata = offset, metadata
