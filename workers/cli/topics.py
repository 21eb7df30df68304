"""`fleet topics`: provision the topic catalog of ``events.topics`` on the configured cluster.

``ensure`` creates what is missing, reports drift on what exists and, with ``--apply``, fixes what
is safe to fix (``adapters.kafka.topics`` says what that is). Exit status: 0 when the cluster holds
the catalog as configured, 1 when drift remains, 2 when the catalog cannot be provisioned at all
(a replication factor above the broker count).
"""

from __future__ import annotations

import sys

import click

from adapters.kafka import Change, Fix, TopicPlan, apply_plan, list_topics, plan_topics
from events.topics import catalog
from workers.cli._context import Context, pass_ctx, run_async


@click.group(name="topics")
def group() -> None:
    """Create and inspect the fleet's Kafka topics."""


@group.command("ensure")
@click.option("--apply", "apply_fixes", is_flag=True, help="Also fix drift that is safe to fix (configs, partitions).")
@click.option(
    "--allow-key-remap",
    is_flag=True,
    help="Add partitions to key-ordered topics too (keys move: drain their consumer groups first).",
)
@pass_ctx
def ensure(ctx: Context, apply_fixes: bool, allow_key_remap: bool) -> None:
    """Create every missing catalog topic, report drift on existing ones, fix it with --apply."""
    settings = ctx.settings
    policy = settings.topic_policy()
    specs = catalog(policy)
    connection = settings.kafka.connection()
    plan = run_async(plan_topics(connection, specs, allow_key_remap=allow_key_remap))
    click.echo(
        f"cluster: {plan.brokers} broker(s); catalog: {len(specs)} topics "
        f"(RF {policy.replication_factor}, min ISR {policy.min_insync_replicas})"
    )
    todo = TopicPlan(plan.brokers, plan.specs, plan.missing + (plan.drift if apply_fixes else []))
    done = run_async(apply_plan(connection, todo)) if todo.changes else []
    for change in plan.changes:
        click.echo(_line(change, change in done, apply_fixes))
    remaining = [c for c in plan.drift if c not in done and _matters(c)]
    created = len(plan.missing)
    fixed = len(done) - created
    click.echo(f"topics: {created} created, {fixed} fixed, {len(remaining)} drifting, {len(specs)} in catalog")
    if remaining:
        if not apply_fixes and any(c.fix is not Fix.NONE for c in remaining):
            click.echo("run `fleet topics ensure --apply` to fix what is safe to fix")
        sys.exit(1)


def _line(change: Change, done: bool, applying: bool) -> str:
    if change.fix is Fix.CREATE:
        return f"  + {change.line()}"
    if done:
        return f"  ~ {change.line()} (done)"
    if change.fix is not Fix.NONE and not applying:
        return f"  ~ {change.line()} (with --apply)"
    return f"  ! {change.line()}" if _matters(change) else f"  = {change.line()}"


def _matters(change: Change) -> bool:
    """Drift an operator must act on; more partitions than the catalog asks for is harmless."""
    return not (change.what == "partitions" and change.fix is Fix.NONE and int(change.have) > int(change.want))


@group.command("list")
@pass_ctx
def list_(ctx: Context) -> None:
    """Show every catalog topic and whether it exists on the cluster."""
    settings = ctx.settings
    present = run_async(list_topics(settings.kafka.connection()))
    for spec in catalog(settings.topic_policy()):
        mark = "ok " if spec.name in present else "MISSING"
        click.echo(
            f"{mark:8} {spec.name:40} partitions={spec.partitions} rf={spec.replication_factor} "
            f"class={spec.topic_class} {spec.description}"
        )
