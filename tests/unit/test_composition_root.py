"""One composition root: outside ``workers/bootstrap.py`` no worker module builds a client.

The consumers get their clients from ``bootstrap()``, the two ingress processes from its named
builders. A module that calls ``durable_producer``, ``create_pool``, ``Redis.from_url`` or
``build_client`` itself has grown a second root: its timeouts, retries and client ids drift from the
fleet's. The exceptions are named below with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the calls that build a client of Kafka, Postgres, Redis or a vendor's HTTP API
BUILDERS = frozenset(
    {
        "durable_producer",
        "create_pool",
        "from_url",
        "build_client",
        "salesforce_token_source",
        "AIOKafkaProducer",
        "AsyncClient",
    }
)

#: modules that may build their own, and why
ALLOWED = {
    "workers/bootstrap.py": "the composition root",
    "workers/runtime/serve.py": "the runtime's own failure producer, whose lifecycle the worker owns",
    "workers/dlq/replay.py": "an ops command's short-lived producer",
    "workers/dlq/testing.py": "a test helper that seeds dead letters",
    "workers/cli/orders.py": "an ops command's short-lived pool and producer",
    "workers/cli/db.py": "an ops command's short-lived pool",
    "workers/console/app.py": "the ops console's short-lived pool and producer per page or write, as the CLI's",
}


def _called_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def test_no_worker_module_builds_a_client_outside_the_composition_root() -> None:
    offenders: dict[str, list[str]] = {}
    for path in sorted((ROOT / "workers").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in ALLOWED:
            continue
        built = sorted(_called_names(ast.parse(path.read_text(), relative)) & BUILDERS)
        if built:
            offenders[relative] = built
    assert offenders == {}, f"clients built outside workers/bootstrap.py: {offenders}"


def test_the_check_sees_a_builder_call() -> None:
    tree = ast.parse("import redis.asyncio as r\nclient = r.Redis.from_url('redis://x')\n")
    assert "from_url" in _called_names(tree)
