"""The process supervisor with tiny fake children (``python -c ...``): no Kafka, no fleet.

Contract: a crashing child is restarted with exponential, bounded back-off and flagged as
crash-looping (with what it said last) instead of being hidden; a stable run resets the count; a
command that does not exist is "not available" and never restarted; health probes decide
"healthy"; stop() sends SIGTERM to each child's process group in stop order and SIGKILLs what
outlives the grace; and a supervisor that is signalled or killed leaves no child behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.supervisor import Backoff, ChildSpec, ChildState, Supervisor, last_line

PY = sys.executable
FAST = Backoff(initial_s=0.05, factor=2.0, max_s=0.2, stable_after_s=5.0, crash_loop_after=3)


def py(code: str) -> tuple[str, ...]:
    return (PY, "-c", textwrap.dedent(code))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(tmp_path / "logs", backoff=FAST, probe_interval_s=0.05)
    try:
        yield sup
    finally:
        await sup.stop(grace_s=1.0)


def test_backoff_doubles_and_is_bounded() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_a_crashing_child_is_restarted_and_reported_as_crash_looping(supervisor: Supervisor) -> None:
    await supervisor.start(ChildSpec("crasher", py("import sys; print('boom: kafka unreachable'); sys.exit(3)")))
    await until(lambda: supervisor.status()[0].crash_looping)
    status = supervisor.status()[0]
    assert status.restarts >= FAST.crash_loop_after
    assert status.label == "crash-loop"
    assert status.last_exit == 3
    assert "boom: kafka unreachable" in status.reason


async def test_restarts_back_off_exponentially(tmp_path: Path) -> None:
    """Gaps between starts grow (0.1, 0.2, 0.4 s) and stay under the bound."""
    starts = tmp_path / "starts"
    sup = Supervisor(tmp_path / "logs", backoff=Backoff(initial_s=0.1, factor=2.0, max_s=0.4, stable_after_s=5))
    code = f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); raise SystemExit(1)"
    try:
        await sup.start(ChildSpec("crasher", py(code)))
        await until(lambda: starts.exists() and len(starts.read_text().split()) >= 5)
    finally:
        await sup.stop(grace_s=1.0)
    times = [float(x) for x in starts.read_text().split()][:5]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for gap, wanted in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert wanted <= gap < wanted + 0.4


async def test_a_stable_run_resets_the_crash_count(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", backoff=Backoff(initial_s=0.01, stable_after_s=0.2, crash_loop_after=2))
    try:
        await sup.start(ChildSpec("flaky", py("import time; time.sleep(0.3); raise SystemExit(1)")))
        await until(lambda: sup.status()[0].restarts >= 3, timeout_s=5)
        status = sup.status()[0]
        assert status.consecutive_crashes <= 1
        assert not status.crash_looping
    finally:
        await sup.stop(grace_s=1.0)


async def test_an_unknown_command_is_not_available_and_never_restarted(supervisor: Supervisor) -> None:
    said = "Error: No such command 'ghost'."
    await supervisor.start(ChildSpec("ghost", py(f"import sys; print({said!r}); sys.exit(2)")))
    await until(lambda: supervisor.status()[0].state is ChildState.NOT_AVAILABLE)
    await asyncio.sleep(0.3)
    status = supervisor.status()[0]
    assert status.runs == 1
    assert "No such command 'ghost'" in status.reason


async def test_a_missing_program_is_not_available(supervisor: Supervisor, tmp_path: Path) -> None:
    status = await supervisor.start(ChildSpec("missing", (str(tmp_path / "no-such-binary"),)))
    assert status.state is ChildState.NOT_AVAILABLE
    assert "cannot start" in status.reason


async def test_exit_code_2_after_the_first_run_is_an_ordinary_crash(supervisor: Supervisor, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    code = f"""
        import pathlib, sys
        p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1))
        sys.exit(1 if n == 0 else 2)
    """
    await supervisor.start(ChildSpec("two", py(code)))
    await until(lambda: supervisor.status()[0].runs >= 3)
    assert supervisor.status()[0].state is not ChildState.NOT_AVAILABLE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_health_probes_decide_healthy(supervisor: Supervisor, tmp_path: Path) -> None:
    (tmp_path / "readyz").write_text("ok")
    port = _free_port()
    argv = (PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path))
    spec = ChildSpec("web", argv, health_url=f"http://127.0.0.1:{port}/readyz")
    assert (await supervisor.start(spec)).state is ChildState.STARTING
    [status] = await supervisor.wait_ready(["web"], timeout_s=10)
    assert status.state is ChildState.HEALTHY
    (tmp_path / "readyz").unlink()
    await until(lambda: supervisor.status()[0].state is ChildState.UNHEALTHY)


async def test_stop_sends_sigterm_in_stop_order(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", backoff=FAST)
    code = """
        import signal, sys, time
        def bye(*_):
            open(sys.argv[1], 'w').write(str(time.monotonic())); time.sleep(0.2); sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print('ready', flush=True)
        while True: time.sleep(1)
    """
    first, second = tmp_path / "worker", tmp_path / "sandbox"
    await sup.start(ChildSpec("worker", (*py(code), str(first)), stop_order=0))
    await sup.start(ChildSpec("sandbox", (*py(code), str(second)), stop_order=1))
    await until(lambda: all(last_line(s.log_path) == "ready" for s in sup.status()))
    reports = await sup.stop(grace_s=3.0)
    outcomes = [(r.name, r.how, r.exit_code) for r in reports]
    assert outcomes == [("worker", "terminated", 0), ("sandbox", "terminated", 0)]
    assert float(first.read_text()) + 0.2 <= float(second.read_text())
    assert {s.state for s in sup.status()} == {ChildState.STOPPED}


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", backoff=FAST)
    code = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    status = await sup.start(ChildSpec("stubborn", py(code)))
    await until(lambda: last_line(sup.status()[0].log_path) == "ready")
    [report] = await sup.stop(grace_s=0.3)
    assert report.how == "killed"
    assert report.exit_code == -signal.SIGKILL
    assert status.pid is not None and not alive(status.pid)


async def test_stop_reaches_the_childs_own_children(tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild.pid"
    code = f"""
        import subprocess, time
        p = subprocess.Popen(['sleep', '60']); open({str(grandchild)!r}, 'w').write(str(p.pid))
        time.sleep(60)
    """
    sup = Supervisor(tmp_path / "logs", backoff=FAST)
    await sup.start(ChildSpec("parent", py(code)))
    await until(grandchild.exists)
    await until(lambda: grandchild.read_text() != "")
    await sup.stop(grace_s=2.0)
    await until(lambda: not alive(int(grandchild.read_text())), timeout_s=3)


SUPERVISING_SCRIPT = """
import asyncio, sys
from pathlib import Path
from devtools.supervisor import ChildSpec, Supervisor
from workers.runtime.serve import stop_on_signals

async def main():
    sup = Supervisor(Path(sys.argv[1]))
    status = await sup.start(ChildSpec("sleeper", (sys.executable, "-c", "import time; time.sleep(60)")))
    Path(sys.argv[2]).write_text(str(status.pid))
    stop = asyncio.Event()
    stop_on_signals(stop)
    await stop.wait()
    await sup.stop(grace_s=5)

asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_child_outlives_its_supervisor(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGINT/SIGTERM are forwarded as SIGTERM; even SIGKILL of the supervisor takes the child along."""
    pid_file = tmp_path / "child.pid"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([PY, "-c", SUPERVISING_SCRIPT, str(tmp_path / "logs"), str(pid_file)], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert alive(child)
        proc.send_signal(sig)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, f"child {child} outlived its supervisor"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
