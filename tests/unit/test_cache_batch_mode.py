"""The cache-invalidator on the real runtime ``Worker`` in batch mode, with a fake consumer and fake ports.

Contract: billing events buffered on a partition reach the handler as batches (far fewer Redis round
trips than events), every event still deletes exactly its keys and gets its own notice, and every
offset is committed; a bad payload is dead-lettered alone; a Redis outage fails a batch, whose records
are then retried (each as a batch of one) until the keys are gone: nothing dead-lettered, nothing lost.
"""

from __future__ import annotations

from adapters.cache import FakeCache
from adapters.mappings import FakeIdMappings, IdMapping
from events.billing import InvoiceChanged
from events.errors import DependencyUnavailable
from events.salesforce import AccountEligibilityChanged
from events.topics import dlq_topic, retry_topic
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.config import BreakerSettings, RuntimeSettings
from workers.runtime import Route, Worker
from workers.runtime.testing import FakeClock, FakeConsumer, LoopbackProducer, WorkerRun

GROUP = "t.cache"
SRC = "t.billing"
RETRY1, RETRY2, DLQ = retry_topic(GROUP, 1), retry_topic(GROUP, 2), dlq_topic(GROUP)
USERS = [IdMapping(f"00000000-0000-4000-8000-{n:012d}", 7000 + n, f"001{n:015d}") for n in range(10)]


class Harness(WorkerRun):
    source_topic = SRC

    def __init__(self, partitions: int = 2) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = FakeCache()
        self.mappings = FakeIdMappings(list(USERS))
        counts = dict.fromkeys((SRC, RETRY1, RETRY2, DLQ), partitions)
        self.consumer = FakeConsumer(counts)
        self.producer = LoopbackProducer(consumer=self.consumer)
        handlers = bind_cache_invalidator(cache=self.cache, mappings=self.mappings)
        route = Route("cache-invalidator", GROUP, (SRC,), handlers, retry_delays_ms=(5_000, 30_000))
        self.worker = Worker(
            route,
            self.consumer,
            self.producer,
            RuntimeSettings(poll_timeout_ms=2, commit_interval_s=0.005, breaker=BreakerSettings(enabled=False)),
            sleep=self.clock.sleep,
            clock=self.clock,
        )

    def invoice(self, n: int, *, partition: int) -> set[str]:
        user = USERS[n % len(USERS)]
        self.consumer.append_event(
            SRC, InvoiceChanged(whmcs_client_id=user.whmcs_client_id, invoice_id=n), partition=partition
        )
        keys = {ck.user_invoices(user.user_id), ck.user_invoice(user.user_id, n)}
        self.cache.values.update(dict.fromkeys(keys, "{}"))
        return keys


async def test_400_invoice_events_on_2_partitions_cost_a_few_round_trips_each_with_its_own_notice() -> None:
    h = Harness()
    expected = set[str]()
    for n in range(400):
        expected |= h.invoice(n, partition=n % 2)
    h.consumer.append_event(SRC, AccountEligibilityChanged(sf_account_id="001:*"), partition=0)  # a bad id

    await h.until(lambda: h.committed(partition=0) == 201 and h.committed(partition=1) == 200)
    await h.finish()

    assert h.cache.values == {} and set(h.cache.invalidated_keys) == expected
    assert len(h.cache.notices) == 400 and len({n.event_id for n in h.cache.notices}) == 400
    assert h.cache.calls.count("invalidate") <= 12, f"{h.cache.calls.count('invalidate')} pipelines for 400"
    assert len(h.mappings.lookups) <= 12
    (dead,) = h.producer.on(DLQ)
    assert dead[1] is not None and b"001:*" in dead[1]


async def test_a_redis_outage_fails_the_batch_and_every_record_is_retried_until_its_keys_are_gone() -> None:
    h = Harness(partitions=1)
    expected = set[str]()
    for n in range(20):
        expected |= h.invoice(n, partition=0)
    h.cache.fail_next_with = DependencyUnavailable("redis down", upstream="redis")

    await h.until(lambda: h.committed(partition=0) == 20)
    await h.finish()

    assert h.cache.values == {} and expected <= set(h.cache.invalidated_keys)
    assert {n.keys for n in h.cache.notices} == {
        (ck.user_invoices(USERS[n % 10].user_id), ck.user_invoice(USERS[n % 10].user_id, n)) for n in range(20)
    }
    assert h.producer.records == [], "retried in place: nothing moved to a retry tier or the dead letter"
