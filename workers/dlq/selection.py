"""Deciding, record by record, what a replay or purge does with each dead letter (pure functions).

Owns the selection rules shared by replay and purge (purged records are hidden, filters apply,
already-replayed records are skipped unless ``--again``, ``--limit`` defers the rest), the loop
guard, and the exact records replay produces (a group's copies, or an ingress body's re-ingested
events, ``workers.dlq.ingress``). Must not do I/O.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from events import failure as fh
from events.envelope import H_HOP_TRACEPARENT
from events.topics import parked_topic, retry_topic
from workers.dlq.filters import Filter
from workers.dlq.models import DeadLetter, Header

REPLAYED = "replayed"
PARKED = "parked"
REFUSED = "refused"  # an ingress body that still fails to parse: nothing is sent for it

#: (key, value, headers) of one record to produce
Record = tuple[bytes | None, bytes | None, Sequence[Header]]

# Summary counters, in the order the summary prints them.
FILTERED_OUT = "filtered_out"
PURGED_HIDDEN = "purged_hidden"
SKIPPED_ALREADY_REPLAYED = "skipped_already_replayed"
DEFERRED_BY_LIMIT = "deferred_by_limit"
SELECTED = "selected"


@dataclass
class Selector:
    """Feed every record of the DLQ to ``offer``, then call ``finish`` for the ones to act on.

    ``finish`` orders them oldest first across partitions (by dead-letter time) while keeping each
    partition's offset order, so ``--limit 100`` means "the 100 oldest" and the copies of one key
    (one partition) are still sent in their DLQ order.
    """

    filt: Filter
    purged: Collection[tuple[int, int]] = ()
    done: Collection[tuple[int, int]] = ()
    again: bool = False
    limit: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    _candidates: dict[int, list[DeadLetter]] = field(default_factory=dict)

    def offer(self, dl: DeadLetter) -> None:
        verdict = self._verdict(dl)
        if verdict == SELECTED:
            self._candidates.setdefault(dl.partition, []).append(dl)
        else:
            self.counts[verdict] += 1

    def _verdict(self, dl: DeadLetter) -> str:
        if dl.coordinates in self.purged:
            return PURGED_HIDDEN
        if not self.filt.matches(dl):
            return FILTERED_OUT
        if dl.coordinates in self.done and not self.again:
            return SKIPPED_ALREADY_REPLAYED
        return SELECTED

    def finish(self) -> list[DeadLetter]:
        # heapq.merge only ever takes the head of each partition's list: offset order is kept
        # even where dead-letter timestamps of one partition are not monotonic.
        ordered = list(heapq.merge(*(sorted(c, key=_offset) for c in self._candidates.values()), key=_age))
        chosen = ordered if self.limit is None else ordered[: self.limit]
        self.counts[DEFERRED_BY_LIMIT] += len(ordered) - len(chosen)
        self.counts[SELECTED] = len(chosen)
        return chosen


def _offset(dl: DeadLetter) -> int:
    return dl.offset


def _age(dl: DeadLetter) -> tuple[int, int]:
    return dl.timestamp_ms, dl.partition


@dataclass(frozen=True)
class Action:
    """What replay does with one selected dead letter, and where the copy goes.

    ``records``: for an ingress dead letter, the events its body translates to (sent instead of the
    dead letter itself); ``reason``: why a ``REFUSED`` one is not sent.
    """

    dl: DeadLetter
    outcome: str  # REPLAYED | PARKED | REFUSED
    target_topic: str
    target_partition: int
    records: tuple[Record, ...] = ()
    reason: str = ""


def plan_action(dl: DeadLetter, *, group: str, max_replays: int, partitions: dict[str, int]) -> Action:
    """The loop guard: a dead letter already replayed ``max_replays`` times is parked for a human,
    because replaying it again would only feed the same failure back into the worker."""
    outcome = PARKED if dl.replay_count >= max_replays else REPLAYED
    topic = parked_topic(group) if outcome == PARKED else retry_topic(group, 1)
    # The source partition decides, as the runtime's own dead-lettering does: one key stays on one
    # partition, so replays of the same aggregate reach the worker in their DLQ order.
    partition = dl.header_int(fh.SOURCE_PARTITION, dl.partition) % partitions[topic]
    return Action(dl, outcome, topic, partition)


def replay_headers(dl: DeadLetter, *, job_id: str, now_ms: int) -> list[Header]:
    """Headers of the copy sent to ``<group>.retry.1``.

    The original headers (byte for byte, in order) and the provenance headers are kept, so the worker
    decodes the very event that failed and a second failure keeps pointing at the first source;
    ``replay_count`` goes up by one (the loop guard's counter), ``replay_job`` names this job, and
    ``retry_not_before`` = now makes the worker take it at once.
    """
    kept = [(n, v) for n, v in dl.provenance_headers() if n != fh.REPLAY_COUNT]
    return [
        *dl.original_headers(),
        *kept,
        (fh.REPLAY_COUNT, str(dl.replay_count + 1).encode()),
        (fh.REPLAY_JOB, job_id.encode()),
        (fh.RETRY_TIER, b"1"),
        (fh.NOT_BEFORE, str(now_ms).encode()),
    ]


def parked_headers(dl: DeadLetter, *, job_id: str) -> list[Header]:
    """Headers of the copy sent to ``<group>.parked``: the dead letter as it is, plus the parking job."""
    return [*dl.original_headers(), *dl.provenance_headers(), (fh.REPLAY_JOB, job_id.encode())]


def action_headers(action: Action, *, job_id: str, now_ms: int) -> list[Header]:
    if action.outcome == PARKED:
        return parked_headers(action.dl, job_id=job_id)
    return replay_headers(action.dl, job_id=job_id, now_ms=now_ms)


def action_records(action: Action, *, job_id: str, now_ms: int) -> list[Record]:
    """What replay produces for ``action``, in order: the dead letter's copy, or the re-ingested
    events of an ingress body, each with ``replay_job`` appended (the audit trail, and what an
    interrupted job's successor looks for on the target partition)."""
    if action.records:
        job = (fh.REPLAY_JOB, job_id.encode())
        return [(key, value, [*headers, job]) for key, value, headers in action.records]
    # a replay is a new hop: the dead letter's ``traceparent`` (the failed consumer's span) goes; its
    # ``ce_traceparent`` stays, so the replayed record's span links the original trace (docs/tracing.md)
    headers = [(n, v) for n, v in action_headers(action, job_id=job_id, now_ms=now_ms) if n != H_HOP_TRACEPARENT]
    return [(action.dl.key, action.dl.value, headers)]
