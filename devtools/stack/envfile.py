"""The stack's env file (``.fleet/stack.env`` by default): how other processes find the stack.

Owns: the variable names and their rendering, and writing, reading and removing the file.
Plain ``KEY=value`` lines with values that need no quoting (loopback URLs), so one file serves
pydantic-settings (``load_settings`` reads it), ``set -a; . .fleet/stack.env``, ``docker
--env-file`` and make's ``include``. Must not: hold anything secret; the stack has no passwords.
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.config import env_var_name

#: the plain names tests and tools use, then the Settings equivalents the workers read
KAFKA_BOOTSTRAP = "KAFKA_BOOTSTRAP"
REDIS_URL = "REDIS_URL"
DATABASE_URL = "DATABASE_URL"
_SETTINGS_NAMES = {
    KAFKA_BOOTSTRAP: env_var_name(("kafka", "bootstrap")),
    REDIS_URL: env_var_name(("redis", "url")),
    DATABASE_URL: env_var_name(("postgres", "dsn")),
}
_HEADER = "# Written by `fleet stack up`, removed by `fleet stack down`. In a shell: set -a; . {path}; set +a\n"


#: how the workers provision topics on a multi-broker stack (``Settings.topic_policy``)
TOPICS_REPLICATION_FACTOR = env_var_name(("topics", "replication_factor"))
TOPICS_MIN_INSYNC_REPLICAS = env_var_name(("topics", "min_insync_replicas"))


def env_values(
    *, kafka_bootstrap: str, redis_url: str, database_url: str, replication: tuple[int, int] | None = None
) -> dict[str, str]:
    """``kafka_bootstrap`` is every node, comma-separated. ``replication`` (factor, min ISR) is given
    for a multi-broker stack only: the single node's 1/1 is what the workers assume locally anyway."""
    plain = {KAFKA_BOOTSTRAP: kafka_bootstrap, REDIS_URL: redis_url, DATABASE_URL: database_url}
    values = plain | {_SETTINGS_NAMES[name]: value for name, value in plain.items()}
    if replication is not None:
        values[TOPICS_REPLICATION_FACTOR], values[TOPICS_MIN_INSYNC_REPLICAS] = map(str, replication)
    return values


def render(values: dict[str, str], path: Path) -> str:
    return _HEADER.format(path=path) + "".join(f"{key}={value}\n" for key, value in values.items())


def parse(text: str) -> dict[str, str]:
    """``KEY=value`` lines; comments, blank lines and an ``export`` prefix are allowed."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ValueError(f"not a KEY=value line: {raw!r}")
        values[key.strip()] = value.strip()
    return values


def write(path: Path, values: dict[str, str]) -> None:
    """Atomically (write then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(render(values, path))
    scratch.replace(path)


def read(path: Path) -> dict[str, str]:
    return parse(path.read_text())


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
