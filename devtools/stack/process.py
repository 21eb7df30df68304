"""Process plumbing for the local stack: detached spawning, pid files, ownership checks, stopping.

Owns the one rule of ``devtools/stack``: a pid is signalled only after ``/proc/<pid>/cmdline``
proves it is the server this stack started, i.e. its argv names the expected program and an
exact path inside our state directory (a properties file, a data directory). A pid file can be
stale, or the pid reused by an unrelated process after a crash or a reboot; the check makes
both harmless. Must not: signal anything by name, signal a process group, or read the
environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


class StackError(Exception):
    """A stack operation failed; the message is meant for a person (it may quote a log tail)."""


@dataclass(frozen=True)
class Signature:
    """How to recognise one of our servers: its program and one exact argument of its argv.

    ``program`` is compared with the basename of every argument (``/usr/bin/redis-server`` and
    ``kafka.Kafka`` both match themselves); ``anchor`` must be an argument as is, and it is always an
    absolute path inside the state directory, so two stacks with different directories never match
    each other's processes.
    """

    program: str
    anchor: str

    def matches(self, argv: Sequence[str]) -> bool:
        return self.anchor in argv and any(Path(arg).name == self.program for arg in argv)


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None when it is gone, a zombie (empty cmdline) or unreadable."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def owns(pid: int, signature: Signature) -> bool:
    argv = read_cmdline(pid)
    return argv is not None and signature.matches(argv)


def read_pid(path: Path) -> int | None:
    """First line of a pid file (Postgres' ``postmaster.pid`` has more lines), or None."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(first) if first.isdigit() else None


def running_pid(pid_file: Path, signature: Signature) -> int | None:
    """The pid in ``pid_file`` if that process is alive and is ours; None otherwise."""
    pid = read_pid(pid_file)
    return pid if pid is not None and owns(pid, signature) else None


def pids_with_cwd(directory: Path, program: str) -> list[int]:
    """Live processes of ``program`` (by executable) whose working directory is ``directory``.

    Postgres backends live in their data directory and rewrite their argv ("postgres: checkpointer"),
    so after their postmaster is killed this is the only way to find them; the executable check
    leaves out anything else sitting there, such as a developer's shell.
    """
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            here = Path(os.readlink(entry / "cwd")) == directory
            if here and Path(os.readlink(entry / "exe")).name == program:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to inspect
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` now. SO_REUSEADDR as the servers use it, so a
    socket in TIME_WAIT left by our own stopped server does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


async def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def spawn_detached(argv: Sequence[str], log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived server that outlives us: its own session (no SIGINT from our terminal,
    no SIGHUP when it closes), stdin closed, stdout and stderr appended to ``log_file``.

    Plain ``subprocess.Popen``, not an asyncio subprocess: asyncio kills a child still running when
    its transport is closed at the end of the event loop.
    """
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def run(argv: Sequence[str], *, cwd: Path, user: str | None = None, what: str) -> str:
    """Run a short command to completion; its combined output, or StackError quoting it.

    ``user`` drops privileges in the child (``setgid``/``setuid`` by subprocess itself) for the
    Postgres tools, which refuse to run as root.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise StackError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{last_lines(text)}")
    return text


def _state(pid: int) -> str | None:
    """The one-letter state of ``/proc/<pid>/stat`` (R, S, Z...), or None when there is no such pid."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited. Reaps it when it is our own child (a stack started in-process,
    as the test fixture does), since an unreaped child would stay a zombie for ever."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return _state(pid) in (None, "Z", "X")


async def wait_reaped(pid: int, timeout_s: float) -> bool:
    """Wait while ``pid`` is a zombie: a server killed with ``kill -9`` is reaped by init, which may
    take a second, and until then ``kill(pid, 0)`` still succeeds, so a lock file naming that pid
    looks held (Postgres refuses to start). A multi-threaded server (the JVM) shows as a zombie as
    soon as its main thread is gone, while its other threads still hold its files, listening sockets
    included; it is reaped only once the last thread exited, so a reaped pid has released its ports.
    Our own child (a stack started in-process) is reaped here. True when it is reaped, or is not a
    zombie at all."""
    deadline = time.monotonic() + timeout_s
    while _state(pid) in ("Z", "X"):
        if is_gone(pid) and _state(pid) not in ("Z", "X"):  # ``is_gone`` reaps our own child
            break
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def forget_stale_pid(pid_file: Path, name: str) -> list[str]:
    """Remove the pid file of a server that is no longer running, once that pid is reaped: after
    ``kill -9`` the old server may still be dying, its ports bound until it is reaped
    (``wait_reaped``), and a start before that finds "port in use by a process we did not start"."""
    old_pid = read_pid(pid_file)
    if old_pid is not None and not await wait_reaped(old_pid, 10.0):
        raise StackError(f"the killed {name} (pid {old_pid}) is still not reaped; try again shortly")
    return [f"stale {pid_file.name} removed"] if _remove(pid_file) else []


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


async def wait_gone(pids: Sequence[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not all(is_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def stop(pid: int, signature: Signature, sig: signal.Signals, timeout_s: float) -> str:
    """Stop one of our servers: the graceful ``sig`` first, SIGKILL if it outlives ``timeout_s``.

    Ownership is checked right before each signal, so a pid that was reused meanwhile is left alone.
    Returns what happened, for the report.
    """
    if not owns(pid, signature):
        return "not running"
    os.kill(pid, sig)
    if await wait_gone([pid], timeout_s):
        return f"stopped (pid {pid})"
    if owns(pid, signature):
        os.kill(pid, signal.SIGKILL)
        await wait_gone([pid], 5.0)
    return f"killed (pid {pid} ignored {sig.name} for {timeout_s:.0f} s)"


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive ``flock`` held for the block: serialises two ``fleet stack`` commands on one state
    directory (two test sessions starting the stack at once). Released by the kernel if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def require(program: str, hint: str) -> str:
    """The absolute path of ``program`` on PATH, or a StackError that says how to install it."""
    found = shutil.which(program)
    if found is None:
        raise StackError(f"`{program}` is not on PATH; the local stack needs it ({hint})")
    return found


def last_lines(text: str, count: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


def tails(paths: Sequence[Path], count: int = 25) -> str:
    """The end of each log file that exists, for an error message; reads at most 64 KiB of each."""
    return "\n".join(_tail(path, count) for path in paths if path.exists())


def _tail(path: Path, count: int) -> str:
    with path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 65536))
        text = log.read().decode(errors="replace")
    return f"--- last lines of {path} ---\n{last_lines(text, count)}"
