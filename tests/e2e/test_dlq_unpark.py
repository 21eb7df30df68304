"""`fleet dlq unpark`: a record the loop guard parked goes back to its group's retry topic once, audited.

Contract: a dead letter replayed ``max_replays`` times is parked by ``replay`` (a copy on
``<group>.parked``, nothing on ``retry.1``); ``unpark --parked P:O`` names that copy, replays its dead
letter once past the loop guard (the copy lands on ``<group>.retry.1``), and is audited as a replay
with the operator; the same copy cannot be un-parked twice.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from click.testing import CliRunner, Result

from adapters.kafka import ensure_topics
from events.topics import group_topics, parked_topic, retry_topic
from workers.cli import main
from workers.dlq.reader import TopicReader
from workers.dlq.testing import Letter, produce

pytestmark = pytest.mark.e2e


async def ids_on(bootstrap: str, topic: str) -> list[tuple[int, int, str]]:
    async with TopicReader(bootstrap, topic) as reader:
        return [(r.partition, r.offset, r.event_id) async for r in reader.read()]


async def test_a_parked_record_is_unparked_once(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    monkeypatch.setenv("FLEET_POSTGRES__DSN", stack_env["DATABASE_URL"])
    monkeypatch.setenv("FLEET_KAFKA__BOOTSTRAP", bootstrap)
    monkeypatch.setenv("FLEET_RUNTIME__MAX_REPLAYS", "2")
    group = f"t-unpark-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, group_topics(group))
    (letter,) = await produce(bootstrap, group, [Letter(replay_count=2)])
    cli = CliRunner()

    parked = await _invoke(cli, ["dlq", "replay", "-g", group, "--operator", "oncall"])
    assert "parked=1" in parked.stdout, parked.output
    [(p, o, event_id)] = await ids_on(bootstrap, parked_topic(group))
    assert event_id == letter.letter.event_id and await ids_on(bootstrap, retry_topic(group, 1)) == []

    unparked = await _invoke(cli, ["dlq", "unpark", "-g", group, "--parked", f"{p}:{o}", "--operator", "oncall"])
    assert unparked.exit_code == 0, unparked.output
    assert "replayed=1" in unparked.stdout
    assert [e for _, _, e in await ids_on(bootstrap, retry_topic(group, 1))] == [letter.letter.event_id]

    again = await _invoke(cli, ["dlq", "unpark", "-g", group, "--parked", f"{p}:{o}"])
    assert again.exit_code == 1 and "not a parked record" in again.output


async def _invoke(cli: CliRunner, args: list[str]) -> Result:
    """The CLI runs its own event loop: off this test's loop, in a thread."""
    return await asyncio.to_thread(cli.invoke, main, args)
