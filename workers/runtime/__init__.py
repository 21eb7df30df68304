"""The one consume runtime of the fleet (on aiokafka): routes, the worker loop, retries, dead letters.

    route = Route("cache-invalidator", group, topics, handlers={OrderChanged: invalidate_order})
    worker = Worker(route, consumer, producer, settings.runtime, pool=pool)
    await worker.run(stop)                      # or: await serve(route, settings, stop, pool=pool)

Handlers are ``async def handle(event, msg) -> None``; they raise to fail and the error tree
(``events.errors``) decides: transient → in-place attempts, then ``<group>.retry.<n>``, then
``<group>.dlq``; permanent → ``<group>.dlq`` at once. A handler claims its event id in the inbox in
the transaction of its own writes (``adapters.db.claim_event``), so its effects happen once per event.
See ``docs/dead-letters.md`` for the failure-record contract.
"""

from workers.runtime.breaker import CircuitBreaker
from workers.runtime.consumer import ConsumerPort, build_consumer, consumer_options, partition_counter
from workers.runtime.health import HealthServer
from workers.runtime.inbox import purge_once
from workers.runtime.message import Message
from workers.runtime.offsets import OffsetTracker
from workers.runtime.policy import Decision, RetryPolicy, Verdict
from workers.runtime.route import Handler, Route
from workers.runtime.serve import serve, stop_on_signals
from workers.runtime.worker import Worker

__all__ = [
    "CircuitBreaker",
    "ConsumerPort",
    "Decision",
    "Handler",
    "HealthServer",
    "Message",
    "OffsetTracker",
    "RetryPolicy",
    "Route",
    "Verdict",
    "Worker",
    "build_consumer",
    "consumer_options",
    "partition_counter",
    "purge_once",
    "serve",
    "stop_on_signals",
]
