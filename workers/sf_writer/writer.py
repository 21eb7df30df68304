"""Turns a batch of ``UpdateSalesforceRecord`` commands into as few sObject Collections calls as possible,
and gives every command its own outcome.

Owns: coalescing (one record per id per call; later commands win per field), chunking at 200,
per-record result handling (lock / rolled back → retryable; anything else → permanent), isolating
the culprit when a coalesced record or a whole request is refused (so one bad command never takes
its neighbours to the dead-letter topic), the budget check, and the memory of which field was last
written by which command (so a retried older command never overwrites a newer value). Must not
know Kafka, commit, retry or dead-letter: it returns one outcome per command and the runtime acts.

The chunks of one run (and the halves of a refused request) go out concurrently, at most
``CallGate.limit`` calls at once: each record appears in one chunk only, so concurrent calls never
carry two writes of one record; runs themselves are serialised by the window.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from adapters.salesforce.port import COLLECTION_LIMIT, RecordResult, RecordUpdate, SalesforcePort
from events.errors import FleetError, InvalidPayload, RejectedByUpstream, UpstreamUnavailable
from events.fulfillment import UpdateSalesforceRecord
from workers.crashpoints import crash_point
from workers.sf_writer.gate import CallGate
from workers.sf_writer.governor import DEFERRED_CODE, BudgetGovernor, Priority

log = structlog.get_logger(__name__)

#: same shapes the adapter refuses before sending; checked here so one bad id fails alone
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: request-level refusals caused by a record's content (bisect to find it); others hit every record
_RECORD_CAUSED = (RejectedByUpstream, InvalidPayload)
_NOT_RECORD_CAUSED_CODES = frozenset({"MALFORMED_RESPONSE", "NOT_FOUND"})

Outcome = BaseException | None
Position = tuple[int, int]


@dataclass(frozen=True)
class Pending:
    """One command and where it sits in its source partition: ``(partition, offset)``.

    Commands are keyed by record id, so every command of one record shares a partition and their
    offsets order them; retry and dead-letter copies keep the original position (provenance)."""

    command: UpdateSalesforceRecord
    position: Position = (0, 0)


@dataclass
class _Record:
    """One record of one call: the coalesced fields of ``sources`` (indexes into the batch)."""

    sobject: str
    record_id: str
    fields: dict[str, Any]
    sources: list[int]
    #: per field, the position of the command whose value is being sent
    origin: dict[str, Position]
    high: bool

    def update(self) -> RecordUpdate:
        return RecordUpdate(self.sobject, self.record_id, dict(self.fields))


@dataclass
class WriterStats:
    commands: int = 0
    calls: int = 0
    records_sent: int = 0
    coalesced: int = 0  # commands folded into another command's record
    superseded: int = 0  # commands with nothing left to write (newer values already written)
    deferred: int = 0
    #: deferred commands by their own priority (a record with any high command is never deferred)
    deferred_by_priority: dict[Priority, int] = field(default_factory=lambda: {"high": 0, "low": 0})
    failed_permanent: int = 0
    failed_retryable: int = 0


@dataclass
class _Written:
    """Bounded memory: (record id, field) → position of the command whose value Salesforce holds."""

    capacity: int = 100_000
    seen: OrderedDict[tuple[str, str], Position] = field(default_factory=OrderedDict)

    def newer_than(self, record_id: str, name: str, position: Position) -> bool:
        last = self.seen.get((record_id, name))
        return last is not None and last[0] == position[0] and last[1] > position[1]

    def remember(self, record: _Record) -> None:
        for name, position in record.origin.items():
            self.seen[(record.record_id, name)] = position
            self.seen.move_to_end((record.record_id, name))
        while len(self.seen) > self.capacity:
            self.seen.popitem(last=False)


class SalesforceWriter:
    """``write(batch) -> outcomes``: ``None`` for written (or nothing left to write), else the error.

    ``max_concurrent_calls`` caps this writer's Salesforce calls in flight (``SalesforceSettings.
    max_concurrent_calls``); ``.gate`` and ``.governor`` are read by the metrics."""

    def __init__(
        self,
        salesforce: SalesforcePort,
        governor: BudgetGovernor,
        *,
        chunk_size: int = COLLECTION_LIMIT,
        memory: int = 100_000,
        max_concurrent_calls: int = 4,
    ) -> None:
        self._sf = salesforce
        self.governor = governor
        self.gate = CallGate(max_concurrent_calls)
        self._chunk_size = max(1, min(chunk_size, COLLECTION_LIMIT))
        self._written = _Written(memory)
        self.stats = WriterStats()

    async def write(self, batch: Sequence[Pending]) -> list[Outcome]:
        self.stats.commands += len(batch)
        outcomes: list[Outcome] = [None] * len(batch)
        records = self._coalesce(batch, outcomes)
        admitted = [r for r in records if self._admit(r, outcomes)]
        isolate: list[_Record] = []
        await self._send_all(self._chunks(admitted), outcomes, isolate)
        await self._isolate(isolate, batch, outcomes)
        self._count(batch, outcomes)
        return outcomes

    # --- coalescing -----------------------------------------------------------------------------
    def _coalesce(self, batch: Sequence[Pending], outcomes: list[Outcome]) -> list[_Record]:
        records: dict[tuple[str, str], _Record] = {}
        for index in sorted(range(len(batch)), key=lambda i: batch[i].position):
            pending = batch[index]
            problem = _invalid(pending.command)
            if problem is not None:
                outcomes[index] = problem
                continue
            self._fold(records, index, pending)
        return list(records.values())

    def _fold(self, records: dict[tuple[str, str], _Record], index: int, pending: Pending) -> None:
        cmd = pending.command
        fresh = {
            k: v for k, v in cmd.fields.items() if not self._written.newer_than(cmd.record_id, k, pending.position)
        }
        if not fresh:  # every field was since written by a newer command: nothing to do, success
            self.stats.superseded += 1
            return
        record = records.get((cmd.sobject, cmd.record_id))
        if record is None:
            record = _Record(cmd.sobject, cmd.record_id, {}, [], {}, high=False)
            records[(cmd.sobject, cmd.record_id)] = record
        else:
            self.stats.coalesced += 1
        record.fields.update(fresh)  # later commands win, field by field
        record.origin.update(dict.fromkeys(fresh, pending.position))
        record.sources.append(index)
        record.high = record.high or cmd.priority == "high"

    def _admit(self, record: _Record, outcomes: list[Outcome]) -> bool:
        # a record with any high-priority command is high: the low-priority fields ride along for free
        if self.governor.admits("high" if record.high else "low"):
            return True
        deferral = self.governor.deferral(record.record_id)
        for index in record.sources:
            outcomes[index] = deferral
        return False

    # --- sending --------------------------------------------------------------------------------
    def _chunks(self, records: list[_Record]) -> list[list[_Record]]:
        return [records[start : start + self._chunk_size] for start in range(0, len(records), self._chunk_size)]

    async def _send_all(self, chunks: list[list[_Record]], outcomes: list[Outcome], isolate: list[_Record]) -> None:
        """Send chunks of distinct records concurrently; the gate bounds the calls in flight."""
        if len(chunks) == 1:  # the common case: no task to spawn
            await self._send(chunks[0], outcomes, isolate)
            return
        async with asyncio.TaskGroup() as group:
            for chunk in chunks:
                group.create_task(self._send(chunk, outcomes, isolate))

    async def _send(self, chunk: list[_Record], outcomes: list[Outcome], isolate: list[_Record]) -> None:
        self.stats.calls += 1
        self.stats.records_sent += len(chunk)
        try:
            async with self.gate.slot():
                answered = False
                try:
                    results = await self._sf.update_records([r.update() for r in chunk], all_or_none=False)
                    answered = True
                except FleetError as exc:
                    answered = exc.status is not None  # an HTTP answer carries a fresh Sforce-Limit-Info
                    raise
                finally:
                    if answered:
                        self.governor.observed()
            crash_point("sf-writer.patched")  # chaos runs: written in Salesforce, offsets not committed
        except _RECORD_CAUSED as exc:
            if exc.code in _NOT_RECORD_CAUSED_CODES or len(chunk) == 1:
                self._refused(chunk, exc, outcomes, isolate)
                return
            # one record's content refused the whole request: halve until the culprit stands alone
            log.warning("sf_writer_request_refused_bisecting", records=len(chunk), code=exc.code)
            half = len(chunk) // 2
            await self._send_all([chunk[:half], chunk[half:]], outcomes, isolate)
            return
        except Exception as exc:  # transient or unclassified: every command of the call gets it
            for record in chunk:
                _set(outcomes, record.sources, exc)
            return
        for record, result in zip(chunk, results, strict=True):
            self._settle(record, result, outcomes, isolate)

    def _settle(self, record: _Record, result: RecordResult, outcomes: list[Outcome], isolate: list[_Record]) -> None:
        if result.success:
            self._written.remember(record)
            return
        message = f"{record.sobject} {record.record_id}: " + "; ".join(f"{e.code} {e.message}" for e in result.errors)
        if result.retriable:  # a lock or a sibling's rollback: the same write may pass later
            _set(outcomes, record.sources, UpstreamUnavailable(message, upstream="salesforce", code=result.error_code))
            return
        error = RejectedByUpstream(message, upstream="salesforce", code=result.error_code)
        self._refused([record], error, outcomes, isolate)

    def _refused(
        self, chunk: list[_Record], error: FleetError, outcomes: list[Outcome], isolate: list[_Record]
    ) -> None:
        for record in chunk:
            if len(record.sources) > 1 and error.code not in _NOT_RECORD_CAUSED_CODES:
                isolate.append(record)  # several commands were merged: find which one is refused
            else:
                _set(outcomes, record.sources, error)

    async def _isolate(self, merged: list[_Record], batch: Sequence[Pending], outcomes: list[Outcome]) -> None:
        """Re-send each command of a refused coalesced record on its own, in partition order: round
        ``k`` carries the k-th command of every such record (an id may appear once per call)."""
        rounds = max((len(r.sources) for r in merged), default=0)
        for k in range(rounds):
            found = [self._single(batch, r.sources[k]) for r in merged if k < len(r.sources)]
            singles = [s for s in found if s is not None]
            if singles:
                await self._send_all(self._chunks(singles), outcomes, [])

    def _single(self, batch: Sequence[Pending], index: int) -> _Record | None:
        records: dict[tuple[str, str], _Record] = {}
        self._fold(records, index, batch[index])
        return next(iter(records.values()), None)

    def _count(self, batch: Sequence[Pending], outcomes: list[Outcome]) -> None:
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, FleetError) and outcome.code == DEFERRED_CODE:
                self.stats.deferred += 1
                self.stats.deferred_by_priority[pending.command.priority] += 1
            elif isinstance(outcome, FleetError) and not outcome.retriable:
                self.stats.failed_permanent += 1
            else:
                self.stats.failed_retryable += 1


def _set(outcomes: list[Outcome], sources: list[int], error: BaseException) -> None:
    for index in sources:
        outcomes[index] = error


def _invalid(cmd: UpdateSalesforceRecord) -> InvalidPayload | None:
    if not _ID.match(cmd.record_id):
        return InvalidPayload(
            f"not a Salesforce record id: {cmd.record_id!r}", upstream="salesforce", code="INVALID_ID"
        )
    if not _NAME.match(cmd.sobject) or not all(_NAME.match(name) for name in cmd.fields):
        return InvalidPayload(f"not a Salesforce API name in {cmd.sobject} {sorted(cmd.fields)}", upstream="salesforce")
    if not cmd.fields:
        return InvalidPayload(f"update of {cmd.sobject} {cmd.record_id} sets no field", upstream="salesforce")
    return None
