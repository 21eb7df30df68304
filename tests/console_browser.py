"""The console's browser tests' helpers: start ``fleet console`` as a process, drive Debian's chromium.

The browser is the machine's ``/usr/bin/chromium`` (``deploy/bootstrap.sh`` installs it), driven by
Playwright's async API: ``playwright install`` is never run, and pytest-playwright (sync, at odds
with pytest-asyncio) is not used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, async_playwright

from tests.support import eventually

ROOT = Path(__file__).resolve().parents[1]
FLEET = str(ROOT / ".venv" / "bin" / "fleet")
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Console:
    url: str
    process: subprocess.Popen[bytes]


def console_env(stack_env: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_KAFKA__BOOTSTRAP=stack_env["KAFKA_BOOTSTRAP"],
        FLEET_POSTGRES__DSN=stack_env["DATABASE_URL"],
        FLEET_REDIS__URL=stack_env["REDIS_URL"],
        FLEET_LOG__FORMAT="json",
        FLEET_CONSOLE__PORT=str(port),
        **extra,
    )
    return env


@asynccontextmanager
async def running_console(stack_env: dict[str, str], log: Path, **extra: str) -> AsyncIterator[Console]:
    """``fleet console`` on a free port, until it answers ``/livez``; stopped with SIGTERM after."""
    port = free_port()
    with log.open("wb") as out:  # noqa: ASYNC230 - a local file, opened once
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; the test waits on /livez, not on it
            [FLEET, "console"], env=console_env(stack_env, port, **extra), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"fleet console exited with {process.returncode}: {log.read_text()}")  # noqa: ASYNC240
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{url}/livez") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(answers, timeout=30, what="fleet console to answer /livez")
        yield Console(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()
