"""Two start-up races that failed CI on a fresh machine, pinned at their causes.

- After ``kill -9`` a server's pid can read as a zombie while its other threads still hold its ports;
  the stale pid file is dropped only once that pid is reaped (then the ports are free).
- A child that was just spawned may show its parent's argv until it ``exec``s; the sandbox launcher
  judges its own child by ``poll()``, never by its command line.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.cli import sandbox as sandbox_cli
from devtools.stack.process import forget_stale_pid
from workers.config import Settings


def state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_a_stale_pid_is_forgotten_only_once_the_killed_server_is_reaped(tmp_path: Path) -> None:
    server = subprocess.Popen(["sleep", "60"])
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(f"{server.pid}\n")
    server.send_signal(signal.SIGKILL)
    while state(server.pid) != "Z":  # killed, not reaped: what `kill -9` of a detached server leaves a while
        time.sleep(0.01)

    notes = asyncio.run(forget_stale_pid(pid_file, "server"))

    assert notes == ["stale server.pid removed"]
    assert state(server.pid) is None  # reaped: nothing of it holds a port any more
    assert not pid_file.exists()
    assert asyncio.run(forget_stale_pid(pid_file, "server")) == []


def test_the_sandbox_launcher_judges_its_child_by_poll_not_by_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live child whose command line is not (yet) ``-m sandbox`` is still starting, not dead."""
    files = sandbox_cli.Files(tmp_path)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.ready.write_text("{}")
    polls = iter([False, False, True])
    monkeypatch.setattr(sandbox_cli, "_all_answer", lambda settings, files: next(polls))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sandbox_cli._wait_ready(Settings(), files, child)  # returns once every port answers; no exit(1)
    finally:
        child.kill()
        child.wait()
    child_exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child_exited.wait()
    with pytest.raises(SystemExit):
        sandbox_cli._wait_ready(Settings(), files, child_exited)
