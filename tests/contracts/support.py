"""Helpers the contract suites share: a manual clock, unique ids, an in-process sandbox server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from sandbox.common import SandboxBase, serve


@dataclass
class ManualClock:
    """A clock tests move by hand, so "after the activation delay" takes no wall time."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def unique_digits(n: int) -> str:
    return str(uuid.uuid4().int)[:n].rjust(n, "1")


@dataclass(frozen=True)
class Served:
    sandbox: SandboxBase
    base_url: str


@asynccontextmanager
async def serving(sandbox: SandboxBase) -> AsyncIterator[Served]:
    """Run ``sandbox`` on an ephemeral loopback port for the duration of the block."""
    runner: web.AppRunner = await serve(sandbox.app(), "127.0.0.1", 0)
    try:
        yield Served(sandbox, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()
