"""The one coalescer (``adapters.coalescer``): what it promises its four users.

Contract: items asked close together share a call, at most ``max_in_flight`` calls run and what
arrives meanwhile waits for the next; a call never carries more than ``max_items`` (by weight) unless
one item alone is heavier; every caller is answered exactly once, with its own outcome or its own
exception, in the order asked; a caller that stops waiting disturbs nobody; a coalescer lingers only
when its policy sees load, and an idle one never wakes the loop; closing answers everyone.
The first four hold for any interleaving (Hypothesis, below).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.coalescer import ArrivalRate, ByRate, ByRound, Coalescer, CoalescerClosed, Load, own_exception


class Boom(Exception):
    pass


class Recorder:
    """A call that records what it was given and answers ``item * 10``; ``gate`` holds it open."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.active = 0
        self.most_active = 0

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.calls.append(list(items))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return [item * 10 for item in items]
        finally:
            self.active -= 1


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# --- calls -----------------------------------------------------------------------------------------
async def test_items_asked_in_one_loop_turn_share_one_call_in_the_order_asked() -> None:
    call = Recorder()
    coalescer = Coalescer(call)

    results = await asyncio.gather(*(coalescer.submit(n) for n in range(10)))

    assert call.calls == [list(range(10))] and results == [n * 10 for n in range(10)]
    assert coalescer.calls == 1 and coalescer.items == 10


async def test_what_arrives_while_a_call_runs_goes_in_the_next_call() -> None:
    call = Recorder()
    call.gate = asyncio.Event()
    coalescer = Coalescer(call)
    first = coalescer.submit(1)
    await turns(2)
    later = [coalescer.submit(n) for n in (2, 3, 4)]
    await turns(2)
    assert call.calls == [[1]]  # one call in flight; the others wait for it

    call.gate.set()
    await asyncio.gather(first, *later)

    assert call.calls == [[1], [2, 3, 4]]


async def test_no_more_calls_run_at_once_than_max_in_flight() -> None:
    call = Recorder()
    call.gate = asyncio.Event()
    coalescer = Coalescer(call, max_items=2, max_in_flight=2)
    futures = [coalescer.submit(n) for n in range(7)]
    await turns(5)
    assert call.calls == [[0, 1], [2, 3]] and call.active == 2

    call.gate.set()
    await asyncio.gather(*futures)

    assert call.most_active == 2 and [n for c in call.calls for n in c] == list(range(7))


async def test_a_call_carries_at_most_max_items_by_weight_and_a_heavier_item_goes_alone() -> None:
    call = Recorder()
    weights = {1: 2, 2: 2, 3: 9, 4: 1, 5: 3}
    coalescer = Coalescer(call, max_items=4, weight=weights.__getitem__)

    await asyncio.gather(*(coalescer.submit(n) for n in weights))

    assert call.calls == [[1, 2], [3], [4, 5]]


# --- answers ---------------------------------------------------------------------------------------
async def test_an_exception_outcome_fails_only_its_own_item() -> None:
    async def call(items: list[int]) -> list[int | BaseException]:
        return [Boom(item) if item == 2 else item for item in items]

    coalescer = Coalescer(call)
    results = await asyncio.gather(*(coalescer.submit(n) for n in (1, 2, 3)), return_exceptions=True)

    assert results[0] == 1 and results[2] == 3 and isinstance(results[1], Boom)


async def test_a_failed_call_fails_every_caller_each_with_its_own_exception() -> None:
    """A shared exception object would collect every awaiting caller's traceback."""
    original = Boom("redis away")

    async def call(items: list[int]) -> list[int]:
        raise original

    coalescer = Coalescer(call)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(3)), return_exceptions=True)

    assert all(isinstance(r, Boom) and r.args == ("redis away",) and r.__cause__ is original for r in results)
    assert len({id(r) for r in results}) == 3 and original not in results


