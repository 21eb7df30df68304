"""`fleet db`: apply the SQL migrations and seed the demo id mappings."""

from __future__ import annotations

import click

from adapters.db import create_pool, migrate, seed_id_mappings
from workers.cli._context import Context, pass_ctx, run_async


@click.group(name="db")
def group() -> None:
    """PostgreSQL schema and data."""


@group.command("migrate")
@pass_ctx
def migrate_cmd(ctx: Context) -> None:
    """Apply pending migrations (idempotent)."""
    applied = run_async(migrate(ctx.settings.postgres.dsn.get_secret_value()))
    click.echo(
        f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ", schema is current")
    )


@group.command("seed-demo")
@pass_ctx
def seed_demo(ctx: Context) -> None:
    """Insert the sandbox demo world's id_mappings rows."""
    from sandbox.demo_data import id_mappings

    async def go() -> int:
        pool = await create_pool(ctx.settings.postgres.dsn.get_secret_value())
        try:
            return await seed_id_mappings(pool, id_mappings())
        finally:
            await pool.close()

    click.echo(f"id_mappings: {run_async(go())} demo rows ensured")
