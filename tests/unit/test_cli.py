"""The `fleet` command as a user meets it: help works, bad settings give one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from workers.cli import main
from workers.config import env_example

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_group() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("stack", "topics", "db", "run", "sandbox", "dlq", "orders", "events", "config"):
        assert f"  {name}" in result.output


def test_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_RUNTIME__SHUTDOWN_GRACE_S"] = "soon"
    proc = subprocess.run(
        [sys.executable, "-m", "workers", "config", "show"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "FLEET_RUNTIME__SHUTDOWN_GRACE_S" in lines[0]


def test_env_example_is_current() -> None:
    """deploy/env.example documents every variable; regenerate with `fleet config env-example`."""
    assert (ROOT / "deploy" / "env.example").read_text() == env_example()


def test_env_example_loads_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied unedited, the example is a valid configuration: its blank lines (``FLEET_X=``) mean
    "not set", as its comments say, not an empty value that fails an int or a path."""
    from workers.config import load_settings

    for name in [n for n in os.environ if n.startswith("FLEET_")]:
        monkeypatch.delenv(name)
    settings = load_settings(env_file=ROOT / "deploy" / "env.example")
    assert settings.runtime.max_in_flight_per_partition is None and settings.runtime.revoke_grace_s is None
