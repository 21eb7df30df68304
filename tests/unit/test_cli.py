"""The `fleet` command as a user meets it: help works, bad settings give one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
