"""Helpers shared by the integration and e2e tiers (polling for an observable outcome)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

#: variables of the machine no test may inherit, besides FLEET_* (``tests/conftest.py``'s ``clean_environ``)
MACHINE_VARS = ("CREDENTIALS_DIRECTORY",)


def from_the_shell(name: str) -> bool:
    """A variable that comes from the developer's shell or the machine and must not reach a test:
    the FLEET_* settings and systemd's credentials directory."""
    return name.startswith("FLEET_") or name in MACHINE_VARS


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy and return that value.

    Fails the test with ``what`` after ``timeout`` seconds; polls every 50 ms.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def load_script(path: Path, name: str) -> ModuleType:
    """A script of ``deploy/`` (which holds no importable product code), loaded by its path as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
