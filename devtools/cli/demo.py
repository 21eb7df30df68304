"""`fleet demo`: the whole fleet under one command (`make run`), or just the built-in scenario.

    fleet demo up                          stack + sandboxes + five workers, the scenario, then run until Ctrl-C
    fleet demo up --exit-after-scenario    the same, stopping after the summary (tests, CI)
    fleet demo scenario                    only the scenario, against a fleet that already runs

Owns options, output and exit codes: 0 the scenario passed, 1 it failed or the fleet did not come
up, 130 interrupted. Must not hold the logic: ``devtools.demo`` (fleet, scenario, render) and
``devtools.supervisor`` do. The demo's own logs go to ``.fleet/logs/demo.log`` so they never tear
the live table; each worker logs to ``.fleet/logs/<name>.log``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console

from devtools.demo.fleet import Fleet, FleetError, FleetOptions
from devtools.demo.model import ScenarioState
from devtools.demo.render import PlainProgress, hints, live_view, summary_dict, summary_lines, workers_table
from devtools.demo.scenario import Scenario, ScenarioError
from devtools.supervisor import ChildStatus
from workers.cli import Context, pass_ctx, run_async
from workers.config import STACK_ENV_FILE, Settings
from workers.logs import configure_logging
from workers.runtime.serve import stop_on_signals

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
DEFAULT_SUMMARY = Path(".fleet/demo/summary.json")


@dataclass(frozen=True)
class DemoOptions:
    exit_after_scenario: bool
    scenario: bool
    order_timeout_s: float
    summary_json: Path


@click.group(name="demo")
def group() -> None:
    """`make run`: the fleet on the local stack with the sandboxes, and a scenario to watch."""


order_timeout_option = click.option(
    "--order-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds an order may take before it counts as failed.",
)
summary_option = click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SUMMARY,
    show_default=True,
    help="Where the summary is also written as JSON.",
)


@group.command()
@click.option("--exit-after-scenario", is_flag=True, help="Stop the fleet after the summary (tests, CI).")
@click.option("--no-scenario", is_flag=True, help="Only run the fleet.")
@order_timeout_option
@summary_option
@click.option(
    "--freebit-activation-delay",
    type=float,
    default=None,
    help="Seconds a SIM registration stays pending (sandboxes started here only; default 2).",
)
@click.option(
    "--health-port-base", type=int, default=19101, show_default=True, help="Workers' health ports: BASE..BASE+4."
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=STACK_ENV_FILE,
    show_default=True,
    help="Where `stack up` writes the endpoints (a second stack: with FLEET_STACK__* and the FLEET_* endpoints).",
)
@click.option("--worker-command", default=None, hidden=True, help="A template run instead of `fleet run {name}`.")
@pass_ctx
def up(
    ctx: Context,
    exit_after_scenario: bool,
    no_scenario: bool,
    order_timeout: float,
    summary_json: Path,
    freebit_activation_delay: float | None,
    health_port_base: int,
    env_file: Path,
    worker_command: str | None,
) -> None:
    """Start the stack (idempotent), the sandboxes and every worker under one supervisor; run the scenario.

    Workers restart on crash with back-off; one that crash-loops or that `fleet run` does not know
    yet is shown as such. Ctrl-C: SIGTERM to every worker, then the sandboxes started here (SIGKILL
    after a bounded wait); the stack stays up for the next run (`fleet stack down` stops it).
    """
    settings = ctx.settings
    fleet_options = FleetOptions(
        health_port_base=health_port_base,
        freebit_activation_delay_s=freebit_activation_delay,
        worker_command=worker_command,
        env_file=env_file,
    )
    _log_to_file(settings, fleet_options.log_dir / "demo.log")
    options = DemoOptions(exit_after_scenario, not no_scenario, order_timeout, summary_json)
    sys.exit(run_async(_up(settings, fleet_options, options)))


@group.command()
@order_timeout_option
@summary_option
@pass_ctx
def scenario(ctx: Context, order_timeout: float, summary_json: Path) -> None:
    """Run only the scenario against a fleet that is already up (e.g. in another terminal)."""
    settings = ctx.settings
    _log_to_file(settings, FleetOptions().log_dir / "demo.log")
    options = DemoOptions(True, True, order_timeout, summary_json)
    sys.exit(run_async(_scenario_only(settings, options)))


# --- flows ---------------------------------------------------------------------------------------
async def _up(settings: Settings, fleet_options: FleetOptions, options: DemoOptions) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    fleet = Fleet(settings, fleet_options)
    try:
        started = await _unless_stopped(fleet.start(click.echo), stop)
        if started is None:
            return EXIT_INTERRUPTED
        _echo_processes(started)
        code = EXIT_OK
        if options.scenario:
            code = _exit_code(await _run_scenario(settings, options, stop, fleet.status))
        if not options.exit_after_scenario and not stop.is_set():
            console_url = fleet.console_url if fleet_options.console else None
            for line in hints(fleet.endpoints, str(fleet_options.log_dir), console_url):
                click.echo(line)
            await stop.wait()
        return code
    except (FleetError, ScenarioError) as exc:
        click.echo(f"fleet demo: {exc}", err=True)
        return EXIT_FAILED
    finally:
        click.echo("stopping the fleet …")
        for report in await fleet.stop():
            click.echo(f"  {report.name:<18} {report.how} (exit {report.exit_code}) in {report.seconds:.1f} s")


async def _scenario_only(settings: Settings, options: DemoOptions) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        return _exit_code(await _run_scenario(settings, options, stop, None))
    except ScenarioError as exc:
        click.echo(f"fleet demo: {exc}", err=True)
        return EXIT_FAILED


async def _run_scenario(
    settings: Settings, options: DemoOptions, stop: asyncio.Event, workers: Callable[[], list[ChildStatus]] | None
) -> ScenarioState:
    scenario = Scenario(settings, order_timeout_s=options.order_timeout_s, workers=workers)
    console = Console()
    if console.is_terminal:
        with live_view(console) as show:
            state = await scenario.run(show, stop)
    else:
        state = await scenario.run(PlainProgress(click.echo), stop)
    for line in summary_lines(state):
        click.echo(line)
    options.summary_json.parent.mkdir(parents=True, exist_ok=True)
    options.summary_json.write_text(json.dumps(summary_dict(state), indent=2) + "\n")
    return state


# --- helpers -------------------------------------------------------------------------------------
async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None when ``stop`` is set first (Ctrl-C during start-up cancels it)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def _echo_processes(statuses: list[ChildStatus]) -> None:
    console = Console()
    if console.is_terminal:
        console.print(workers_table(statuses))
        return
    for s in statuses:
        click.echo(f"process {s.name:<18} {s.label:<13} pid {s.pid or '-':<8} {s.reason}".rstrip())


def _exit_code(state: ScenarioState) -> int:
    if state.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if state.ok else EXIT_FAILED


def _log_to_file(settings: Settings, path: Path) -> None:
    """The demo's own structlog records go to a file: on the terminal they would tear the live table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = path.open("a", encoding="utf-8")  # kept open for the life of the process
    configure_logging(settings.log.level, "json", settings.secrets(), stream=stream)


if __name__ == "__main__":  # `python -m devtools.cli.demo up`, also without the `fleet.commands` entry point
    group()
