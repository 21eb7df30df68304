"""Shared fixtures: a clean environment for every test and the local stack for the slower tiers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import structlog

# the local-stack fixtures (real Kafka, Redis, Postgres) for integration and e2e tests
from tests.stack_fixtures import *  # noqa: F403
from tests.support import from_the_shell

#: an empty secrets directory for every test: a machine's /run/secrets or systemd credentials must
#: not leak into settings a test builds (or into the processes it starts)
EMPTY_SECRETS_DIR = tempfile.mkdtemp(prefix="fleet-test-secrets-")


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """No test depends on the developer's shell: FLEET_* variables (and systemd's credentials
    directory) are removed and restored; secret files are looked for in an empty directory."""
    saved = {k: v for k, v in os.environ.items() if from_the_shell(k)}
    for key in saved:
        del os.environ[key]
    os.environ["FLEET_SECRETS_DIR"] = EMPTY_SECRETS_DIR
    try:
        yield
    finally:
        for key in [k for k in os.environ if from_the_shell(k)]:
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """A test that configures logging (level, renderer, stream) must not leak it into the next one."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
