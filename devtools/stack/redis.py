"""The embedded Redis: Debian's ``redis-server`` on loopback, no persistence, daemonized.

Owns: starting it with its own ``--pidfile`` in ``<state>/redis`` and telling whether that pid is
still ours. Must not: touch a system Redis or any redis-server whose argv lacks our directory.
"""

from __future__ import annotations

import signal
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from devtools.stack.process import Signature, forget_stale_pid, require, run, running_pid


class Redis:
    name = "redis"
    stop_signal = signal.SIGTERM  # with no save points configured, Redis exits at once
    ready_timeout_s = 10.0

    def __init__(self, state_dir: Path, *, port: int) -> None:
        self.home = state_dir / "redis"
        self.port = port
        self.ports: tuple[int, ...] = (port,)
        self.pid_file = self.home / "redis.pid"
        self.log_files: tuple[Path, ...] = (self.home / "redis.log",)
        self.signature = Signature("redis-server", str(self.home))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running_pid(self) -> int | None:
        return running_pid(self.pid_file, self.signature)

    async def clean_stale(self) -> list[str]:
        return await forget_stale_pid(self.pid_file, self.name)

    async def start(self) -> list[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        # --daemonize: redis-server forks and the parent exits once the config is accepted, so a bad
        # option fails here with its message; the daemon writes the pid file itself.
        argv = [
            require("redis-server", "apt-get install -y redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "yes",
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.log_files[0]),
            "--dir", str(self.home),
            # Keep the real argv in /proc/<pid>/cmdline (Redis rewrites it to "redis-server
            # 127.0.0.1:N" by default), so the ownership check can see --dir.
            "--set-proc-title", "no",
        ]  # fmt: skip
        await run(argv, cwd=self.home, what="starting redis-server")
        return []

    async def probe(self) -> bool:
        client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()
