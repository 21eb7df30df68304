"""`fleet run`: list the workers of the fleet, or run one of them until SIGTERM/SIGINT.

Owns argument parsing and printing, and the start-up gate: a worker whose settings the profile
refuses (``workers.profile``) stops with one line per variable before anything is opened. Must not
hold the loop: the worker is ``workers.runtime``, the routes are ``workers.routes``, the
dependencies come from ``workers.bootstrap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

import click
import structlog

from workers import crashpoints, profile
from workers.cli._context import Context, pass_ctx, run_async
from workers.config import RuntimeSettings, Settings
from workers.routes import INGRESS, ROUTES, IngressSpec, RouteSpec
from workers.runtime.route import Route

log = structlog.get_logger(__name__)


@click.group(name="run", invoke_without_command=True)
@click.option("--list", "list_routes", is_flag=True, help="Print the routes table and exit.")
@click.pass_context
def group(click_ctx: click.Context, list_routes: bool) -> None:
    """Run one worker of the fleet (`fleet run <name>`), or list them (`fleet run --list`)."""
    if list_routes:
        _print_table(click_ctx.find_object(Context))
    elif click_ctx.invoked_subcommand is None:
        click.echo(click_ctx.get_help())


def _print_table(ctx: Context | None) -> None:
    runtime = ctx.settings.runtime if ctx is not None else RuntimeSettings()
    for spec in ROUTES.values():
        route = spec.with_handlers({})
        click.echo(f"{spec.name}  [consumer]  group={spec.group}")
        click.echo(f"    reads: {', '.join(spec.topics)}")
        failure = [*route.retry_topics(runtime.retry_tier_delays_ms), route.dlq]
        click.echo(f"    failures: {', '.join(failure) if spec.dead_letter else 'retried in place (no DLQ)'}")
        click.echo(f"    delivery: {_delivery(route, runtime)}")
        for event_type, handler in spec.handlers.items():
            click.echo(f"    {event_type} -> {handler}")
        if spec.description:
            click.echo(f"    {spec.description}")
    for ingress in INGRESS.values():
        click.echo(f"{ingress.name}  [ingress]")
        click.echo(f"    writes: {', '.join(ingress.writes)}")
        click.echo(f"    {ingress.description}")
    click.echo("(*: the runtime's default, FLEET_RUNTIME__*; a route's own value otherwise)")


def _delivery(route: Route, runtime: RuntimeSettings) -> str:
    """The route's delivery policy as its worker applies it (``workers.runtime.worker``); ``*`` marks
    a value that comes from the runtime's settings rather than the route."""
    attempts = route.in_place_attempts or runtime.in_place_attempts
    tiers = "/".join(f"{d / 1000:g}s" for d in route.tier_delays_ms(runtime.retry_tier_delays_ms)) or "none"
    # the worker's precedence: the setting, when set, wins over every route's own value
    keys = runtime.max_in_flight_per_partition or route.max_in_flight_per_partition or 1
    own_keys = route.max_in_flight_per_partition is not None and runtime.max_in_flight_per_partition is None
    return (
        f"in place x{attempts}{_mark(route.in_place_attempts is not None)}, "
        f"tiers {tiers}{_mark(route.retry_delays_ms is not None)}, "
        f"keys per partition {keys}{_mark(own_keys)}"
    )


def _mark(own: bool) -> str:
    return "" if own else "*"


def refuse_unless_configured(ctx: Context, worker: str) -> None:
    """Exit 2 with one line per offending variable when the profile refuses ``worker``'s settings
    (a staging/production process on a sandbox default, a missing secret, contradicting Kafka
    security settings); nothing has been opened yet. Warnings go to the log and do not stop it."""
    settings = ctx.settings
    found = profile.problems(settings, [worker])
    for problem in found:
        click.echo(f"fleet: {problem.line()}", err=True)
    if found:
        sys.exit(2)
    for warning in profile.warnings(settings, [worker]):
        log.warning("config_warning", worker=worker, env=settings.env, warning=warning)
    if settings.testing.crash_points:
        try:
            points = crashpoints.arm(settings.testing.crash_points)
        except crashpoints.CrashPointError as exc:
            click.echo(f"fleet: FLEET_TESTING__CRASH_POINTS: {exc}", err=True)
            sys.exit(2)
        log.warning("crash_points_armed", worker=worker, points=points)


def _run_command(spec: RouteSpec) -> click.Command:
    @click.command(name=spec.name, help=f"Run the {spec.name} worker (group {spec.group}).")
    @pass_ctx
    def command(ctx: Context) -> None:
        refuse_unless_configured(ctx, spec.name)
        run_async(_serve(ctx, spec))

    return command


async def _serve(ctx: Context, spec: RouteSpec) -> None:
    from workers.bootstrap import bootstrap
    from workers.runtime import serve, stop_on_signals

    settings = ctx.settings
    stop = asyncio.Event()
    stop_on_signals(stop)  # SIGTERM / SIGINT: stop fetching, drain, commit, leave the group
    with _tracing(settings, spec.name):
        async with bootstrap(settings, needs=spec.needs) as deps:
            await serve(spec.route(deps), settings, stop, pool=deps.pool)


def _ingress_command(spec: IngressSpec) -> click.Command:
    @click.command(name=spec.name, help=f"Run the {spec.name} ingress worker.")
    @pass_ctx
    def command(ctx: Context) -> None:
        refuse_unless_configured(ctx, spec.name)
        run_async(_serve_ingress(ctx, spec))

    return command


async def _serve_ingress(ctx: Context, spec: IngressSpec) -> None:
    from workers.runtime import stop_on_signals

    settings = ctx.settings
    stop = asyncio.Event()
    stop_on_signals(stop)  # SIGTERM / SIGINT: stop accepting, finish in-flight work, checkpoint
    with _tracing(settings, spec.name):
        await spec.entry(settings, stop)


@contextlib.contextmanager
def _tracing(settings: Settings, worker: str) -> Iterator[None]:
    """Tracing on for this worker process when the ``OTEL_*`` variables say so (service
    ``fleet-<worker>``), before any client is built; the queued spans are flushed at exit."""
    from workers.bootstrap import start_tracing

    shutdown = start_tracing(settings, f"fleet-{worker}")
    try:
        yield
    finally:
        if shutdown is not None:
            shutdown()


for _spec in ROUTES.values():
    group.add_command(_run_command(_spec))
for _ingress in INGRESS.values():
    group.add_command(_ingress_command(_ingress))
