"""`fleet dlq` as an operator runs it: the real CLI in a subprocess against the local stack.

Contract: ``list`` and ``show`` describe what is dead-lettered; ``replay --dry-run`` prints one line per
record and changes nothing; ``replay`` sends to ``<group>.retry.1`` and prints a one-line summary;
killing a replay (SIGKILL or SIGTERM) and running it again sends every record exactly once;
``purge`` refuses without the typed group name; ``audit`` shows every job. Each assertion on
output is paired with one on Kafka or Postgres state. The last scenario closes the loop with a real
``workers.runtime`` worker: it dead-letters a record, the operator fixes the cause and replays, and
the worker handles the record exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from asyncio.subprocess import PIPE
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from events.base import to_envelope
from events.errors import InvalidPayload, RejectedByUpstream
from events.salesforce import OrderChanged
from events.topics import TopicSpec, dlq_topic, group_topics, retry_topic
from tests.support import eventually
from workers.config import KafkaSettings, RuntimeSettings, Settings
from workers.dlq.reader import TopicReader
from workers.dlq.testing import Letter, produce
from workers.runtime import Message, Route, serve

TEST_CONSUMER = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 5_000}

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLEET = str(ROOT / ".venv" / "bin" / "fleet")


def cli_env(stack_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_KAFKA__BOOTSTRAP"] = stack_env["KAFKA_BOOTSTRAP"]
    env["FLEET_POSTGRES__DSN"] = stack_env["DATABASE_URL"]
    env["FLEET_LOG__FORMAT"] = "json"
    return env


def fleet(stack_env: dict[str, str], *args: str, stdin: str = "", tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET, "dlq", *args], cwd=tmp, env=cli_env(stack_env), input=stdin, capture_output=True, text=True, timeout=120
    )


def spawn(stack_env: dict[str, str], *args: str, tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FLEET, "dlq", *args],
        cwd=tmp,
        env=cli_env(stack_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def new_group(stack_env: dict[str, str], name: str, letters: list[Letter]) -> str:
    group = f"t-dlq-cli-{name}-{uuid.uuid4().hex[:6]}"
    await ensure_topics(stack_env["KAFKA_BOOTSTRAP"], group_topics(group))
    await produce(stack_env["KAFKA_BOOTSTRAP"], group, letters)
    return group


async def retry_ids(stack_env: dict[str, str], group: str) -> list[str]:
    async with TopicReader(stack_env["KAFKA_BOOTSTRAP"], retry_topic(group, 1)) as reader:
        return [r.event_id async for r in reader.read()]


async def fetch(stack_env: dict[str, str], sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def summary(stdout: str) -> dict[str, str]:
    """The ``<action> summary job=… name=value …`` line (a prompt without a newline may precede it)."""
    (line,) = [x for x in stdout.splitlines() if " summary job=" in x]
    return dict(part.split("=", 1) for part in line[line.index("job=") :].split())


async def test_list_show_dry_run_replay_and_audit(stack_env: dict[str, str], tmp_path: Path) -> None:
    letters = [Letter(event_id=f"ok-{i}", key=f"801K{i}", source_partition=i) for i in range(3)]
    letters.append(Letter(event_id="bad-0", key="801BAD", error=InvalidPayload("missing status"), source_offset=77))
    group = await new_group(stack_env, "flow", letters)

    listed = fleet(stack_env, "list", "-g", group, tmp=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"{group} ({group}.dlq): 4 dead letters, 0 replayed, 0 parked" in listed.stdout
    assert "events.errors.InvalidPayload" in listed.stdout and "fleet.order.changed.v1" in listed.stdout
    as_json = json.loads(fleet(stack_env, "list", "-g", group, "--json", tmp=tmp_path).stdout)
    assert as_json[0]["count"] == 4

    shown = fleet(stack_env, "show", "-g", group, "--event-id", "bad-0", tmp=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for expected in (
        "status:",
        "pending (not replayed)",
        "missing status",
        "source offset:     77",
        "Traceback",
        '"sf_order_id": "801BAD"',
        "ce_id: bad-0",
    ):
        assert expected in shown.stdout

    dry = fleet(stack_env, "replay", "-g", group, "--error-class", "UpstreamTimeout", "--dry-run", tmp=tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = [x for x in dry.stdout.splitlines() if x.startswith("would replay")]
    assert len(lines) == 3 and all("replay_count=0" in x and f"-> {group}.retry.1[" in x for x in lines)
    assert summary(dry.stdout)["dry_run"] == "true"
    assert await retry_ids(stack_env, group) == []

    real = fleet(
        stack_env, "replay", "-g", group, "--error-class", "UpstreamTimeout", "--operator", "oncall", tmp=tmp_path
    )
    assert real.returncode == 0, real.stderr
    assert (summary(real.stdout)["replayed"], summary(real.stdout)["filtered_out"]) == ("3", "1")
    assert sorted(await retry_ids(stack_env, group)) == ["ok-0", "ok-1", "ok-2"]
    assert '"event": "dlq_replay_finished"' in real.stderr, "the summary is logged too"

    shown = fleet(stack_env, "show", "-g", group, "--event-id", "ok-1", tmp=tmp_path)
    assert "replayed by job" in shown.stdout

    audited = fleet(stack_env, "audit", "-g", group, tmp=tmp_path)
    assert audited.returncode == 0
    assert len(audited.stdout.strip().splitlines()) == 2
    rows = await fetch(
        stack_env, "SELECT operator, dry_run FROM dlq_audit WHERE consumer_group = $1 ORDER BY started_at", group
    )
    assert [(r["operator"], r["dry_run"]) for r in rows][1] == ("oncall", False)


async def wait_for_progress(stack_env: dict[str, str], group: str, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await fetch(
            stack_env, "SELECT 1 FROM dlq_replay_progress WHERE consumer_group = $1 AND state = 'done'", group
        )
        if len(rows) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replay of {group} made no progress")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
async def test_interrupted_replay_resumes_without_duplicates(
    stack_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    letters = [Letter(source_partition=i % 4, source_offset=i) for i in range(24)]
    group = await new_group(stack_env, "kill", letters)

    proc = spawn(stack_env, "replay", "-g", group, "--rate", "8", tmp=tmp_path)
    await wait_for_progress(stack_env, group, 3)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
        assert "run the same command again to resume" in proc.stderr.read()  # type: ignore[union-attr]
    sent_before = len(await retry_ids(stack_env, group))
    assert 0 < sent_before < 24

    rerun = fleet(stack_env, "replay", "-g", group, tmp=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    counts = summary(rerun.stdout)
    assert int(counts["skipped_already_replayed"]) + int(counts["replayed"]) == 24
    ids = await retry_ids(stack_env, group)
    assert sorted(ids) == sorted(letter.event_id for letter in letters), "every record on retry.1 exactly once"

    statuses = [
        r["status"]
        for r in await fetch(
            stack_env, "SELECT status FROM dlq_audit WHERE consumer_group = $1 ORDER BY started_at", group
        )
    ]
    assert statuses == ["interrupted", "completed"]


async def test_purge_requires_typing_the_group_name(stack_env: dict[str, str], tmp_path: Path) -> None:
    group = await new_group(stack_env, "purge", [Letter(event_id="p-1"), Letter(event_id="p-2")])

    refused = fleet(stack_env, "purge", "-g", group, "--event-id", "p-1", stdin="fleet.fulfillment\n", tmp=tmp_path)
    assert refused.returncode == 1
    assert "not confirmed; nothing was purged" in refused.stderr
    assert await fetch(stack_env, "SELECT 1 FROM dlq_purged WHERE consumer_group = $1", group) == []

    confirmed = fleet(stack_env, "purge", "-g", group, "--event-id", "p-1", stdin=f"{group}\n", tmp=tmp_path)
    assert confirmed.returncode == 0, confirmed.stderr
    assert summary(confirmed.stdout)["purged"] == "1"
    listed = fleet(stack_env, "list", "-g", group, tmp=tmp_path)
    assert "1 dead letters, 0 replayed, 0 parked, 1 purged (hidden)" in listed.stdout

    unasked = fleet(stack_env, "purge", "-g", group, "--yes", tmp=tmp_path)
    assert unasked.returncode == 0 and summary(unasked.stdout)["purged"] == "1"
    rows = await fetch(stack_env, "SELECT action, status FROM dlq_audit WHERE consumer_group = $1", group)
    assert [tuple(r.values()) for r in rows] == [("purge", "completed")] * 2, "a refused purge leaves no audit row"


async def fleet_async(stack_env: dict[str, str], *args: str, tmp: Path) -> tuple[int, str, str]:
    """The CLI without blocking this loop (the worker under test runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        FLEET, "dlq", *args, cwd=tmp, env=cli_env(stack_env), stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_real_worker_handles_a_replayed_dead_letter_exactly_once(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Worker dead-letters (permanent error) → cause fixed → `fleet dlq replay` → handled once, on retry.1."""
    suffix = uuid.uuid4().hex[:6]
    group, source = f"t-dlq-cli-worker-{suffix}", f"t-dlq-cli-source-{suffix}"
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    await ensure_topics(bootstrap, [TopicSpec(source, 2, 3_600_000), *group_topics(group)])
    broken, handled = True, Counter[str]()

    async def handle(event: OrderChanged, msg: Message) -> None:
        if broken:
            raise RejectedByUpstream("WHMCS rejected the order: product PROD-1 unknown")
        handled[msg.event_id] += 1

    settings = Settings(
        kafka=KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6_000, heartbeat_interval_ms=500),
        runtime=RuntimeSettings(health_port=0, shutdown_grace_s=5),
    )
    route = Route("dlq-e2e", group, (source,), {OrderChanged: handle}, retry_delays_ms=(500, 1_000))
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(route, settings, stop, consumer_overrides=TEST_CONSUMER))
    try:
        event = OrderChanged(sf_order_id="8015g00000DLQE2E")
        envelope = to_envelope(event, source="/test/dlq-e2e")
        producer = durable_producer(bootstrap, "test-dlq-e2e")
        await producer.start()
        try:
            await AiokafkaProducer(producer).publish(source, envelope)
        finally:
            await producer.stop()

        async def dead_lettered() -> bool:
            async with TopicReader(bootstrap, dlq_topic(group)) as reader:
                return len([r async for r in reader.read()]) == 1

        await eventually(dead_lettered, what="the worker to dead-letter the record")
        broken = False  # the operator fixed the cause

        code, out, err = await fleet_async(stack_env, "replay", "-g", group, tmp=tmp_path)
        assert code == 0, err
        assert summary(out)["replayed"] == "1"

        async def handled_once() -> bool:
            return handled[envelope.id] >= 1

        await eventually(handled_once, what="the worker to handle the replayed record")
        code, out, _ = await fleet_async(stack_env, "replay", "-g", group, tmp=tmp_path)
        assert summary(out)["skipped_already_replayed"] == "1"
        await asyncio.sleep(2)  # anything duplicated would have arrived by now
        assert handled == {envelope.id: 1}
        async with TopicReader(bootstrap, retry_topic(group, 1)) as reader:
            (copy,) = [r async for r in reader.read()]
        assert (copy.event_id, copy.replay_count) == (envelope.id, 1)
        async with TopicReader(bootstrap, dlq_topic(group)) as reader:
            assert len([r async for r in reader.read()]) == 1, "it did not fail again"
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
