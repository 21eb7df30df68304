"""The replay token bucket paces sends at the given rate without ever bursting above one token."""

from __future__ import annotations

import pytest

from workers.dlq.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_first_token_is_free_then_one_per_interval() -> None:
    t = FakeTime()
    bucket = TokenBucket(4.0, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        await bucket.acquire()
    assert t.now == pytest.approx(1.0), "5 tokens at 4/s: one free, four at 0.25 s each"
    assert t.sleeps == pytest.approx([0.25] * 4)


async def test_idle_time_does_not_accumulate_a_burst_beyond_capacity() -> None:
    t = FakeTime()
    bucket = TokenBucket(10.0, clock=t.clock, sleep=t.sleep)
    await bucket.acquire()
    t.now += 60  # a minute idle
    await bucket.acquire()
    await bucket.acquire()
    assert t.sleeps == pytest.approx([0.1]), "only one token was saved up, the next waits 1/rate"


async def test_a_larger_capacity_allows_that_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, capacity=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        await bucket.acquire()
    assert t.sleeps == []
    await bucket.acquire()
    assert t.sleeps == pytest.approx([0.5])


async def test_work_between_acquires_counts_towards_the_interval() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, clock=t.clock, sleep=t.sleep)
    await bucket.acquire()
    t.now += 0.3  # the send itself took 0.3 s
    await bucket.acquire()
    assert t.sleeps == pytest.approx([0.2])


def test_rate_and_capacity_are_validated() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1, capacity=0.5)
