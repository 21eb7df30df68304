"""The runtime's batch-handler mode (``workers.runtime.batch``) and the sf-writer on it, with a fake consumer.

Contract: a ``BatchHandler`` gets the head record plus the buffered records behind it that it takes
(up to ``max_batch``); every record then finishes on its own, in offset order: success → done; an
error → that record alone goes through the usual failure path (in-place attempts as a batch of one,
retry tiers, dead letter); ``Defer`` → straight to the next retry tier (the dead letter after the
last) without in-place attempts and without counting against the circuit breaker. Commits never
pass a record that is not finished; a record the batch handler does not take stops the batch and
is handled by the loop as usual. End to end with ``FakeSalesforce``: N commands → far fewer calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from events import failure as fh
from events.errors import RateLimited, RejectedByUpstream, UpstreamUnavailable
from events.fulfillment import UpdateSalesforceRecord
from events.salesforce import CatalogChanged
from events.topics import dlq_topic, retry_topic
from sandbox import demo_data
from workers.config import BreakerSettings, RuntimeSettings, Settings
from workers.runtime import Message, Route, Worker
from workers.runtime.batch import BatchHandler, Defer, Outcome
from workers.runtime.testing import FakeClock, FakeConsumer, LoopbackProducer, WorkerRun

GROUP = "t.sfw"
SRC = "t.writeback"
RETRY1, RETRY2, DLQ = retry_topic(GROUP, 1), retry_topic(GROUP, 2), dlq_topic(GROUP)


def command(n: int, **fields: Any) -> UpdateSalesforceRecord:
    return UpdateSalesforceRecord(
        sobject="Order", record_id=demo_data.sf_id("801", n), fields=fields or {"Status": "X"}
    )


class Scripted:
    """A batch function recording each batch's record numbers; outcomes scripted per record number."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.script: dict[int, list[Outcome]] = {}
        self.gate: asyncio.Event | None = None

    async def __call__(self, msgs: Sequence[Message]) -> list[Outcome]:
        numbers = [int(m.event.record_id[10:16]) for m in msgs]
        self.batches.append(numbers)
        if self.gate is not None:
            await self.gate.wait()
        return [self.script[n].pop(0) if self.script.get(n) else None for n in numbers]

    def seen(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


class Harness(WorkerRun):
    source_topic = SRC

    def __init__(self, handler: Any, *, partitions: int = 1, breaker: BreakerSettings | None = None) -> None:
        super().__init__()
        self.clock = FakeClock()
        counts = {SRC: partitions, RETRY1: partitions, RETRY2: partitions, DLQ: partitions}
        self.consumer = FakeConsumer(counts)
        self.producer = LoopbackProducer(consumer=self.consumer)
        route = Route("sf-writer", GROUP, (SRC,), {UpdateSalesforceRecord: handler}, retry_delays_ms=(5_000, 30_000))
        self.worker = Worker(
            route,
            self.consumer,
            self.producer,
            RuntimeSettings(
                poll_timeout_ms=2, commit_interval_s=0.005, breaker=breaker or BreakerSettings(enabled=False)
            ),
            sleep=self.clock.sleep,
            clock=self.clock,
        )

    def send(self, n: int, *, partition: int = 0, **fields: Any) -> None:
        self.consumer.append_event(SRC, command(n, **fields), partition=partition)


async def test_buffered_records_reach_the_handler_as_batches_in_order() -> None:
    fn = Scripted()
    h = Harness(BatchHandler(fn, max_batch=50))
    for n in range(1, 121):
        h.send(n)

    await h.until(lambda: h.committed() == 120)
    await h.finish()

    assert fn.seen() == list(range(1, 121))
    assert len(fn.batches) <= 5 and max(len(b) for b in fn.batches) <= 50


async def test_a_failing_record_is_retried_alone_and_its_neighbours_are_done() -> None:
    fn = Scripted()
    fn.script[3] = [UpstreamUnavailable("lock", code="UNABLE_TO_LOCK_ROW")]
    h = Harness(BatchHandler(fn))
    for n in range(1, 6):
        h.send(n)

    await h.until(lambda: h.committed() == 5)
    await h.finish()

    assert fn.batches[0] == [1, 2, 3, 4, 5] and fn.batches[1] == [3], "the retry is a batch of one"
    assert h.producer.records == []


async def test_a_permanent_failure_dead_letters_only_that_record() -> None:
    fn = Scripted()
    fn.script[2] = [RejectedByUpstream("validation", code="FIELD_CUSTOM_VALIDATION_EXCEPTION")]
    h = Harness(BatchHandler(fn))
    for n in range(1, 4):
        h.send(n)

    await h.until(lambda: h.committed() == 3)
    await h.finish()

    (dead,) = h.on(DLQ)
    assert dead[fh.ERROR_CODE] == b"FIELD_CUSTOM_VALIDATION_EXCEPTION" and dead[fh.SOURCE_OFFSET] == b"1"
    assert fn.batches == [[1, 2, 3]]


async def test_a_deferred_record_moves_on_at_once_and_never_trips_the_breaker() -> None:
    """Deferrals are not failures: no in-place back-off holds the partition, and a run of them
    does not make the breaker pause the partition for the records that are written."""
    fn = Scripted()
    deferral = Defer(RateLimited("budget", code="API_BUDGET_RESERVED", retry_after=6.0))
    for n in range(1, 31):
        fn.script[n] = [deferral] * 3
    h = Harness(BatchHandler(fn), breaker=BreakerSettings(enabled=True, window=10, min_outcomes=5))
    for n in range(1, 31):
        h.send(n)
    h.send(99)

    await h.until(lambda: h.committed() == 31 and len(h.on(DLQ)) == 30)
    await h.finish()

    assert h.worker.breaker.closed and h.worker.breaker.trips == 0
    assert len(h.on(RETRY1)) == 30 and len(h.on(RETRY2)) == 30
    assert all(d[fh.ERROR_CODE] == b"API_BUDGET_RESERVED" for d in h.on(DLQ))
    assert 99 in fn.seen()
    assert all(s >= 5.0 for s in h.clock.sleeps), "no in-place back-off: only the tiers' scheduled waits"


async def test_nothing_is_committed_while_the_batch_is_in_flight() -> None:
    fn = Scripted()
    fn.gate = asyncio.Event()
    h = Harness(BatchHandler(fn))
    for n in range(1, 4):
        h.send(n)

    await h.until(lambda: len(fn.batches) == 1)
    await asyncio.sleep(0.03)
    assert h.committed() is None
    fn.gate.set()
    await h.until(lambda: h.committed() == 3)
    await h.finish()


async def test_a_record_the_batch_handler_does_not_take_ends_the_batch() -> None:
    fn = Scripted()
    h = Harness(BatchHandler(fn))
    h.send(1)
    h.send(2)
    h.consumer.append_event(SRC, CatalogChanged(entity="Product2", record_id="01t1"))  # not this route's
    h.consumer.append(SRC, b"not json", headers=[("ce_specversion", b"1.0")])  # undecodable
    h.send(3)

    await h.until(lambda: h.committed() == 5)
    await h.finish()

    assert fn.batches == [[1, 2], [3]]
    assert len(h.on(DLQ)) == 1 and h.worker.metrics.topic(SRC).skipped == 1


async def test_the_plain_handler_call_is_a_batch_of_one() -> None:
    fn = Scripted()
    fn.script[1] = [Defer(RateLimited("budget", code="API_BUDGET_RESERVED"))]
    handler = BatchHandler(fn)
    msg = Message(command(1), GROUP, SRC, 0, 0, 0, None, None, [], {}, UpdateSalesforceRecord.TYPE)

    try:
        await handler(msg.event, msg)
    except RateLimited as exc:
        assert exc.code == "API_BUDGET_RESERVED"
    else:
        raise AssertionError("a deferral seen outside batch mode raises its error")
    await handler(msg.event, msg)


# --- the sf-writer on the runtime, with FakeSalesforce -----------------------------------------
async def test_the_sf_writer_turns_400_commands_on_4_partitions_into_a_few_calls() -> None:
    from adapters.salesforce import FakeSalesforce
    from workers.sf_writer.route import bind_sf_writer

    fake = FakeSalesforce()
    for n in range(1, 401):
        fake.add_record("Order", {"Id": demo_data.sf_id("801", n)})
    fake.fail_record(demo_data.sf_id("801", 7), "FIELD_CUSTOM_VALIDATION_EXCEPTION", "bad")
    handlers = bind_sf_writer(salesforce=fake, settings=Settings())
    h = Harness(handlers[UpdateSalesforceRecord], partitions=4)
    for n in range(1, 401):
        h.send(n, partition=n % 4, Status="Activated")

    await h.until(lambda: all(h.committed(SRC, p) == 100 for p in range(4)))
    await h.finish()

    assert len(fake.collection_calls) <= 12, f"{len(fake.collection_calls)} calls for 400 commands"
    (dead,) = h.on(DLQ)
    assert dead[fh.ERROR_CODE] == b"FIELD_CUSTOM_VALIDATION_EXCEPTION"
    written = [r for r in fake.records["Order"].values() if r.get("Status") == "Activated"]
    assert len(written) == 399


def test_the_composition_root_binding_is_one_batch_handler() -> None:
    from types import SimpleNamespace

    from adapters.salesforce import FakeSalesforce
    from workers.sf_writer.route import bind

    table = bind(SimpleNamespace(salesforce=FakeSalesforce(), settings=Settings()))  # type: ignore[arg-type]

    assert list(table) == [UpdateSalesforceRecord]
    assert isinstance(table[UpdateSalesforceRecord], BatchHandler)