async def test_errors_makes_each_callers_exception_from_its_item() -> None:
    async def call(items: list[str]) -> list[str]:
        raise Boom("down")

    coalescer = Coalescer(call, errors=lambda item, exc: RuntimeError(f"{item}: {exc}"))
    results = await asyncio.gather(coalescer.submit("a"), coalescer.submit("b"), return_exceptions=True)

    assert [str(r) for r in results] == ["a: down", "b: down"]


async def test_a_call_answering_the_wrong_number_of_outcomes_fails_its_callers() -> None:
    async def call(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer = Coalescer(call)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) and "1 outcomes for 2 items" in str(r) for r in results)


def test_own_exception_copies_the_error_and_chains_the_original() -> None:
    original = Boom("x")
    own = own_exception("item", original)
    assert own is not original and type(own) is Boom and own.args == ("x",) and own.__cause__ is original

    class Picky(Exception):
        def __init__(self, *, code: int) -> None:
            super().__init__()
            self.code = code

    picky = Picky(code=3)
    assert own_exception("item", picky) is picky  # cannot be rebuilt from its args: shared


# --- cancellation ----------------------------------------------------------------------------------
async def test_a_caller_that_stopped_waiting_before_its_call_is_left_out() -> None:
    call = Recorder()
    coalescer = Coalescer(call)
    gone = coalescer.submit(1)
    stays = coalescer.submit(2)
    gone.cancel()

    assert await stays == 20
    assert call.calls == [[2]]


async def test_a_caller_that_stopped_waiting_during_its_call_does_not_disturb_the_others() -> None:
    call = Recorder()
    call.gate = asyncio.Event()
    coalescer = Coalescer(call)
    waiter = asyncio.ensure_future(coalescer.submit(1))
    other = coalescer.submit(2)
    await turns(3)
    waiter.cancel()
    call.gate.set()

    assert await other == 20
    assert call.calls == [[1, 2]] and waiter.cancelled()


async def test_closing_answers_every_caller_still_waiting() -> None:
    """In flight or queued, each caller gets ``errors(item, CoalescerClosed())``, never silence."""
    call = Recorder()
    call.gate = asyncio.Event()
    coalescer = Coalescer(call)
    in_call = coalescer.submit(1)
    await turns(2)
    queued = coalescer.submit(2)

    await coalescer.aclose()

    for future in (in_call, queued):
        with pytest.raises(CoalescerClosed):
            future.result()


async def test_a_call_that_cancels_something_of_its_own_fails_its_callers_and_the_next_call_works() -> None:
    async def call(items: list[int]) -> list[int]:
        if items == [1]:
            raise asyncio.CancelledError  # not the coalescer being cancelled
        return items

    coalescer = Coalescer(call)
    with pytest.raises(CoalescerClosed):
        await coalescer.submit(1)
    assert await coalescer.submit(2) == 2


