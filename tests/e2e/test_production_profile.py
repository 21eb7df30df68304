"""Scenario: an operator starts the webhook receiver with FLEET_ENV=production.

Contract: without its own FLEET_WHMCS__WEBHOOK_SECRETS, or with the sandbox's public secret, the
receiver does not start: exit status 2, one line naming the variable, and nothing listening on its
port (so no webhook signed with the public secret can ever be accepted). With a real secret given as
a file in the secrets directory, the same command starts and answers /readyz.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.whmcs.app import DEFAULT_WEBHOOK_SECRET

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def production_env(stack_env: dict[str, str], port: int, secrets_dir: Path) -> dict[str, str]:
    # The stack's own addresses, spelt with localhost: 127.0.0.1:19092 and its Redis URL are the local
    # defaults, which production refuses on their own.
    kafka = stack_env["KAFKA_BOOTSTRAP"].replace("127.0.0.1", "localhost")
    redis = stack_env["REDIS_URL"].replace("127.0.0.1", "localhost")
    return {
        **os.environ,
        "FLEET_ENV": "production",
        "FLEET_KAFKA__BOOTSTRAP": kafka,
        "FLEET_REDIS__URL": redis,
        "FLEET_WHMCS__WEBHOOK_LISTEN_PORT": str(port),
        "FLEET_SECRETS_DIR": str(secrets_dir),
        "FLEET_LOG__LEVEL": "WARNING",
    }


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_receiver(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "run", "whmcs-webhooks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("secret", [None, DEFAULT_WEBHOOK_SECRET], ids=["no-secret", "sandbox-secret"])
def test_the_receiver_does_not_start_without_its_own_secret(
    secret: str | None, stack_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = production_env(stack_env, port, tmp_path)
    if secret is not None:
        env["FLEET_WHMCS__WEBHOOK_SECRETS"] = secret
    run = run_receiver(env)
    assert run.returncode == 2
    assert [line.split(":")[1].strip() for line in run.stderr.splitlines()] == ["FLEET_WHMCS__WEBHOOK_SECRETS"]
    assert not listening(port)


def test_with_a_real_secret_file_the_same_command_starts(stack_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    (tmp_path / "FLEET_WHMCS__WEBHOOK_SECRETS").write_text(secret + "\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "workers", "run", "whmcs-webhooks"],
        cwd=ROOT,
        env=production_env(stack_env, port, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the receiver did not become ready"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
