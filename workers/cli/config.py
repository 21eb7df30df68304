"""`fleet config`: show the effective settings (secrets masked) and render deploy/env.example."""

from __future__ import annotations

import json

import click

from workers.cli._context import Context, pass_ctx
from workers.config import env_example


@click.group(name="config")
def group() -> None:
    """Inspect configuration."""


@group.command("show")
@pass_ctx
def show(ctx: Context) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    click.echo(json.dumps(ctx.settings.model_dump(mode="json"), indent=2, default=str))


@group.command("env-example")
def env_example_cmd() -> None:
    """Print every FLEET_* variable with its default (the content of deploy/env.example)."""
    click.echo(env_example(), nl=False)