# --- deadlines -------------------------------------------------------------------------------------
async def test_no_caller_waits_longer_than_timeout_s_even_behind_a_stuck_call() -> None:
    call = Recorder()
    call.gate = asyncio.Event()  # never set: every call hangs
    # times in tenths of a second: the margins stay far above a loaded machine's scheduling jitter
    coalescer = Coalescer(call, timeout_s=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = coalescer.submit(1)
    await asyncio.sleep(0.3)
    behind = coalescer.submit(2)  # queued behind the stuck call

    results = await asyncio.gather(first, behind, return_exceptions=True)

    assert all(isinstance(r, TimeoutError) and "within 0.5 s" in str(r) for r in results)
    assert loop.time() - started < 0.3 + 0.5 + 0.4  # the second's own deadline, not two calls' worth (1.3 s)
    assert call.calls == [[1], [2]]


async def test_an_item_past_its_deadline_when_taken_is_answered_at_once_and_not_sent() -> None:
    call = Recorder()
    call.gate = asyncio.Event()
    coalescer = Coalescer(call, timeout_s=0.05, max_items=1)
    first = coalescer.submit(1)
    await turns(2)
    late = coalescer.submit(2)
    await asyncio.sleep(0.08)  # the first call timed out at 0.05; the second item is past its deadline too

    with pytest.raises(TimeoutError):
        await late
    with pytest.raises(TimeoutError):
        await first
    assert call.calls == [[1]]


# --- lingering -------------------------------------------------------------------------------------
class TimerCountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the timers scheduled on it (``call_later`` goes through ``call_at``)."""

    def __init__(self) -> None:
        super().__init__()
        self.timers = 0

    def call_at(self, when, callback, *args, context=None):  # type: ignore[no-untyped-def,override]
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def run_counting(main):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=TimerCountingLoop) as runner:
        result = runner.run(main())
        return result, runner.get_loop().timers  # type: ignore[attr-defined]


def test_a_quiet_coalescer_schedules_no_timer_at_all() -> None:
    """No linger below the rate, no deadline timers: nothing wakes the loop but the callers."""

    async def main() -> list[list[int]]:
        call = Recorder()
        coalescer = Coalescer(call, linger=ByRate(busy_s=0.5, busy_rate=1000), timeout_s=5.0)
        for n in range(5):
            await coalescer.submit(n)
            await turns(3)
        return call.calls

    calls, timers = run_counting(main)
    assert calls == [[n] for n in range(5)]
    assert timers == 5  # the per-call deadline (asyncio.timeout_at), cancelled each time; nothing else


async def test_by_rate_lingers_only_under_load_and_only_until_its_deadline() -> None:
    call = Recorder()
    coalescer = Coalescer(call, linger=ByRate(busy_s=0.5, busy_rate=5))  # times in tenths: jitter-proof
    loop = asyncio.get_running_loop()

    started = loop.time()
    await coalescer.submit(0)  # quiet: leaves at once
    assert loop.time() - started < 0.3
    await asyncio.gather(*(coalescer.submit(n) for n in range(1, 6)))  # five in the last second: busy
    started = loop.time()
    trickle = []
    for n in (6, 7, 8):
        trickle.append(coalescer.submit(n))
        await asyncio.sleep(0.1)
    await asyncio.gather(*trickle)

    assert call.calls[-1] == [6, 7, 8]
    assert 0.4 < loop.time() - started < 1.0  # the oldest waited busy_s, not more


def test_a_linger_that_fills_up_ends_at_once_and_its_timer_never_fires() -> None:
    async def main() -> tuple[list[list[int]], float]:
        call = Recorder()
        coalescer = Coalescer(call, linger=ByRate(busy_s=5.0, busy_rate=0, fill=3))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = coalescer.submit(1)
        await turns(2)  # forming, lingering for a fill of 3
        rest = [coalescer.submit(2), coalescer.submit(3)]
        await asyncio.gather(first, *rest)
        return call.calls, loop.time() - started

    (calls, elapsed), timers = run_counting(main)
    assert calls == [[1, 2, 3]] and elapsed < 1.0 and timers == 1  # scheduled, then cancelled


async def test_by_round_lingers_after_a_large_call_only() -> None:
    """``ByRound``: after a call of ``busy_from`` or more, items that trickle in within the linger leave
    together; after small calls each leaves at once."""
    call = Recorder()
    coalescer = Coalescer(call, linger=ByRound(linger_s=0.3, busy_from=4))
    for n in range(3):  # quiet: calls of one, no linger
        await asyncio.wait_for(coalescer.submit(n), 0.2)
    await asyncio.gather(*(coalescer.submit(n) for n in range(10, 15)))  # a call of five
    trickle = []
    for n in range(20, 23):
        trickle.append(coalescer.submit(n))
        await asyncio.sleep(0.02)
    await asyncio.gather(*trickle)

    assert [len(c) for c in call.calls] == [1, 1, 1, 5, 3]


def test_the_policies_plans() -> None:
    quiet = Load(now=10.0, oldest=9.99, queued=1, last=0, last_end=0.0, rate=3.0)
    busy = quiet._replace(rate=30.0)
    assert ByRate(busy_s=0.1, busy_rate=20).plan(quiet) is None
    assert ByRate(busy_s=0.1, busy_rate=20, fill=7).plan(busy) == (pytest.approx(10.09), 7)
    assert ByRate(busy_s=0.1, busy_rate=20, quiet_s=0.005).plan(quiet) == (pytest.approx(9.995), None)
    # with a fill, never longer than the fill takes to arrive at the current rate
    assert ByRate(busy_s=0.1, busy_rate=20, fill=7).plan(busy._replace(rate=700.0)) == (pytest.approx(10.0), 7)
    after_big = quiet._replace(last=20, last_end=9.999)
    assert ByRound(linger_s=0.002, busy_from=8).plan(after_big) == (pytest.approx(10.001), 40)
    assert ByRound(linger_s=0.002, busy_from=8, cap=32).plan(after_big) == (pytest.approx(10.001), 32)
    assert ByRound(linger_s=0.002, busy_from=8).plan(after_big._replace(queued=20)) is None  # grown already
    assert ByRound(linger_s=0.002, busy_from=8).plan(quiet._replace(last=7)) is None


def test_arrival_rate_counts_only_the_last_window() -> None:
    now = [100.0]
    rate = ArrivalRate(window_s=1.0, clock=lambda: now[0])
    rate.note(3)
    now[0] += 0.5
    rate.note()
    assert rate.per_second() == 4
    now[0] += 0.6  # the first three fall out of the window
    assert rate.per_second() == 1


# --- riders ----------------------------------------------------------------------------------------
async def test_riders_start_no_call_ride_with_the_next_and_otherwise_leave_after_within_s() -> None:
    call = Recorder()
    coalescer = Coalescer(call)
    coalescer.push(100, within_s=0.5)  # times in tenths of a second: jitter-proof
    await asyncio.sleep(0.1)
    assert call.calls == []  # a rider alone starts nothing (yet)

    assert await coalescer.submit(1) == 10
    assert call.calls == [[100, 1]]

    coalescer.push(101, within_s=0.3)
    await asyncio.sleep(0.1)
    assert call.calls == [[100, 1]]  # still lingering
    await asyncio.sleep(0.5)
    assert call.calls == [[100, 1], [101]]  # on its own, after its linger


async def test_drain_sends_riders_and_lingering_items_at_once() -> None:
    call = Recorder()
    coalescer = Coalescer(call, linger=ByRate(busy_s=10.0, busy_rate=0))
    coalescer.push(100, within_s=10.0)
    waiting = coalescer.submit(1)
    await turns(2)

    await asyncio.wait_for(coalescer.drain(), 1.0)

    assert waiting.result() == 10 and call.calls == [[100, 1]]


# --- properties over any interleaving --------------------------------------------------------------
@dataclass
class Scenario:
    steps: list[tuple[int, int]]  # (items submitted, loop turns after)
    max_items: int | None
    max_in_flight: int
    weights: list[int]
    durations: list[int]  # loop turns per call, cycled
    failing: list[bool]  # per call, cycled
    cancel_at_once: set[int]  # callers that stop waiting right after submitting
    cancel_later: set[int]  # ... a step later
    riders: set[int]  # items pushed (nobody awaits them) rather than submitted
    policy: str  # "none" | "quiet-rate" | "round"


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=12))
    total = sum(n for n, _ in steps)
    ids = st.integers(0, max(0, total - 1))
    return Scenario(
        steps=steps,
        max_items=draw(st.none() | st.integers(1, 6)),
        max_in_flight=draw(st.integers(1, 3)),
        weights=draw(st.lists(st.integers(1, 3), min_size=total, max_size=total)),
        durations=draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)),
        failing=draw(st.lists(st.booleans(), min_size=1, max_size=6)),
        cancel_at_once=draw(st.sets(ids, max_size=4)) if total else set(),
        cancel_later=draw(st.sets(ids, max_size=4)) if total else set(),
        riders=draw(st.sets(ids, max_size=6)) if total else set(),
        policy=draw(st.sampled_from(["none", "quiet-rate", "round"])),
    )


@dataclass
class Observed:
    calls: list[list[int]] = field(default_factory=list)
    most_active: int = 0
    futures: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    failed_calls: set[int] = field(default_factory=set)


async def _play(sc: Scenario) -> Observed:
    obs = Observed()
    active = 0

    async def call(items: list[int]) -> list[int | BaseException]:
        nonlocal active
        n = len(obs.calls)
        obs.calls.append(list(items))
        active += 1
        obs.most_active = max(obs.most_active, active)
        try:
            await turns(sc.durations[n % len(sc.durations)])
            if sc.failing[n % len(sc.failing)]:
                obs.failed_calls.add(n)
                raise Boom(n)
            return [Boom(-item) if item % 7 == 3 else item * 10 for item in items]
        finally:
            active -= 1

    linger = {
        "none": None,
        "quiet-rate": ByRate(busy_s=5.0, busy_rate=1e9),  # never busy here
        "round": ByRound(linger_s=0.001, busy_from=3),
    }[sc.policy]
    coalescer = Coalescer(
        call,
        max_items=sc.max_items,
        weight=sc.weights.__getitem__,
        max_in_flight=sc.max_in_flight,
        linger=linger,
    )
    ids = itertools.count()
    for submits, after in sc.steps:
        for _ in range(submits):
            item = next(ids)
            if item in sc.riders:
                coalescer.push(item, within_s=0.001)
                continue
            obs.futures[item] = coalescer.submit(item)
            if item in sc.cancel_at_once:
                obs.futures[item].cancel()
        await turns(after)
        for item in sc.cancel_later & set(obs.futures):
            obs.futures[item].cancel()
    await asyncio.wait_for(coalescer.drain(), 5.0)
    return obs


def play(sc: Scenario) -> tuple[Observed, int]:
    """The observations, and the timers the coalescer scheduled (not counting the drain's ``wait_for``)."""

    async def main() -> Observed:
        return await _play(sc)

    obs, timers = run_counting(main)
    return obs, timers - 1


PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_item_is_answered_once_in_order_within_the_bounds(sc: Scenario) -> None:
    obs, timers = play(sc)
    sent = [item for c in obs.calls for item in c]
    # order kept, and no item in two calls
    assert sent == sorted(set(sent))
    # every caller is answered; a caller cancelled at once is never sent
    assert all(future.done() for future in obs.futures.values())
    assert not (set(sent) & sc.cancel_at_once - sc.riders)
    assert set(sent) >= {item for item in sc.riders if item < len(sc.weights)}  # every rider went, once
    waiting = [item for item, future in obs.futures.items() if not future.cancelled()]
    assert set(waiting) <= set(sent)
    call_of = {item: n for n, c in enumerate(obs.calls) for item in c}
    for item in waiting:
        future = obs.futures[item]
        if call_of[item] in obs.failed_calls:
            exc = future.exception()
            assert isinstance(exc, Boom) and exc.args == (call_of[item],)
        elif item % 7 == 3:
            assert isinstance(future.exception(), Boom)
        else:
            assert future.result() == item * 10
    failures = [obs.futures[i].exception() for i in waiting if call_of[i] in obs.failed_calls]
    assert len({id(exc) for exc in failures}) == len(failures)  # each caller its own exception
    # bounds
    for c in obs.calls:
        assert len(c) == 1 or sc.max_items is None or sum(sc.weights[i] for i in c) <= sc.max_items
    assert obs.most_active <= sc.max_in_flight
    # no linger when quiet: without load (and riders) nothing is scheduled on the clock at all
    if sc.policy != "round" and not sc.riders & set(range(len(sc.weights))):
        assert timers == 0
