"""Per-invocation state of the ``fleet`` CLI: Settings built once, lazily, and the async runner."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import click

from adapters.kafka import KafkaSecurityError, TopicPlanError
from workers.config import ConfigError, Settings, env_var_name, load_settings
from workers.logs import configure_logging

T = TypeVar("T")


class Context:
    """Shared by every subcommand; settings load on first use so ``--help`` never needs them."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                click.echo(f"fleet: {exc}", err=True)
                sys.exit(2)
            configure_logging(self._settings.log.level, self._settings.log.format, self._settings.secrets())
        return self._settings


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with config_errors():
        return asyncio.run(coro)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A configuration problem met while running (Kafka refusing the credentials, a catalog the
    cluster cannot hold, a key file that is missing) ends the command with one line naming the
    setting and exit status 2: retrying would not fix it, so no traceback and no retry loop."""
    try:
        yield
    except KafkaSecurityError as exc:
        click.echo(f"fleet: {env_var_name(('kafka', exc.setting))}: {exc.reason}", err=True)
        sys.exit(2)
    except (ConfigError, TopicPlanError) as exc:
        click.echo(f"fleet: {exc}", err=True)
        sys.exit(2)
