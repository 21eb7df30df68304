"""`fleet topics`: create and list the topic catalog of ``events.topics`` on the configured broker."""

from __future__ import annotations

import click

from adapters.kafka import list_topics
from events.topics import catalog
from workers.cli._context import Context, pass_ctx, run_async
from workers.stack.provision import ensure_catalog


@click.group(name="topics")
def group() -> None:
    """Create and inspect the fleet's Kafka topics."""


@group.command("ensure")
@pass_ctx
def ensure(ctx: Context) -> None:
    """Create every topic of the catalog that does not exist yet (idempotent)."""
    created = run_async(ensure_catalog(ctx.settings.kafka.bootstrap))
    total = len(catalog())
    click.echo(f"topics: {len(created)} created, {total - len(created)} already present ({total} in catalog)")
    for name in created:
        click.echo(f"  + {name}")


@group.command("list")
@pass_ctx
def list_(ctx: Context) -> None:
    """Show every catalog topic and whether it exists on the broker."""
    present = run_async(list_topics(ctx.settings.kafka.bootstrap))
    for spec in catalog():
        mark = "ok " if spec.name in present else "MISSING"
        click.echo(f"{mark:8} {spec.name:40} partitions={spec.partitions} {spec.description}")
