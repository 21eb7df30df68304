"""`fleet stack`: start, stop and inspect the embedded local stack (Kafka, Redis, PostgreSQL).

Output and exit codes only; the lifecycle itself is ``devtools.stack``, which the test fixture
calls too. ``up`` exits 1 when a server does not become ready, quoting its log; ``status``
always exits 0, so scripts can call it to look.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from devtools import stack
from workers.cli import Context, pass_ctx, run_async
from workers.config import STACK_ENV_FILE

env_file_option = click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=STACK_ENV_FILE,
    show_default=True,
    help="Where the endpoints are written; another path for a second stack (FLEET_STACK__DIR, ports).",
)


@click.group(name="stack")
def group() -> None:
    """Real Kafka (KRaft), Redis and PostgreSQL on 127.0.0.1, state in .fleet/stack, no Docker."""


@group.command()
@env_file_option
@click.option("--no-provision", is_flag=True, help="Skip creating the topic catalog and applying migrations.")
@click.option(
    "--brokers",
    type=click.IntRange(1, 5),
    default=None,
    help="Kafka nodes (default FLEET_STACK__BROKERS, else what the state directory holds, else 1). "
    "3: a KRaft cluster on kafka_port+2i, topics RF 3 / min ISR 2.",
)
@pass_ctx
def up(ctx: Context, env_file: Path, no_provision: bool, brokers: int | None) -> None:
    """Start the servers and wait until they answer.

    Idempotent: what already runs is only checked, and a Kafka node that was killed is started
    again. Then writes the env file, creates the topic catalog and applies migrations. Exits 1,
    quoting the server's log, when one does not start. A state directory formatted for another
    number of Kafka nodes is refused (`down --purge` first).
    """
    settings = ctx.settings.stack
    if brokers is not None:
        settings = settings.model_copy(update={"brokers": brokers})
    try:
        result = run_async(stack.up(settings, env_file=env_file, provision=not no_provision))
    except stack.StackUpError as exc:
        _echo_states(exc.services)
        _fail(exc)
    except stack.StackError as exc:
        _fail(exc)
    _echo_states(result.services)
    for line in result.provisioned:
        click.echo(line)
    click.echo(f"env file: {env_file}  (ready in {result.seconds:.1f} s; `fleet stack env` prints it)")


@group.command()
@env_file_option
@click.option("--purge", is_flag=True, help="Also delete the state directory (data, logs): next `up` is cold.")
@pass_ctx
def down(ctx: Context, env_file: Path, purge: bool) -> None:
    """Stop what `up` started, and nothing else.

    Each pid is checked against /proc before it is signalled. Removes the env file.
    """
    try:
        services = run_async(stack.down(ctx.settings.stack, env_file=env_file, purge=purge))
    except stack.StackError as exc:
        _fail(exc)
    _echo_states(services)
    click.echo(f"env file: {env_file} removed" + (f"; {ctx.settings.stack.dir} deleted" if purge else ""))


@group.command()
@env_file_option
@pass_ctx
def status(ctx: Context, env_file: Path) -> None:
    """Show each server (each Kafka node) and the env file (exits 0)."""
    try:
        _echo_states(stack.status(ctx.settings.stack))
    except stack.StackError as exc:  # settings that name no valid stack (overlapping Kafka ports)
        click.echo(f"fleet stack: {exc}", err=True)
    click.echo(f"env file: {env_file} ({'present' if env_file.exists() else 'absent'})")
    click.echo(f"state:    {ctx.settings.stack.dir.resolve()}")


@group.command()
@env_file_option
@click.option("--export", "export", is_flag=True, help="Prefix each line with `export ` for eval in a shell.")
def env(env_file: Path, export: bool) -> None:
    """Print the env file, shell-sourceable.

    `eval "$(fleet stack env --export)"` points the current shell at the stack.
    """
    try:
        text = env_file.read_text()
    except FileNotFoundError:
        _fail(f"{env_file} does not exist; run `fleet stack up` first")
    for line in text.splitlines():
        is_assignment = export and line and not line.startswith("#")
        click.echo(f"export {line}" if is_assignment else line)


def _echo_states(services: list[stack.ServiceState]) -> None:
    for s in services:
        pid = f"pid {s.pid}" if s.pid is not None else "-"
        took = f" ({s.seconds:.1f} s)" if s.seconds is not None else ""
        state = "running" if s.running else "stopped"
        click.echo(f"{s.name:<9} {state:<8} {pid:<11} {s.endpoint:<16} {s.note}{took}".rstrip())


def _fail(error: object) -> NoReturn:
    click.echo(f"fleet stack: {error}", err=True)
    sys.exit(1)
