"""`fleet config`: show the effective settings (secrets masked), check them as a worker would, and
render deploy/env.example."""

from __future__ import annotations

import json
import sys

import click

from workers import profile
from workers.cli._context import Context, pass_ctx
from workers.config import ConfigError, env_example, load_settings
from workers.routes import worker_needs


@click.group(name="config")
def group() -> None:
    """Inspect configuration."""


@group.command("show")
@pass_ctx
def show(ctx: Context) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    click.echo(json.dumps(ctx.settings.model_dump(mode="json"), indent=2, default=str))


@group.command("check")
@click.option(
    "--env",
    "env",
    type=click.Choice(["local", "test", "staging", "production"]),
    help="Check as if FLEET_ENV were this (default: the current FLEET_ENV).",
)
@click.option(
    "--worker",
    "workers",
    multiple=True,
    type=click.Choice(sorted(worker_needs())),
    help="Check for this worker only (repeatable; default: every worker).",
)
def check(env: str | None, workers: tuple[str, ...]) -> None:
    """Print what `fleet run` would refuse to start with, without starting anything; exit 1 if any."""
    try:
        settings = load_settings(env=env)
    except ConfigError as exc:
        click.echo(f"refused: {exc}")
        sys.exit(1)
    chosen = list(workers) or sorted(worker_needs())
    found = profile.problems(settings, chosen)
    for problem in found:
        click.echo(f"refused: {problem.line()}")
    for warning in profile.warnings(settings, chosen):
        click.echo(f"warning: {warning}")
    what = ", ".join(chosen)
    if found:
        click.echo(f"{len(found)} setting(s) would stop {what} (FLEET_ENV={settings.env})")
        sys.exit(1)
    click.echo(f"ok: {what} would start (FLEET_ENV={settings.env})")


@group.command("env-example")
def env_example_cmd() -> None:
    """Print every FLEET_* variable with its default (the content of deploy/env.example)."""
    click.echo(env_example(), nl=False)
