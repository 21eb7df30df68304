"""The dependency rule: events/ and schemas/ are leaves; adapters/ never imports workers/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "events": {"adapters", "workers", "sandbox"},
    "schemas": {"adapters", "workers", "sandbox"},
    "adapters": {"workers", "sandbox"},
}


def imported_packages(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def violations(package: str) -> list[str]:
    bad: list[str] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        hits = imported_packages(path.read_text()) & FORBIDDEN[package]
        bad.extend(f"{path.relative_to(ROOT)} imports {name}" for name in sorted(hits))
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(package: str) -> None:
    assert violations(package) == []


def test_the_check_catches_a_forbidden_import() -> None:
    """The rule must be able to fail: a module importing workers is reported."""
    assert imported_packages("from workers.config import Settings\nimport adapters.kafka\n") == {
        "workers",
        "adapters",
    }
    assert imported_packages("from . import sibling\n") == set()


# Every entry point a user or `make` starts must import on its own, in a fresh interpreter: an import
# cycle (workers.stack -> workers.cli -> workers.demo -> workers.stack) only shows when the first import
# is the wrong one, which the test process (having imported everything already) never sees.
ENTRY_MODULES = [
    "workers.cli",
    "workers.stack",
    "workers.stack.provision",
    "workers.demo.fleet",
    "workers.bootstrap",
    "sandbox.runner",
    "bench.runtime_bench",
    "bench.ingress_bench",
    "bench.e2e_bench",
]


def test_entry_modules_import_alone() -> None:
    import subprocess
    import sys

    failed = {}
    for module in ENTRY_MODULES:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            failed[module] = proc.stderr.strip().splitlines()[-1]
    assert failed == {}
