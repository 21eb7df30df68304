"""The ``stack_env`` session fixture: where Kafka, Redis and PostgreSQL are for integration and e2e tests.

By default, the embedded stack of ``fleet stack up`` (``devtools.stack``): the endpoints come from its
env file (``.fleet/stack.env``), and when the stack is not running the fixture starts it with the
very function ``fleet stack up`` calls, so ``pytest`` works without a prior ``make up``. The stack is
left running afterwards, for the next run and for the other suites that share it.

Optional, for machines with Docker (not used in CI): ``FLEET_TEST_STACK=testcontainers`` takes the
three services from testcontainers instead, for the session only; without a reachable Docker daemon
the embedded stack is used, and a warning is logged. The variable is not ``FLEET_STACK``: that name
is the ``stack`` section of Settings, which pydantic-settings would try to parse as JSON, so every
``load_settings()`` in the process would fail while it is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest_asyncio

from adapters.kafka import delete_topics, list_topics
from devtools import stack
from devtools.stack.envfile import DATABASE_URL, KAFKA_BOOTSTRAP, REDIS_URL, read
from devtools.stack.provision import ensure_topics_and_schema
from events.topics import catalog
from workers.config import STACK_ENV_FILE, StackSettings, load_settings

__all__ = ["stack_env"]

STACK_MODE_VAR = "FLEET_TEST_STACK"
REPO_ROOT = Path(__file__).resolve().parents[1]
_log = logging.getLogger(__name__)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack_env() -> AsyncIterator[dict[str, str]]:
    """``{"KAFKA_BOOTSTRAP": ..., "REDIS_URL": ..., "DATABASE_URL": ...}`` of a running, provisioned stack."""
    if os.environ.get(STACK_MODE_VAR) == "testcontainers" and _docker_reachable():
        with _containers() as env:
            await ensure_topics_and_schema(env[KAFKA_BOOTSTRAP], env[DATABASE_URL])
            yield env
        return
    env = await _embedded_stack_env()
    before = await list_topics(env[KAFKA_BOOTSTRAP])
    yield env
    await _delete_session_topics(env[KAFKA_BOOTSTRAP], before)


async def _embedded_stack_env() -> dict[str, str]:
    # Anchored at the repo root, as `fleet stack up` run from there sees them, wherever pytest runs.
    env_file = REPO_ROOT / STACK_ENV_FILE
    settings = _stack_settings()
    if not (env_file.exists() and all(service.running for service in stack.status(settings))):
        await stack.up(settings, env_file=env_file)
    values = read(env_file)
    # Always (re)provision: idempotent and cheap, and a running stack may predate newer migrations.
    await ensure_topics_and_schema(values[KAFKA_BOOTSTRAP], values[DATABASE_URL])
    return {name: values[name] for name in (KAFKA_BOOTSTRAP, REDIS_URL, DATABASE_URL)}


async def _delete_session_topics(bootstrap: str, before: set[str]) -> None:
    """The stack outlives the session, its throwaway topics should not: delete every topic the session
    created (unique t-*/test.*/e2e names), never one that existed before it or one of the catalog's."""
    keep = before | {spec.name for spec in catalog()}
    created = [name for name in await list_topics(bootstrap) if name not in keep and not name.startswith("__")]
    try:
        deleted = await delete_topics(bootstrap, created)
    except Exception as exc:  # cleanup only: a failure here must not fail a green run
        _log.warning("could not delete the session's %d topics: %r", len(created), exc)
    else:
        _log.info("deleted the session's %d topics", len(deleted))


def _stack_settings() -> StackSettings:
    """The developer's FLEET_STACK__* overrides apply; a relative directory is the repo root's."""
    settings = load_settings(env_file=None).stack
    return settings.model_copy(update={"dir": REPO_ROOT / settings.dir})


def _docker_reachable() -> bool:
    import docker  # testcontainers' own dependency; only needed on this path
    import requests

    try:
        docker.from_env(timeout=3).ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        _log.warning("%s=testcontainers but Docker is unreachable (%s); using the embedded stack", STACK_MODE_VAR, exc)
        return False
    return True


@contextlib.contextmanager
def _containers() -> Iterator[dict[str, str]]:
    try:  # testcontainers >= 4.10 moved the modules under `community`; the old paths now warn
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

    with contextlib.ExitStack() as running:
        # testcontainers' KafkaContainer drives Confluent's image (Kafka 3.x in KRaft mode), not our 4.x
        # broker: fine for clients, which speak the same protocol to both.
        kafka = running.enter_context(KafkaContainer().with_kraft())
        redis = running.enter_context(RedisContainer("redis:7"))
        postgres = running.enter_context(
            PostgresContainer("postgres:15", username="postgres", password="postgres", dbname="fleet", driver=None)
        )
        redis_host, redis_port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
        yield {
            KAFKA_BOOTSTRAP: kafka.get_bootstrap_server(),
            REDIS_URL: f"redis://{redis_host}:{redis_port}/0",
            DATABASE_URL: postgres.get_connection_url(),
        }
