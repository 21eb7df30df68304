"""`fleet dlq unpark`: a record the loop guard parked goes back to its group's retry topic once, audited.

Contract: a dead letter replayed ``max_replays`` times is parked by ``replay`` (a copy on
``<group>.parked``, nothing on ``retry.1``); ``unpark --parked P:O`` names that copy, replays its dead
letter once past the loop guard (the copy lands on ``<group>.retry.1``), and is audited as a replay
with the operator; the same copy cannot be un-parked twice.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from adapters.kafka import ensure_topics
from events.topics import group_topics, parked_topic, retry_topic
from tests.console_browser import FLEET
from workers.dlq.reader import TopicReader
from workers.dlq.testing import Letter, produce

pytestmark = pytest.mark.e2e


async def ids_on(bootstrap: str, topic: str) -> list[tuple[int, int, str]]:
    async with TopicReader(bootstrap, topic) as reader:
        return [(r.partition, r.offset, r.event_id) async for r in reader.read()]


async def test_a_parked_record_is_unparked_once(stack_env: dict[str, str]) -> None:
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    group = f"t-unpark-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, group_topics(group))
    (letter,) = await produce(bootstrap, group, [Letter(replay_count=2)])

    code, out = await fleet(stack_env, "replay", "-g", group, "--operator", "oncall")
    assert code == 0 and "parked=1" in out, out
    [(p, o, event_id)] = await ids_on(bootstrap, parked_topic(group))
    assert event_id == letter.letter.event_id and await ids_on(bootstrap, retry_topic(group, 1)) == []

    code, out = await fleet(stack_env, "unpark", "-g", group, "--parked", f"{p}:{o}", "--operator", "oncall")
    assert code == 0 and "replayed=1" in out, out
    assert [e for _, _, e in await ids_on(bootstrap, retry_topic(group, 1))] == [letter.letter.event_id]

    code, out = await fleet(stack_env, "unpark", "-g", group, "--parked", f"{p}:{o}")
    assert code == 1 and "not a parked record" in out


async def fleet(stack_env: dict[str, str], *args: str) -> tuple[int, str]:
    """``fleet dlq ...`` as an operator runs it (its own process: it installs signal handlers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_KAFKA__BOOTSTRAP=stack_env["KAFKA_BOOTSTRAP"],
        FLEET_POSTGRES__DSN=stack_env["DATABASE_URL"],
        FLEET_RUNTIME__MAX_REPLAYS="2",
        FLEET_LOG__FORMAT="json",
    )
    proc = await asyncio.create_subprocess_exec(
        FLEET, "dlq", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()
