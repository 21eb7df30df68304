"""``PgCheckpointStore`` against the stack's PostgreSQL: one row per (subscriber, channel), upserted;
a fallback reset keeps its reason and time; a later save without a time keeps the last one. A
position keeps its kind: CometD's int in ``replay_id``, the Pub/Sub API's bytes in
``pubsub_replay_id`` (migration 0009), never both."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from adapters.cdc_checkpoints import Checkpoint, PgCheckpointStore
from adapters.db import create_pool, migrate

pytestmark = pytest.mark.integration

ORDER_CH = "/data/OrderChangeEvent"
ITEM_CH = "/data/OrderItemChangeEvent"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pool(stack_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:  # noqa: F811
    await migrate(stack_env["DATABASE_URL"])
    pool = await create_pool(stack_env["DATABASE_URL"], 1, 2)
    try:
        yield pool
    finally:
        await pool.close()


def subscriber() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


async def test_an_unknown_subscriber_has_no_checkpoints(pool: asyncpg.Pool) -> None:
    assert await PgCheckpointStore(pool).load(subscriber()) == {}


async def test_checkpoints_are_upserted_per_channel(pool: asyncpg.Pool) -> None:
    store, name = PgCheckpointStore(pool), subscriber()
    await store.save(name, [Checkpoint(ORDER_CH, 10, T0), Checkpoint(ITEM_CH, 3, T0)])
    await store.save(name, [Checkpoint(ORDER_CH, 12, T0 + timedelta(seconds=5))])
    loaded = await store.load(name)
    assert loaded[ORDER_CH] == Checkpoint(ORDER_CH, 12, T0 + timedelta(seconds=5))
    assert loaded[ITEM_CH] == Checkpoint(ITEM_CH, 3, T0)
    assert await store.load(subscriber()) == {}  # other subscribers are separate


async def test_a_reset_keeps_its_reason_and_a_save_without_time_keeps_the_last_time(pool: asyncpg.Pool) -> None:
    store, name = PgCheckpointStore(pool), subscriber()
    await store.save(name, [Checkpoint(ORDER_CH, None, T0, reset_reason="REPLAY_ID_REJECTED")])
    await store.save(name, [Checkpoint(ORDER_CH, 40, None)])
    assert (await store.load(name))[ORDER_CH] == Checkpoint(ORDER_CH, 40, T0, "REPLAY_ID_REJECTED")
    reset_at = await pool.fetchval(
        "SELECT reset_at FROM sf_cdc_checkpoints WHERE subscriber = $1 AND channel = $2", name, ORDER_CH
    )
    assert reset_at is not None


async def test_saving_nothing_is_a_no_op(pool: asyncpg.Pool) -> None:
    name = subscriber()
    await PgCheckpointStore(pool).save(name, [])
    assert await PgCheckpointStore(pool).load(name) == {}


POSITIONS = "SELECT replay_id, pubsub_replay_id FROM sf_cdc_checkpoints WHERE subscriber = $1 AND channel = $2"


async def test_a_pubsub_position_is_stored_as_bytes_and_each_write_clears_the_other_kind(pool: asyncpg.Pool) -> None:
    store, name = PgCheckpointStore(pool), subscriber()
    opaque = b"\x00\x00\x01\xe2\x40\xff"
    await store.save(name, [Checkpoint(ORDER_CH, opaque, T0)])
    loaded = (await store.load(name))[ORDER_CH]
    assert loaded == Checkpoint(ORDER_CH, opaque, T0) and type(loaded.replay_id) is bytes
    assert tuple(await pool.fetchrow(POSITIONS, name, ORDER_CH)) == (None, opaque)
    await store.save(name, [Checkpoint(ORDER_CH, 41, None)])  # back to CometD: the bytes go
    assert tuple(await pool.fetchrow(POSITIONS, name, ORDER_CH)) == (41, None)
    assert (await store.load(name))[ORDER_CH] == Checkpoint(ORDER_CH, 41, T0)
    await store.save(name, [Checkpoint(ORDER_CH, opaque, None)])  # and to the Pub/Sub API again
    assert tuple(await pool.fetchrow(POSITIONS, name, ORDER_CH)) == (None, opaque)
    await store.save(name, [Checkpoint(ORDER_CH, None, T0, reset_reason="REPLAY_ID_REJECTED")])
    assert tuple(await pool.fetchrow(POSITIONS, name, ORDER_CH)) == (None, None)


async def test_a_row_cannot_hold_both_kinds_of_position(pool: asyncpg.Pool) -> None:
    insert = "INSERT INTO sf_cdc_checkpoints (subscriber, channel, replay_id, pubsub_replay_id) VALUES ($1, $2, 1, $3)"
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(insert, subscriber(), ORDER_CH, b"\x01")


async def test_a_replay_id_of_neither_kind_is_refused_before_anything_is_written(pool: asyncpg.Pool) -> None:
    store, name = PgCheckpointStore(pool), subscriber()
    with pytest.raises(TypeError):
        await store.save(name, [Checkpoint(ITEM_CH, 3, T0), Checkpoint(ORDER_CH, "41", T0)])  # type: ignore[arg-type]
    assert await store.load(name) == {}
