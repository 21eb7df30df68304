"""Run one route against the real Kafka (and Postgres) with its health server: the process entry point.

Owns the wiring of the runtime's own infrastructure: the consumer (built here because the worker
owns its lifecycle), the failure-copy producer, the health server, signal handling. Must not bind
handlers: the route arrives with its handlers already bound by the composition root.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import structlog

from adapters import tracing
from adapters.kafka import AiokafkaProducer, ProducerPort, durable_producer, start_client
from workers.config import Settings
from workers.runtime.consumer import build_consumer, consumer_options, partition_counter, revoke_grace_s
from workers.runtime.health import HealthServer
from workers.runtime.route import Route
from workers.runtime.worker import Worker

log = structlog.get_logger(__name__)


def stop_on_signals(stop: asyncio.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """SIGTERM / SIGINT set ``stop``: the worker drains, commits and leaves the group."""
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)


async def serve(
    route: Route,
    settings: Settings,
    stop: asyncio.Event,
    *,
    pool: asyncpg.Pool | None = None,
    consumer_overrides: Mapping[str, Any] | None = None,
    on_ready: Callable[[Worker, int], None] | None = None,
) -> None:
    """Consume ``route`` until ``stop`` is set; ``on_ready(worker, health_port)`` once serving.

    The worker runs on ``settings.runtime`` (a test or benchmark shrinks its knobs there); an unset
    ``revoke_grace_s`` becomes half the consumer's rebalance timeout (``consumer.revoke_grace_s``)."""
    overrides = dict(consumer_overrides or {})
    options = consumer_options(settings.kafka, route.group, **overrides)
    consumer = build_consumer(settings.kafka, route.group, **overrides)
    connection = settings.kafka.connection()
    raw_producer = durable_producer(connection, f"{settings.kafka.client_id}-{route.group}-failures")
    runtime = settings.runtime
    if runtime.revoke_grace_s is None:
        runtime = runtime.model_copy(update={"revoke_grace_s": revoke_grace_s(options, runtime.shutdown_grace_s)})
    try:
        # First of the worker's clients to connect: a credential or certificate Kafka refuses ends the
        # process here with one line (``KafkaSecurityError``), before the consumer joins the group.
        await start_client(raw_producer, connection)
        # retry and dead-letter copies: with tracing on, their hop traceparent is the failing record's span
        failures: ProducerPort = AiokafkaProducer(raw_producer)
        if tracing.enabled():
            failures = tracing.TracingProducer(failures)
        worker = Worker(
            route,
            consumer,
            failures,
            runtime,
            pool=pool,
            partitions_for=partition_counter(raw_producer),
        )
        async with HealthServer(worker, runtime.health_host, runtime.health_port) as health:
            log.info("health_serving", host=runtime.health_host, port=health.port)
            if on_ready is not None:
                assert health.port is not None
                on_ready(worker, health.port)
            await worker.run(stop)
    finally:
        await raw_producer.stop()
