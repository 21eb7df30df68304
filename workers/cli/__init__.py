"""The ``fleet`` command line: subcommands grouped by job (stack, topics, db, run, sandbox, dlq, orders).

Each group lives in its own module; this one builds the Settings once (lazily, so ``--help``
works with a broken environment) and turns configuration errors into one line naming the variable.
"""

from __future__ import annotations

import click

from workers.cli._context import Context, pass_ctx, run_async

__all__ = ["Context", "main", "pass_ctx", "run_async"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fulfillment-fleet")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fulfillment-fleet: event-driven workers between Salesforce, WHMCS, Freebit and the portal cache.

    \b
    Start here:
      fleet stack up        start Kafka, Redis and PostgreSQL on loopback
      fleet topics ensure   create every topic of the catalog
      fleet db migrate      apply the SQL migrations
      fleet run --list      the workers and what they consume
    """
    ctx.ensure_object(Context)


def _register() -> None:
    from workers.cli import config, db, demo, dlq, events, orders, run, sandbox, stack, topics

    for module in (stack, topics, db, events, run, sandbox, demo, dlq, orders, config):
        main.add_command(module.group)


_register()
