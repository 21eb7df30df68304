"""Crash points: named places where a fault-injection run may kill the process as ``kill -9`` would.

    FLEET_TESTING__CRASH_POINTS="fulfillment.whmcs_create.called=0.05,sf-writer.patched=0.01"

arms them for the process (``arm``, from ``fleet run``); ``crash_point(name)`` then ends the process
with ``os._exit(137)`` with that probability: no cleanup, no flush, no commit, no goodbye to the
consumer group, exactly what a SIGKILL leaves behind. The points sit where "nothing lost, nothing
twice" is hardest: right after a side effect and before the record of it.

    fulfillment.<step>.called      a saga step's vendor call returned; its result is not committed
    fulfillment.<step>.committed   the step's result is committed; the delivery is not finished
    sf-writer.patched              Salesforce accepted a composite update; the offsets are not committed
    whmcs-webhooks.produced        Kafka acknowledged a webhook's record; the sender has no answer yet

Unarmed (the default, and the only value staging and production accept: ``workers.profile``) a
crash point is one empty-dict test. Owns: parsing the setting, the draw, the exit. Must not: do
anything else at a crash point (no log call that could block, no I/O but one line to stderr).
"""

from __future__ import annotations

import os
import random
import sys

from workers.fulfillment.model import Step
from workers.fulfillment.run import StepHook

EXIT_STATUS = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

_armed: dict[str, float] = {}
_draw = random.Random()


class CrashPointError(ValueError):
    """The setting does not parse; the message names the offending pair."""


def parse(spec: str) -> dict[str, float]:
    """``"a=0.1,b=1"`` → ``{"a": 0.1, "b": 1.0}``; a name alone means probability 1."""
    found: dict[str, float] = {}
    for pair in (p.strip() for p in spec.split(",")):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        try:
            probability = float(value) if value else 1.0
        except ValueError:
            raise CrashPointError(f"crash point {pair!r}: the probability is not a number") from None
        if not 0.0 <= probability <= 1.0 or not name.strip():
            raise CrashPointError(f"crash point {pair!r}: want name=probability with 0 <= probability <= 1")
        found[name.strip()] = probability
    return found


def arm(spec: str, seed: int | None = None) -> dict[str, float]:
    """Arm the points of ``spec`` for this process (replacing any armed before); returns them."""
    _armed.clear()
    _armed.update(parse(spec))
    _draw.seed(seed)
    return dict(_armed)


def armed() -> dict[str, float]:
    return dict(_armed)


def crash_point(name: str) -> None:
    """Exit now, as ``kill -9`` would, with the probability armed for ``name`` (never when unarmed)."""
    if not _armed:
        return
    probability = _armed.get(name)
    if probability and _draw.random() < probability:
        sys.stderr.write(f"crash point {name}: exiting with status {EXIT_STATUS}\n")
        sys.stderr.flush()
        os._exit(EXIT_STATUS)


def saga_hook() -> StepHook | None:
    """The saga's step hook when any ``fulfillment.`` point is armed (``Saga(hook=...)``), else None."""
    if not any(name.startswith("fulfillment.") for name in _armed):
        return None

    def hook(step: Step, phase: str) -> None:
        crash_point(f"fulfillment.{step.value}.{phase}")

    return hook
