"""The embedded stack's lifecycle, on a second instance: its own state directory, its own free ports
and its own env file, so the default stack that every other suite shares is never touched.

Contract: ``up`` starts three detached servers and a second ``up`` is a no-op; ``kill -9`` of all
three is recovered by the next ``up``; ``down`` stops exactly the pids ``up`` started, leaves any
other process alone even when a pid file names it, and removes the env file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from devtools import stack
from devtools.stack.envfile import DATABASE_URL, KAFKA_BOOTSTRAP, REDIS_URL, read
from devtools.stack.kafka import CACHE_ROOT, kafka_version
from devtools.stack.process import is_gone, read_cmdline, wait_gone
from workers.config import StackSettings

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Instance:
    settings: StackSettings
    env_file: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``fleet stack <args> --env-file <ours>`` in a child process, as a developer would run it."""
        env = {
            **os.environ,
            "FLEET_STACK__DIR": str(self.settings.dir),
            "FLEET_STACK__KAFKA_PORT": str(self.settings.kafka_port),
            "FLEET_STACK__KAFKA_CONTROLLER_PORT": str(self.settings.kafka_controller_port),
            "FLEET_STACK__REDIS_PORT": str(self.settings.redis_port),
            "FLEET_STACK__POSTGRES_PORT": str(self.settings.postgres_port),
        }
        argv = [sys.executable, "-c", "from workers.cli import main; main()", "stack", *args]
        argv += ["--env-file", str(self.env_file)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def pids(self) -> dict[str, int]:
        states = stack.status(self.settings)
        assert all(s.running and s.pid for s in states), states
        return {s.name: s.pid for s in states if s.pid is not None}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest_asyncio.fixture(loop_scope="session")
async def instance(tmp_path: Path) -> AsyncIterator[Instance]:
    # Not under tmp_path: pytest makes its parents 0700, and the postgres user must traverse the path.
    state_dir = Path(tempfile.mkdtemp(prefix="fleet-stack-test-"))
    kafka, controller, redis, postgres = _free_ports(4)
    settings = StackSettings(
        dir=state_dir, kafka_port=kafka, kafka_controller_port=controller, redis_port=redis, postgres_port=postgres
    )
    yield Instance(settings, tmp_path / "stack.env")
    await stack.down(settings, env_file=tmp_path / "stack.env", purge=True)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process the stack did not start and must never signal."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_up_starts_detached_servers_and_a_second_up_is_a_no_op(instance: Instance) -> None:
    first = instance.cli("up", "--no-provision")
    assert first.returncode == 0, first.stderr
    pids = instance.pids()  # still running after the CLI process exited: detached

    again = instance.cli("up", "--no-provision")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 3, again.stdout
    assert instance.pids() == pids

    shown = instance.cli("status")
    assert shown.returncode == 0
    assert [line.split()[:3] for line in shown.stdout.splitlines()[:3]] == [
        ["kafka", "running", "pid"],
        ["redis", "running", "pid"],
        ["postgres", "running", "pid"],
    ]
    assert f"{instance.env_file} (present)" in shown.stdout
    assert read(instance.env_file) == {
        KAFKA_BOOTSTRAP: f"127.0.0.1:{instance.settings.kafka_port}",
        REDIS_URL: f"redis://127.0.0.1:{instance.settings.redis_port}/0",
        DATABASE_URL: f"postgresql://postgres@127.0.0.1:{instance.settings.postgres_port}/fleet",
        "FLEET_KAFKA__BOOTSTRAP": f"127.0.0.1:{instance.settings.kafka_port}",
        "FLEET_REDIS__URL": f"redis://127.0.0.1:{instance.settings.redis_port}/0",
        "FLEET_POSTGRES__DSN": f"postgresql://postgres@127.0.0.1:{instance.settings.postgres_port}/fleet",
    }


def test_the_broker_is_a_kafka_jvm_on_our_own_jars(instance: Instance) -> None:
    assert instance.cli("up", "--no-provision").returncode == 0
    argv = read_cmdline(instance.pids()["kafka"])
    assert argv is not None

    lib = CACHE_ROOT / f"kafka-{kafka_version()}" / "lib"
    assert Path(argv[0]).name == "java"
    assert argv[argv.index("-cp") + 1] == f"{lib}/*"
    assert argv[-2:] == ["kafka.Kafka", str(instance.settings.dir / "kafka" / "server.properties")]
    assert (lib / f"kafka_2.13-{kafka_version()}.jar").exists()


async def test_up_recovers_after_the_servers_are_killed(instance: Instance) -> None:
    await stack.up(instance.settings, env_file=instance.env_file, provision=False)
    killed = instance.pids()
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    assert await wait_gone(list(killed.values()), 10)
    assert not any(s.running for s in stack.status(instance.settings))

    result = await stack.up(instance.settings, env_file=instance.env_file, provision=False)

    assert all("stale" in s.note for s in result.services), result.services
    assert set(instance.pids().values()).isdisjoint(killed.values())


async def test_down_stops_exactly_what_up_started(instance: Instance, bystander: subprocess.Popen[bytes]) -> None:
    await stack.up(instance.settings, env_file=instance.env_file, provision=False)
    started = instance.pids()

    await stack.down(instance.settings, env_file=instance.env_file)

    assert all(is_gone(pid) for pid in started.values())
    assert not instance.env_file.exists()
    assert bystander.poll() is None


async def test_down_leaves_alone_a_process_named_by_a_stale_pid_file(
    instance: Instance, bystander: subprocess.Popen[bytes]
) -> None:
    (instance.settings.dir / "kafka").mkdir(parents=True)
    (instance.settings.dir / "redis").mkdir(parents=True)
    (instance.settings.dir / "kafka" / "kafka.pid").write_text(f"{bystander.pid}\n")
    (instance.settings.dir / "redis" / "redis.pid").write_text(f"{bystander.pid}\n")

    assert not any(s.running for s in stack.status(instance.settings))
    states = await stack.down(instance.settings, env_file=instance.env_file)

    assert [s.note.split(";")[0] for s in states] == ["not running"] * 3
    assert bystander.poll() is None
