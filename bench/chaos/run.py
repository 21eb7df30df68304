"""One chaos run, start to report: up, load under the fault schedule, quiet, replay, check, write.

1. Up: the private stack, the sandboxes, every worker instance (``cluster``); the webhook users'
   id_mappings; an unlimited Salesforce API budget (the run measures faults, not the governor).
2. Load and faults at once for ``duration_s``: orders seeded then approved open loop, webhooks to
   both receivers with duplicates, the schedule carried out (``faults``); crash points armed in
   every instance (``ChaosConfig.crash_points``).
3. Quiet: vendor faults off; wait until every approved order has an outcome in Salesforce and the
   consumer groups have no lag (bounded by ``quiet_timeout_s``).
4. The ops engineer's turn: every group with dead letters is replayed once (``fleet dlq replay``, the
   runbook's command, to the group's own retry topic), then quiet again.
5. The checker (``checker``, which shares no code with the fleet) reads the end state; the report
   carries the seed, the schedule and every figure (``__main__`` writes it to ``--out``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from adapters.db import create_pool, seed_id_mappings
from bench.chaos import checker
from bench.chaos.cluster import Cluster, Echo, until
from bench.chaos.config import ROOT, ChaosConfig
from bench.chaos.faults import Faults
from bench.chaos.load import History, Orders, Webhooks, order_plan, users
from bench.chaos.schedule import describe, make_schedule
from workers.cache_keys import user_invoice

GROUPS = ("fleet.fulfillment", "fleet.sf-writer", "fleet.cache-invalidator")
SEED_SHARE = 0.15  # of the run spent seeding orders before the approvals start


async def run(config: ChaosConfig, echo: Echo) -> dict[str, Any]:
    schedule = make_schedule(config)
    echo(f"{config.name}: seed {config.seed}, {config.duration_s:g} s of load and faults; schedule:")
    echo(describe(schedule))
    cluster = Cluster(config)
    history = History()
    report: dict[str, Any] = {
        "run": config.name,
        "seed": config.seed,
        "started_at": datetime.now(UTC).isoformat(),
        "config": _config_json(config),
        "schedule": [f.as_json() for f in schedule],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    began = time.monotonic()
    try:
        await cluster.start(echo)
        report["up_s"] = round(time.monotonic() - began, 1)
        await _prepare(cluster)
        faults = Faults(cluster, echo)
        timings = await _load(config, cluster, history, faults, schedule, echo)
        report["load"] = timings
        report["faults"] = faults.log
        report["quiet"] = await _quiet(config, cluster, history, echo, "after the load")
        report["replayed"] = await _replay_dead_letters(config, echo)
        if report["replayed"]:
            report["quiet_after_replay"] = await _quiet(config, cluster, history, echo, "after the replay")
        report["restarts"] = {s.name: s.restarts for s in cluster.fleet.status()}
        report["check"] = await checker.check(
            history.as_json(),
            salesforce=config.sandbox_url("salesforce"),
            whmcs=config.sandbox_url("whmcs"),
            freebit=config.sandbox_url("freebit"),
            bootstrap=config.bootstrap,
            redis_url=config.redis_url,
        )
        report["history_notes"] = history.notes
    finally:
        report["wall_s"] = round(time.monotonic() - began, 1)
        await cluster.stop()
    return report


async def _prepare(cluster: Cluster) -> None:
    await cluster.unlimited_api_budget()
    pool = await create_pool(cluster.config.dsn, 1, 1)
    try:  # synthetic portal users: the invalidator maps each webhook's client to one user
        rows = [
            {"user_id": u.user_id, "whmcs_client_id": u.client_id, "sf_account_id": f"001CHAOS{u.client_id}"}
            for u in users()
        ]
        await seed_id_mappings(pool, rows)
    finally:
        await pool.close()


async def _load(
    config: ChaosConfig, cluster: Cluster, history: History, faults: Faults, schedule: list[Any], echo: Echo
) -> dict[str, Any]:
    rng = random.Random(config.seed)
    stop = asyncio.Event()
    redis = aioredis.from_url(config.redis_url)
    secret = cluster.settings.whmcs.webhook_secrets[0].get_secret_value()
    webhooks = Webhooks(config, redis, history, secret, user_invoice, random.Random(config.seed + 1))
    async with httpx.AsyncClient(timeout=60.0) as http:
        orders = Orders(config, http, history)
        t0 = time.monotonic()
        created = await orders.seed(order_plan(config, rng))
        echo(
            f"load: {len(created)} orders seeded in {time.monotonic() - t0:.0f} s; approving, webhooks and faults start"
        )
        t1 = time.monotonic()
        span = config.duration_s * (1 - SEED_SHARE)
        try:
            await asyncio.gather(
                orders.approve(created, span, stop),
                webhooks.run(span, stop),
                faults.run(schedule, t1, stop),
            )
        finally:
            await redis.aclose()
    return {"seeded": len(created), "seed_s": round(t1 - t0, 1), "load_s": round(time.monotonic() - t1, 1)}


async def _quiet(config: ChaosConfig, cluster: Cluster, history: History, echo: Echo, label: str) -> dict[str, Any]:
    await cluster.vendor_faults(False)
    began = time.monotonic()
    approved = {i for i, o in history.orders.items() if o.get("approved_at") is not None}

    async def settled() -> bool:
        state = (await cluster.http.get(f"{config.sandbox_url('salesforce')}/_sandbox/state")).json()
        done = {
            o["Id"]
            for o in state["orders"]
            if o.get("Activation_Status__c") == "Activated" or o.get("Activation_Error_Code__c")
        }
        return approved <= done and await _lag(config.bootstrap) == 0 and await cluster.settled()

    waited = await until(settled, config.quiet_timeout_s, every_s=3.0)
    lag = await _lag(config.bootstrap)
    echo(f"quiet {label}: {'in ' + str(waited) + ' s' if waited is not None else 'NOT reached'} (lag {lag})")
    return {"reached": waited is not None, "waited_s": round(time.monotonic() - began, 1), "lag_left": lag}


async def _lag(bootstrap: str) -> int:
    """Records the three groups have not committed yet, over every topic they read (retry tiers included)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        await consumer.start()
        total = 0
        for group in GROUPS:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                return -1  # a group without offsets has not caught up with anything yet
            ends = await consumer.end_offsets(list(committed))
            total += sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items())
        return total
    except Exception:  # noqa: BLE001 - a cluster that cannot answer now has not caught up
        return -1
    finally:
        await consumer.stop()
        await admin.close()


