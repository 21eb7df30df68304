"""A small process supervisor: one subprocess per child, restarted on crash with bounded back-off.

    supervisor = Supervisor(Path(".fleet/logs"))
    await supervisor.start(ChildSpec("fulfillment", ("fleet", "run", "fulfillment"), health_url=...))
    await supervisor.wait_ready(["fulfillment"], timeout_s=30)
    ...
    await supervisor.stop(grace_s=15)          # SIGTERM to every child, SIGKILL after the grace

Owns: spawning each child in its own session with its output appended to ``<log_dir>/<name>.log``,
restarts with exponential back-off, crash-loop detection, HTTP health probes and a bounded,
ordered stop. Must not know what the children are (``devtools.demo.fleet`` builds the specs) and
must not signal a process it did not spawn: it only signals children it has not yet reaped, so
their pids cannot have been reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import httpx
import structlog

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1


class ChildState(StrEnum):
    STARTING = "starting"  # spawned, health not yet confirmed
    RUNNING = "running"  # alive; no health URL to ask
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # alive, but its health endpoint does not say ready
    BACKOFF = "backoff"  # exited; waiting before the next start
    NOT_AVAILABLE = "not available"  # the command does not exist (yet): never restarted
    STOPPED = "stopped"


#: states in which a child counts as up for ``wait_ready``
UP_STATES = frozenset({ChildState.HEALTHY, ChildState.RUNNING})


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``initial_s``, doubling, at most ``max_s``.

    A run that lasts ``stable_after_s`` resets the count: a worker that crashes once a day
    restarts at once, one that dies at boot backs off. ``crash_loop_after`` consecutive short
    runs flag the child as crash-looping; it keeps being restarted (at the bounded delay, so a
    dependency coming back heals it) but the flag is shown until a run is stable again.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_after_s: float = 20.0
    crash_loop_after: int = 4

    def delay(self, consecutive: int) -> float:
        return float(min(self.initial_s * self.factor ** max(consecutive - 1, 0), self.max_s))


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    #: added to (and overriding) the supervisor's own environment
    env: Mapping[str, str] = field(default_factory=dict)
    #: GET answering 200 when the child is ready (``/readyz``); None = alive counts as ready
    health_url: str | None = None
    #: children stop in ascending order (workers before the sandboxes they call)
    stop_order: int = 0
    #: a first run that ends with one of these before ever being ready means "this command does not
    #: exist here" (click's usage error is 2): reported as not available, never restarted
    unavailable_exit_codes: frozenset[int] = frozenset({2})
    cwd: Path | None = None


@dataclass
class ChildStatus:
    name: str
    state: ChildState = ChildState.STARTING
    pid: int | None = None
    runs: int = 0
    restarts: int = 0
    consecutive_crashes: int = 0
    crash_looping: bool = False
    last_exit: int | None = None
    reason: str = ""
    log_path: Path | None = None

    @property
    def label(self) -> str:
        """What a person should see: a crash-looping child says so even while it is briefly up."""
        if self.crash_looping and self.state is not ChildState.HEALTHY:
            return "crash-loop"
        return str(self.state)


@dataclass(frozen=True)
class StopReport:
    name: str
    how: str  # "terminated" (exited after SIGTERM), "killed" (SIGKILL after the grace), "not running"
    exit_code: int | None
    seconds: float


@dataclass
class _Child:
    spec: ChildSpec
    status: ChildStatus
    proc: asyncio.subprocess.Process | None = None
    ever_ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        *,
        backoff: Backoff | None = None,
        probe_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.backoff = backoff or Backoff()
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._children: dict[str, _Child] = {}
        self._stopping = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=1.0)
        self._die_with_us = _pdeathsig_setter()

    # --- public --------------------------------------------------------------------------------
    async def start(self, spec: ChildSpec) -> ChildStatus:
        """Spawn the child and keep it running until ``stop``; returns its status after the spawn."""
        if spec.name in self._children:
            raise ValueError(f"child {spec.name!r} already supervised")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        status = ChildStatus(spec.name, log_path=self.log_dir / f"{spec.name}.log")
        child = _Child(spec, status)
        self._children[spec.name] = child
        spawned = asyncio.Event()
        child.tasks.append(asyncio.create_task(self._keep_running(child, spawned), name=f"supervise-{spec.name}"))
        if spec.health_url is not None:
            child.tasks.append(asyncio.create_task(self._probe(child), name=f"probe-{spec.name}"))
        await spawned.wait()
        return replace(status)

    def not_available(self, name: str, reason: str) -> ChildStatus:
        """List a child that cannot run here (known before spawning it), so it shows up in reports."""
        status = ChildStatus(name, ChildState.NOT_AVAILABLE, reason=reason, log_path=self.log_dir / f"{name}.log")
        self._children[name] = _Child(ChildSpec(name, ()), status)
        log.warning("child_not_available", child=name, reason=reason)
        return replace(status)

    def status(self, names: Iterable[str] | None = None) -> list[ChildStatus]:
        """A snapshot (copies) in start order."""
        wanted = set(names) if names is not None else None
        return [replace(c.status) for n, c in self._children.items() if wanted is None or n in wanted]

    async def wait_ready(self, names: Iterable[str], timeout_s: float) -> list[ChildStatus]:
        """Until every named child is up, or settled as not available, or the timeout passes."""
        names = list(names)
        deadline = self._clock() + timeout_s
        while self._clock() < deadline and not all(self._settled(self._children[n]) for n in names):
            await asyncio.sleep(0.1)
        return self.status(names)

    async def stop(self, grace_s: float = 15.0) -> list[StopReport]:
        """SIGTERM every child's process group (in ``stop_order``), SIGKILL what outlives ``grace_s``."""
        self._stopping.set()
        reports: list[StopReport] = []
        for order in sorted({c.spec.stop_order for c in self._children.values()}):
            batch = [c for c in self._children.values() if c.spec.stop_order == order]
            reports += await asyncio.gather(*(self._stop_child(c, grace_s) for c in batch))
        for child in self._children.values():
            for task in child.tasks:
                task.cancel()
            await asyncio.gather(*child.tasks, return_exceptions=True)
            if child.status.state is not ChildState.NOT_AVAILABLE:
                child.status.state = ChildState.STOPPED
            child.status.pid = None
        await self._http.aclose()
        return reports

    # --- running -------------------------------------------------------------------------------
    async def _keep_running(self, child: _Child, spawned: asyncio.Event) -> None:
        while not self._stopping.is_set():
            proc = await self._spawn(child)
            spawned.set()
            if proc is None:
                return
            began = self._clock()
            code = await self._wait_exit(child, proc)
            if self._stopping.is_set():
                return
            if self._is_unavailable(child, code):
                self._mark_unavailable(child, f"exit {code}: {last_line(child.status.log_path)}")
                return
            delay = self._after_crash(child, code, self._clock() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process | None:
        # The lock makes "spawn" and "stop looks at child.proc" exclusive: a child spawned while
        # stop() runs would otherwise escape its SIGTERM.
        async with child.lock:
            if self._stopping.is_set():
                return None
            status, spec = child.status, child.spec
            assert status.log_path is not None
            try:
                proc = await self._exec(spec, status.log_path, status.runs + 1)
            except OSError as exc:  # the program itself is missing: nothing to restart
                self._mark_unavailable(child, f"cannot start {spec.argv[0]}: {exc.strerror or exc}")
                return None
            child.proc = proc
            status.runs += 1
            status.pid = proc.pid
            status.state = ChildState.STARTING if spec.health_url else ChildState.RUNNING
            log.info("child_started", child=spec.name, pid=proc.pid, run=status.runs)
            return proc

    async def _exec(self, spec: ChildSpec, log_path: Path, run: int) -> asyncio.subprocess.Process:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with log_path.open("ab") as out:
            out.write(f"--- supervisor: start #{run} of {spec.name} at {stamp}: {' '.join(spec.argv)}\n".encode())
            out.flush()
            # A new session: the terminal's Ctrl-C reaches only the supervisor, which then stops
            # the children in order (workers before the sandboxes they still talk to).
            return await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=self._die_with_us,
            )

    async def _wait_exit(self, child: _Child, proc: asyncio.subprocess.Process) -> int:
        # A run that outlives ``stable_after_s`` clears the crash count and the crash-loop flag.
        try:
            return await asyncio.wait_for(asyncio.shield(proc.wait()), self.backoff.stable_after_s)
        except TimeoutError:
            child.status.consecutive_crashes = 0
            child.status.crash_looping = False
            return await proc.wait()

    def _is_unavailable(self, child: _Child, code: int) -> bool:
        return child.status.runs == 1 and not child.ever_ready and code in child.spec.unavailable_exit_codes

    def _mark_unavailable(self, child: _Child, reason: str) -> None:
        child.status.state, child.status.reason, child.status.pid = ChildState.NOT_AVAILABLE, reason, None
        log.warning("child_not_available", child=child.spec.name, reason=reason)

    def _after_crash(self, child: _Child, code: int, ran_s: float) -> float:
        """Record the crash; the delay before the next start."""
        status = child.status
        status.restarts += 1
        status.consecutive_crashes += 1
        status.last_exit, status.pid, status.state = code, None, ChildState.BACKOFF
        status.reason = f"exit {code} after {ran_s:.1f} s: {last_line(status.log_path)}"
        delay = self.backoff.delay(status.consecutive_crashes)
        if status.consecutive_crashes >= self.backoff.crash_loop_after and not status.crash_looping:
            status.crash_looping = True
            log.error("child_crash_loop", child=status.name, crashes=status.consecutive_crashes, reason=status.reason)
        else:
            log.warning("child_exited", child=status.name, code=code, ran_s=round(ran_s, 1), restart_in_s=delay)
        return delay

    # --- health --------------------------------------------------------------------------------
    async def _probe(self, child: _Child) -> None:
        assert child.spec.health_url is not None
        while not self._stopping.is_set():
            if child.status.state in (ChildState.STARTING, ChildState.HEALTHY, ChildState.UNHEALTHY):
                ok = await self._answers(child.spec.health_url)
                # the state may have moved on (the child exited) while the probe was in flight
                if child.status.state in (ChildState.STARTING, ChildState.HEALTHY, ChildState.UNHEALTHY):
                    child.status.state = ChildState.HEALTHY if ok else self._not_ready_state(child)
                    child.ever_ready |= ok
            await asyncio.sleep(self.probe_interval_s)

    async def _answers(self, url: str) -> bool:
        try:
            return (await self._http.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def _not_ready_state(child: _Child) -> ChildState:
        # never ready in this run yet = still starting; was ready and is not any more = unhealthy
        return ChildState.UNHEALTHY if child.status.state is ChildState.HEALTHY else child.status.state

    def _settled(self, child: _Child) -> bool:
        state = child.status.state
        return state in UP_STATES or state is ChildState.NOT_AVAILABLE or child.status.crash_looping

    # --- stopping ------------------------------------------------------------------------------
    async def _stop_child(self, child: _Child, grace_s: float) -> StopReport:
        began = self._clock()
        async with child.lock:
            proc = child.proc
            if proc is None or proc.returncode is not None:
                return StopReport(child.spec.name, "not running", proc.returncode if proc else None, 0.0)
            _signal_group(proc.pid, signal.SIGTERM)
            how = "terminated"
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                how = "killed"
                await proc.wait()
        report = StopReport(child.spec.name, how, proc.returncode, self._clock() - began)
        log.info("child_stopped", child=report.name, how=how, code=report.exit_code, took_s=round(report.seconds, 2))
        return report


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads its own session), so helpers it spawned go too."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group leader after all (exec failed half-way): the process alone
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _pdeathsig_setter() -> Callable[[], None] | None:
    """On Linux, children get SIGTERM when the supervisor dies, even by SIGKILL: no orphaned workers.

    libc is loaded here, in the parent, because the returned function runs between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def set_pdeathsig() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return set_pdeathsig


def last_line(path: Path | None, limit: int = 160) -> str:
    """The log's last non-empty line (what a crashed child said last), shortened."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 4096, 0))
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    text = lines[-1] if lines else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
