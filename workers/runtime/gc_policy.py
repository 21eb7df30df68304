"""The garbage-collection policy of a process that runs consume-runtime workers (the webhook receiver uses its freeze).

Owns CPython's collector settings while workers run: the start-up heap frozen out of the collector's
reach, and young collections on a timer instead of CPython's allocation counter. Counted per process,
so several workers (tests run hundreds in one process) share one policy and the last one to stop
restores what it found. Must not decide anything about records or offsets.

Why not CPython's defaults: a consume loop allocates ~10 container objects per record (aiokafka's
record and header tuples, the event model, its dict and lists, the Message), and keeps a few thousand
records buffered. The allocation counter then triggers a young collection every ~130 records and an
older one every ~1,500, each rescanning whatever is buffered: in bench/runtime_bench.py (400,000
records, measured with ``gc.callbacks``) 3,038 young and 275 middle collections took 0.26 s, 0.65 us
per record. The loop's objects die by reference counting, never in cycles (a cycle appears on
failure paths: a kept traceback), so the collector only needs to run now and then: every
``interval_s`` from the poll loop (0.09 s in the same run, 0.22 us per record), and a full
collection every ``full_every`` of those.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["freeze", "running", "start_timed", "stop_timed", "tick", "unfreeze"]

_freezes = 0  # workers of this process running with the start-up heap frozen
_collected = False  # the process's first freeze collected its start-up garbage first
_threshold: tuple[int, int, int] | None = None  # the thresholds before the first freeze
_timed = 0  # workers of this process running with timed collections
_was_enabled = True  # automatic collection was on before the first timed worker started
_next = 0.0  # perf_counter time of the next timed collection
_young = 0  # timed collections since the last full one


def freeze(full_every: int) -> None:
    """Everything alive when the first worker starts (modules, pydantic schemas, clients) is long-lived:
    move it out of the collector's reach (``gc.freeze``) so collections stop rescanning it (about a fifth
    of the loop's CPU otherwise).

    Full collections are made rarer too (``full_every`` gen-1 collections apart instead of 10), for
    processes that keep CPython's allocation-triggered collections (``start_timed`` not called): a
    fetched record survives both young collections while it waits in its partition's buffer, and
    CPython's guard against quadratic full collections (objects promoted since the last full one must
    exceed a quarter of the old generation, which after the freeze holds only what is buffered) passes
    at every tenth gen-1 collection. What it costs: a garbage cycle that reached the old generation
    lives that much longer.

    The process's first freeze collects first: frozen objects are never collected, so garbage cycles
    left by start-up would stay until the unfreeze (once: a full collection costs tens of ms, and test
    processes start hundreds of workers). Counted per process: a second worker must not freeze the
    first one's in-flight records, and the first one to stop must not unfreeze the heap under the other."""
    global _freezes, _collected, _threshold
    if _freezes == 0:
        if not _collected:
            _collected = True
            gc.collect()
        gc.freeze()
        _threshold = gc.get_threshold()
        gc.set_threshold(_threshold[0], _threshold[1], max(_threshold[2], full_every))
    _freezes += 1


def unfreeze() -> None:
    global _freezes
    _freezes -= 1
    if _freezes == 0:
        if _threshold is not None:
            gc.set_threshold(*_threshold)
        gc.unfreeze()


def start_timed() -> None:
    """Switch automatic collection off while this worker runs; ``tick`` collects instead."""
    global _timed, _was_enabled
    if _timed == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _timed += 1


def stop_timed() -> None:
    global _timed
    _timed -= 1
    if _timed == 0 and _was_enabled:
        gc.enable()


@contextmanager
def running(*, freeze_heap: bool, full_every: int, timed: bool) -> Iterator[None]:
    """One worker's policy while it runs (``RuntimeSettings.freeze_gc``, ``gc_full_every``, and
    ``gc_interval_s`` set: ``timed``): ``freeze`` and ``start_timed`` on entry, undone on exit even
    when the worker fails, so the process's collector never stays off."""
    if freeze_heap:
        freeze(full_every)
    if timed:
        start_timed()
    try:
        yield
    finally:
        if timed:
            stop_timed()
        if freeze_heap:
            unfreeze()


def tick(now: float, interval_s: float, full_every: int) -> None:
    """From a worker's poll loop (which runs at least every poll timeout): collect the young
    generations once ``interval_s`` passed since the last timed collection of any worker of the
    process, and every generation at every ``full_every``-th time."""
    global _next, _young
    if now < _next:
        return
    _next = now + interval_s
    _young += 1
    if _young >= full_every:
        _young = 0
        gc.collect()
    else:
        gc.collect(1)
