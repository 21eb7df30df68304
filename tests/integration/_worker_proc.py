"""A worker process for the runtime's crash and SIGTERM tests (run with the venv's python).

    python tests/integration/_worker_proc.py BOOTSTRAP DSN TOPIC GROUP NAME HANDLER_DELAY_S COMMIT_INTERVAL_S

Handles ``OrderChanged`` records: records every handler invocation in ``rt_deliveries`` (its own
autocommit statement: it survives a rollback, so redeliveries show) and, in the transaction of its
inbox claim (``adapters.db.claim_event``), the side effect in ``rt_side_effects`` (once per event,
whatever happens). Prints ``READY <health port>`` once serving; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import asyncio
import sys

from adapters.db import claim_event, create_pool
from events.salesforce import OrderChanged
from workers.config import KafkaSettings, RuntimeSettings, Settings
from workers.logs import configure_logging
from workers.runtime import Message, Route, Worker, serve, stop_on_signals

TEST_CONSUMER = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 5_000}


async def main(argv: list[str]) -> None:
    bootstrap, dsn, topic, group, name = argv[:5]
    delay_s, commit_interval_s = float(argv[5]), float(argv[6])
    configure_logging("WARNING", "json")
    pool = await create_pool(dsn, 1, 4)

    async def handle(event: OrderChanged, msg: Message) -> None:
        await pool.execute("INSERT INTO rt_deliveries (event_id, worker) VALUES ($1, $2)", msg.event_id, name)
        async with pool.acquire() as conn, conn.transaction():
            fresh = await claim_event(
                conn,  # type: ignore[arg-type]  # a pool proxy is a Connection at run time
                group=group,
                event_id=msg.event_id,
                event_type=msg.event_type,
                topic=msg.source_topic,
                partition=msg.source_partition,
                offset=msg.source_offset,
            )
            if not fresh:
                return
            await conn.execute(
                "INSERT INTO rt_side_effects (event_id, order_id, worker) VALUES ($1, $2, $3)",
                msg.event_id,
                event.sf_order_id,
                name,
            )
            if delay_s:
                await asyncio.sleep(delay_s)

    settings = Settings(
        kafka=KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6_000, heartbeat_interval_ms=500),
        runtime=RuntimeSettings(
            shutdown_grace_s=5, health_port=0, commit_interval_s=commit_interval_s, commit_every=10**9
        ),
    )
    route = Route(name, group, (topic,), {OrderChanged: handle}, retry_delays_ms=(1_000, 2_000))
    stop = asyncio.Event()
    stop_on_signals(stop)

    def ready(worker: Worker, port: int) -> None:
        print(f"READY {port}", flush=True)

    try:
        await serve(
            route,
            settings,
            stop,
            pool=pool,
            consumer_overrides=TEST_CONSUMER,
            on_ready=ready,
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
