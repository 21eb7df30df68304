"""The watermark hands out only replay ids below which every change is durable, never moves back
(integers) or follows receive order (the Pub/Sub API's opaque bytes), and the duplicate window
remembers a bounded number of identities. The memory store keeps a position as the kind it is."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.cdc_checkpoints import Checkpoint, MemoryCheckpointStore, replay_id_text
from workers.ingress.watermark import RecentIds, Watermark

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHANNEL = "/data/OrderChangeEvent"


def test_nothing_is_safe_before_anything_is_done() -> None:
    wm = Watermark()
    wm.begin(10, T0)
    assert wm.take(CHANNEL) is None and wm.pending == 1


def test_the_position_stops_at_the_first_change_not_yet_durable() -> None:
    wm = Watermark()
    a, b, c = wm.begin(10, T0), wm.begin(11, T0), wm.begin(12, T0)
    wm.done(c)
    wm.done(a)
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, 10, T0)
    assert wm.take(CHANNEL) is None  # handed out once per advance
    wm.done(b)
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, 12, T0)
    assert wm.pending == 0


def test_a_batch_delivered_newest_first_checkpoints_its_highest_id_once_complete() -> None:
    wm = Watermark()
    tokens = [wm.begin(replay, T0) for replay in (14, 13, 12)]
    for token in tokens:
        wm.done(token)
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, 14, T0)


def test_the_position_never_moves_backwards() -> None:
    wm = Watermark()
    wm.done(wm.begin(20, T0))
    wm.take(CHANNEL)
    wm.done(wm.begin(19, T0))  # a late redelivery of an older change
    assert wm.take(CHANNEL) is None


def test_a_position_whose_write_failed_is_offered_again() -> None:
    wm = Watermark()
    wm.done(wm.begin(7, T0))
    taken = wm.take(CHANNEL)
    assert taken is not None
    wm.restore(taken)
    assert wm.take(CHANNEL) == taken


def test_done_twice_or_with_an_unknown_token_is_harmless() -> None:
    wm = Watermark()
    token = wm.begin(1, None)
    wm.done(token)
    wm.done(token)
    wm.done(999)
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, 1, None)


def test_the_duplicate_window_forgets_the_oldest_identities() -> None:
    seen = RecentIds(capacity=2)
    seen.add(["a", "b"])
    assert seen.seen(["x", "a"])
    seen.add(["c"])
    assert not seen.seen(["a"]) and seen.seen(["b"]) and seen.seen(["c"]) and len(seen) == 2


def test_bytes_replay_ids_are_never_compared_the_position_is_the_last_of_the_prefix_in_receive_order() -> None:
    """Pub/Sub API replay ids are opaque: "highest" means nothing for them, receive order does."""
    wm = Watermark()
    a, b, c = wm.begin(b"\x0c", T0), wm.begin(b"\x0a", T0), wm.begin(b"\x0b", T0)
    wm.done(c)
    wm.done(a)
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, b"\x0c", T0) and wm.position == b"\x0c"
    wm.done(b)  # the prefix is complete: its last entry, though its bytes sort below the first's
    assert wm.take(CHANNEL) == Checkpoint(CHANNEL, b"\x0b", T0)
    taken = Checkpoint(CHANNEL, b"\x0b", T0)
    wm.restore(taken)
    assert wm.take(CHANNEL) == taken


def test_a_watermark_holds_one_kind_of_replay_id() -> None:
    wm = Watermark()
    wm.begin(b"\x01", T0)
    with pytest.raises(TypeError):
        wm.begin(2, T0)
    ints = Watermark()
    ints.begin(1, T0)
    with pytest.raises(TypeError):
        ints.begin(b"\x02", T0)


def test_a_replay_id_is_shown_in_decimal_or_in_hex() -> None:
    assert (replay_id_text(1234), replay_id_text(b"\x00\xab\x01")) == ("1234", "00ab01")


async def test_the_memory_store_keeps_a_position_as_the_kind_it_is_and_refuses_anything_else() -> None:
    store = MemoryCheckpointStore()
    await store.save("s", [Checkpoint(CHANNEL, b"\x00\x07", T0)])
    assert (await store.load("s"))[CHANNEL].replay_id == b"\x00\x07"
    await store.save("s", [Checkpoint(CHANNEL, 8, None)])  # the other transport took over: its kind replaces
    assert (await store.load("s"))[CHANNEL] == Checkpoint(CHANNEL, 8, T0)
    for wrong in ("8", True, bytearray(b"\x08")):
        with pytest.raises(TypeError):
            await store.save("s", [Checkpoint(CHANNEL, wrong, None)])  # type: ignore[arg-type]
    assert (await store.load("s"))[CHANNEL].replay_id == 8
