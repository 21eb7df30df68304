"""Crash points kill the process as SIGKILL would, only where and as often as a chaos run arms them,
and never in staging or production."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers import crashpoints
from workers.config import load_settings
from workers.fulfillment.model import Step
from workers.profile import problems


def test_the_setting_parses_into_probabilities() -> None:
    assert crashpoints.parse("a.b=0.25, c ,d=1") == {"a.b": 0.25, "c": 1.0, "d": 1.0}
    assert crashpoints.parse("") == {}
    for bad in ("a=2", "a=often", "=0.5"):
        with pytest.raises(crashpoints.CrashPointError):
            crashpoints.parse(bad)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_an_armed_point_exits_like_kill_9_and_an_unarmed_one_does_nothing() -> None:
    armed = run(
        "from workers import crashpoints as c\n"
        "c.arm('sf-writer.patched=1')\n"
        "c.crash_point('whmcs-webhooks.produced')\n"
        "print('passed the unarmed point', flush=True)\n"
        "c.crash_point('sf-writer.patched')\n"
        "print('never printed')\n"
    )
    assert armed.returncode == crashpoints.EXIT_STATUS
    assert armed.stdout == "passed the unarmed point\n"
    assert "crash point sf-writer.patched" in armed.stderr


def test_the_saga_hook_names_the_step_and_phase() -> None:
    try:
        assert crashpoints.arm("sf-writer.patched=1") and crashpoints.saga_hook() is None
        crashpoints.arm("fulfillment.whmcs_create.called=0")
        hook = crashpoints.saga_hook()
        assert hook is not None
        hook(Step.WHMCS_CREATE, "called")  # armed with probability 0: the process lives on
    finally:
        crashpoints.arm("")


def test_crash_points_are_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TESTING__CRASH_POINTS", "fulfillment.whmcs_create.called=0.1")
    assert not any(p.variable == "FLEET_TESTING__CRASH_POINTS" for p in problems(load_settings(env_file=None)))
    monkeypatch.setenv("FLEET_ENV", "production")
    found = {p.variable: p.reason for p in problems(load_settings(env_file=None))}
    assert "never in staging or production" in found["FLEET_TESTING__CRASH_POINTS"]
