"""``fleet sandbox up/status/down`` as a developer runs them, on free ports and a private state dir.

Contract: ``up`` starts one detached ``python -m sandbox`` and returns once every port answers;
a second ``up`` is a no-op with the same pid; ``status`` lists each system's port and URL and
whether it answers (exit 0 when all do, 1 otherwise); the sandboxes speak their APIs on the
configured ports; ``down`` stops exactly the recorded process and refuses to touch a process
that is not ours even when the pid file names it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
FLEET = str(Path(sys.executable).parent / "fleet")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Sandboxes:
    state_dir: Path
    env: dict[str, str]
    ports: dict[str, int]

    def fleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [FLEET, "sandbox", *args, "--state-dir", str(self.state_dir)]
        return subprocess.run(
            command, env=self.env, cwd=self.state_dir.parent, capture_output=True, text=True, timeout=60, check=False
        )

    def pid(self) -> int:
        return int((self.state_dir / "sandbox.pid").read_text())


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[Sandboxes]:
    ports = {"salesforce": free_port(), "whmcs": free_port(), "freebit": free_port(), "salesforce_pubsub": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {f"FLEET_SANDBOX__{name.upper()}_PORT": str(port) for name, port in ports.items()}
    instance = Sandboxes(tmp_path / "sandbox-state", env, ports)
    try:
        yield instance
    finally:
        instance.fleet("down")


def test_up_status_call_down(sandboxes: Sandboxes) -> None:
    started = sandboxes.fleet("up")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = sandboxes.pid()
    assert Path(f"/proc/{pid}").exists()

    again = sandboxes.fleet("up")
    assert again.returncode == 0 and "already running" in again.stdout and sandboxes.pid() == pid

    status = sandboxes.fleet("status")
    assert status.returncode == 0, status.stdout
    whmcs, freebit = sandboxes.ports["whmcs"], sandboxes.ports["freebit"]
    assert f"http://127.0.0.1:{whmcs}/includes/api.php" in status.stdout
    assert f"http://127.0.0.1:{freebit}/emptool/api" in status.stdout

    form = {"action": "GetPayMethods", "identifier": "fleet-api", "secret": "sandbox-whmcs-secret", "clientid": "1001"}
    answer = httpx.post(f"http://127.0.0.1:{whmcs}/includes/api.php", data=form, timeout=5).json()
    assert [m["id"] for m in answer["paymethods"]] == [11]
    login = httpx.post(
        f"http://127.0.0.1:{freebit}/emptool/api/authOem/",
        data={"json": '{"oemId": "PASI", "oemKey": "sandbox-oem-key"}'},
        timeout=5,
    ).json()
    assert login["resultCode"] == "100" and login["authKey"]

    stopped = sandboxes.fleet("down")
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    after = sandboxes.fleet("status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_down_leaves_a_process_that_is_not_ours_alone(sandboxes: Sandboxes) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sandboxes.state_dir.mkdir(parents=True)
        (sandboxes.state_dir / "sandbox.pid").write_text(str(stranger.pid))
        result = sandboxes.fleet("down")
        assert result.returncode == 0 and "not running" in result.stdout
        assert stranger.poll() is None, "down must not signal a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()