async def _replay_dead_letters(config: ChaosConfig, echo: Echo) -> list[dict[str, Any]]:
    """What the runbook says at 3 a.m.: ``fleet dlq list``, then ``fleet dlq replay -g <group>`` per group."""
    replayed = []
    env = {**os.environ, **config.worker_env(), "FLEET_LOG__LEVEL": "WARNING"}
    listed = _fleet(["dlq", "list", "--json"], env)
    for view in json.loads(listed.stdout or "[]"):
        if not view.get("count"):
            continue
        result = _fleet(["dlq", "replay", "-g", view["group"], "--rate", "50"], env)
        replayed.append(
            {
                "group": view["group"],
                "dead_letters": view["count"],
                "exit": result.returncode,
                "output": result.stdout.strip().splitlines()[-3:],
            }
        )
        echo(f"replayed {view['count']} dead letters of {view['group']} (exit {result.returncode})")
    return replayed


def _fleet(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    fleet = Path(sys.executable).with_name("fleet")
    command = [str(fleet)] if fleet.exists() else [sys.executable, "-m", "workers"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _config_json(config: ChaosConfig) -> dict[str, Any]:
    return {
        "duration_s": config.duration_s,
        "orders_per_type": config.orders_per_type,
        "webhooks": config.webhooks,
        "instances": config.instances,
        "brokers": config.brokers,
        "vendor_fault_rate": config.vendor_fault_rate,
        "duplicate_webhooks": config.duplicate_webhooks,
        "crash_points": config.crash_points,
    }
