"""`fleet sandbox`: start, inspect and stop the vendor sandboxes (``python -m sandbox``) in the background.

``up`` starts one detached process (its own session; pid file, log and ready file in the state
directory), waits until every served HTTP port answers ``GET /_sandbox/state`` (and the Salesforce
Pub/Sub API's gRPC port accepts connections) and is idempotent.
``down`` stops only the pid it recorded, after checking ``/proc/<pid>/cmdline`` is still ours.
Ports, host and the webhook target come from ``Settings.sandbox``; the signing secret is
``Settings.whmcs.webhook_secrets[0]``, handed over in the environment, never on the command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import click
import httpx

from sandbox.runner import PUBSUB, command_line
from workers.cli import Context, pass_ctx
from workers.config import Settings

SECRET_ENV = "SANDBOX_WHMCS_WEBHOOK_SECRET"
PATHS = {"salesforce": "", "whmcs": "/includes/api.php", "freebit": "/emptool/api"}
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Files:
    dir: Path

    @property
    def pid(self) -> Path:
        return self.dir / "sandbox.pid"

    @property
    def log(self) -> Path:
        return self.dir / "sandbox.log"

    @property
    def ready(self) -> Path:
        return self.dir / "ready.json"


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".fleet/sandbox"),
    show_default=True,
    help="Pid file, log and ready file; another directory for a second set of sandboxes.",
)


@click.group(name="sandbox")
def group() -> None:
    """Salesforce, WHMCS and Freebit stand-ins on loopback (ports from FLEET_SANDBOX__*)."""


@group.command()
@state_dir_option
@pass_ctx
def up(ctx: Context, state_dir: Path) -> None:
    """Start the sandboxes unless already running; wait until every port answers."""
    files, settings = Files(state_dir), ctx.settings
    pid = _our_pid(files)
    if pid is not None and _all_answer(settings, files):
        click.echo(f"sandboxes already running (pid {pid})")
        _echo_status(settings, files)
        return
    if pid is not None:
        _fail(f"pid {pid} is running but not answering; see {files.log} or run `fleet sandbox down`")
    process = _spawn(settings, files)
    _wait_ready(settings, files, process)
    click.echo(f"sandboxes started (pid {process.pid}, log {files.log})")
    _echo_status(settings, files)


@group.command()
@state_dir_option
@pass_ctx
def status(ctx: Context, state_dir: Path) -> None:
    """One line per sandbox: port, URL, whether it answers. Exits 1 if one does not."""
    files = Files(state_dir)
    pid = _our_pid(files)
    click.echo(f"process: {'pid ' + str(pid) if pid else 'not running'}")
    if not _echo_status(ctx.settings, files):
        sys.exit(1)


@group.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop the process `up` started (and nothing else)."""
    files = Files(state_dir)
    pid = _our_pid(files)
    if pid is None:
        click.echo("sandboxes not running")
    else:
        _terminate(pid)
        click.echo(f"sandboxes stopped (pid {pid})")
    for path in (files.pid, files.ready):
        path.unlink(missing_ok=True)


# --- process ---------------------------------------------------------------------------------
def _spawn(settings: Settings, files: Files) -> subprocess.Popen[bytes]:
    files.dir.mkdir(parents=True, exist_ok=True)
    files.ready.unlink(missing_ok=True)
    s = settings.sandbox
    command = command_line(s.host, _configured(settings), webhook_url=s.whmcs_webhook_url, ready_file=files.ready)
    env = os.environ | {SECRET_ENV: settings.whmcs.webhook_secrets[0].get_secret_value()}
    with files.log.open("ab") as log:
        # a new session: Ctrl-C in the terminal that ran `up` must not reach the sandboxes
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    files.pid.write_text(str(process.pid))
    return process


def _wait_ready(settings: Settings, files: Files, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        # Our own child: ``poll`` knows whether it exited. Not ``_is_ours``: right after the fork,
        # ``/proc/<pid>/cmdline`` can still show this process's argv (``fleet sandbox up``) until the
        # child's ``exec``, which read as "not the sandbox" and failed a start that was going fine.
        if process.poll() is not None:
            files.pid.unlink(missing_ok=True)
            _fail(f"the sandbox process exited during start-up (status {process.returncode}):\n{_tail(files.log)}")
        if files.ready.exists() and _all_answer(settings, files):
            return
        time.sleep(0.2)
    _fail(f"sandboxes not ready after {START_TIMEOUT_S:.0f} s:\n{_tail(files.log)}")


def _our_pid(files: Files) -> int | None:
    """The recorded pid if that process is still ``python -m sandbox`` (pids get reused)."""
    try:
        pid = int(files.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid) else None


def _is_ours(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and b"-m" in argv and b"sandbox" in argv


def _terminate(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _is_ours(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _is_ours(pid):
        os.kill(pid, signal.SIGKILL)


# --- output ----------------------------------------------------------------------------------
def _served(settings: Settings, files: Files) -> dict[str, int]:
    """What the running process serves (its ready file), else what the settings ask for."""
    try:
        return {k: int(v) for k, v in json.loads(files.ready.read_text()).items()}
    except (OSError, ValueError):
        return _configured(settings)


def _configured(settings: Settings) -> dict[str, int]:
    s = settings.sandbox
    return {"salesforce": s.salesforce_port, "whmcs": s.whmcs_port, "freebit": s.freebit_port,
            PUBSUB: s.salesforce_pubsub_port}  # fmt: skip


def _answers(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/_sandbox/state", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _accepts(host: str, port: int) -> bool:
    """The gRPC port takes a TCP connection (enough to know the server is there)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _up(host: str, name: str, port: int) -> bool:
    return _accepts(host, port) if name == PUBSUB else _answers(host, port)


def _all_answer(settings: Settings, files: Files) -> bool:
    return all(_up(settings.sandbox.host, name, port) for name, port in _served(settings, files).items())


def _echo_status(settings: Settings, files: Files) -> bool:
    host, served, all_up = settings.sandbox.host, _served(settings, files), True
    for name in ("salesforce", "whmcs", "freebit"):
        if name not in served:
            click.echo(f"{name:<11} not served by this tree")
            continue
        up = _answers(host, served[name])
        all_up &= up
        url = f"http://{host}:{served[name]}{PATHS[name]}"
        click.echo(f"{name:<11} port {served[name]:<6} {url:<45} {'up' if up else 'DOWN'}")
    if PUBSUB not in served:
        click.echo(f"{'sf pubsub':<11} not served (port taken? see the sandbox log)")
    else:  # gRPC: a target, not a URL
        up = _accepts(host, served[PUBSUB])
        all_up &= up
        target = f"{host}:{served[PUBSUB]} (Pub/Sub API, gRPC)"
        click.echo(f"{'sf pubsub':<11} port {served[PUBSUB]:<6} {target:<45} {'up' if up else 'DOWN'}")
    return all_up


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _fail(message: str) -> NoReturn:
    click.echo(f"fleet sandbox: {message}", err=True)
    sys.exit(1)
