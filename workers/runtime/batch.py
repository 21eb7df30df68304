"""Batch-handler mode: one handler call for the consecutive records of a partition, one outcome per record.

For handlers whose upstream takes many records per request (the sf-writer: 200 records per
sObject Collections call). A ``BatchHandler`` in a route's dispatch table makes the worker's
partition loop hand it the head record plus the buffered records right behind it that the same
handler takes (up to ``max_batch``; on a retry tier only those already due), then finish each
record in offset order exactly as a single record is finished:

* ``None`` → done;
* an exception → the worker's own failure path for that record alone (in-place attempts through
  the handler as a batch of one, then retry tiers, then the dead letter; the circuit breaker
  counts it), so one refused record never takes its neighbours with it;
* ``Defer(error)`` → neither done nor failed: the record moves to the next retry tier at once (the
  dead letter after the last), with no in-place attempt and without counting against the circuit
  breaker. For records a handler chose not to process yet (the API budget governor), which must
  neither hold the partition nor make the breaker pause the records it does process.

Commits stay contiguous: a record is marked done only once finished, in offset order, so the
committed offset never passes a record whose copy Kafka has not acknowledged. Cancellation
(shutdown, revocation) leaves the unfinished records uncommitted: they are redelivered.

Owns the batch loop only; must not hold business rules. The partition task's hook is one check of
the dispatch entry (``workers.runtime.dispatch``); this module uses the public pieces the partition
task uses too (``FailurePath`` for failures, ``Decoder.validated``, ``Dispatcher.finish``), so
failure handling has one implementation. A batch holds its whole partition (its back-offs pause it)
and starts only when no key of the partition is in flight.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from events import failure as fh
from events.errors import FleetError
from events.failure import Stage
from workers.logs import set_record_context
from workers.runtime.consumer import ConsumerRecord
from workers.runtime.failure import FailureInfo
from workers.runtime.message import Message, header_int
from workers.runtime.policy import Verdict

if TYPE_CHECKING:
    from workers.runtime.dispatch import Dispatcher
    from workers.runtime.partition import Partition

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Defer:
    """Outcome: move this record on to the next retry tier now; ``error`` (retryable) names why in
    the failure headers and, after the last tier, in the dead letter."""

    error: FleetError


Outcome = BaseException | Defer | None
BatchFn = Callable[[Sequence[Message]], Awaitable[Sequence[Outcome]]]


class BatchHandler:
    """A route handler that takes a batch. Also a plain ``Handler``: a call with one record is a
    batch of one (in-place retries and every non-batch caller use that), raising its error."""

    def __init__(self, fn: BatchFn, *, max_batch: int = 200) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn = fn
        self.max_batch = max_batch

    async def __call__(self, event: Any, msg: Message) -> None:
        (outcome,) = await self.handle_batch([msg])
        if isinstance(outcome, Defer):
            raise outcome.error
        if outcome is not None:
            raise outcome

    async def handle_batch(self, msgs: Sequence[Message]) -> list[Outcome]:
        outcomes = list(await self.fn(msgs))
        if len(outcomes) != len(msgs):
            raise RuntimeError(f"batch handler returned {len(outcomes)} outcomes for {len(msgs)} records")
        return outcomes


Entry = tuple[ConsumerRecord, dict[str, bytes | None], Message]


async def run_batch(d: Dispatcher, st: Partition, head: Entry, handler: BatchHandler) -> None:
    """Handle ``head`` (the partition's first buffered record, decoded) and the records behind it."""
    entries = [head, *_followers(d, st, handler)]
    set_record_context(_BatchLog(head[2]))  # during the batch call: the head's coordinates, no record ids
    breaker, failures, hold = d.breaker, d.failures, d.partition_hold(st)
    trial = False if breaker.closed else await breaker.admit()
    started = st.busy_since = time.perf_counter()
    try:
        outcomes = await handler.handle_batch([msg for _, _, msg in entries])
    except Exception as exc:  # the batch call itself failed: every record takes the failure path
        outcomes = [exc] * len(entries)
    finally:
        st.busy_since = None
    elapsed = time.perf_counter() - started
    try:
        for (rec, h, msg), outcome in zip(entries, outcomes, strict=True):
            st.stats.observe(elapsed)
            set_record_context(msg)
            if outcome is None:
                st.stats.processed += 1
                breaker.record_success()
                trial = False  # a success closes a half-open breaker
            elif isinstance(outcome, Defer):
                await _defer(d, st, rec, h, msg, handler, outcome)
            else:
                await failures.failed(st, st, hold, rec, h, msg, handler, _exception(outcome), trial)
                trial = False  # failed() settled the trial
            assert st.buffer and st.buffer[0] is rec, "batch records finish in buffer order"
            st.buffer.popleft()
            d.finish(st, rec)
    finally:
        if trial:
            breaker.release_trial()


def _followers(d: Dispatcher, st: Partition, handler: BatchHandler) -> list[Entry]:
    """The buffered records right behind the head that ``handler`` takes and that are due now."""
    out: list[Entry] = []
    now_ms = d.clock() * 1000
    for rec in itertools.islice(st.buffer, 1, handler.max_batch):
        h: dict[str, bytes | None] = dict(rec.headers)
        if st.tier and header_int(h, fh.NOT_BEFORE) > now_ms:
            break  # not due yet: the loop waits for it as a head record
        msg = d.decoder.validated(rec, h, handler, st.tier)
        if msg is None:
            break  # undecodable, skipped or another handler's: the loop takes it as usual
        out.append((rec, h, msg))
    return out


class _BatchLog:
    """The log context while a batch call runs: the head record's coordinates and type, no record ids
    (the outcomes are then logged under each record's own context)."""

    __slots__ = ("head",)

    def __init__(self, head: Message) -> None:
        self.head = head

    def log_context(self) -> dict[str, Any]:
        head = self.head
        return {
            "topic": head.topic,
            "partition": head.partition,
            "offset": head.offset,
            "event_id": None,
            "event_type": head.event_type,
            "correlation_id": None,
            "key": None,
        }


async def _defer(
    d: Dispatcher,
    st: Partition,
    rec: ConsumerRecord,
    h: dict[str, bytes | None],
    msg: Message,
    handler: BatchHandler,
    outcome: Defer,
) -> None:
    failures, hold = d.failures, d.partition_hold(st)
    decision = failures.policy.decide(outcome.error, st.tier)
    if decision.verdict not in (Verdict.RETRY_TOPIC, Verdict.DEAD_LETTER):
        # a route without dead letters cannot move records: the usual failure path blocks instead
        await failures.failed(st, st, hold, rec, h, msg, handler, outcome.error, False)
        return
    now = d.clock()
    await failures.move(st, st, hold, rec, h, decision, FailureInfo(outcome.error, Stage.HANDLE, 1, now, now))


def _exception(outcome: BaseException) -> Exception:
    # the loop's failure path takes Exceptions; a BaseException outcome (never expected) is wrapped
    return outcome if isinstance(outcome, Exception) else RuntimeError(repr(outcome))
