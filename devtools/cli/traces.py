"""`fleet traces`: a development trace collector (``collect``) and its tree view (``show``).

``collect`` serves OTLP/HTTP on loopback and appends every span it receives to a JSON-lines file;
``show --order <Salesforce Order Id>`` prints that order's traces as trees (``devtools.traces``).
Options and output only: the receiver and the rendering live in ``devtools.traces``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from devtools import traces
from workers.cli import run_async

DEFAULT_FILE = Path(".fleet/traces.jsonl")


@click.group(name="traces")
def group() -> None:
    """Collect the fleet's spans locally and show an order's traces (docs/tracing.md)."""


@group.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4318, show_default=True, type=int)
@click.option("--file", "path", default=DEFAULT_FILE, show_default=True, type=click.Path(path_type=Path))
def collect(host: str, port: int, path: Path) -> None:
    """Receive OTLP/HTTP spans (POST /v1/traces) until Ctrl-C; append them to FILE as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    click.echo(f"collecting spans on http://{host}:{port}{traces.PATH} into {path}")
    click.echo(f"  run the fleet with OTEL_EXPORTER_OTLP_ENDPOINT=http://{host}:{port}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await traces.serve(traces.Collector(path), host, port, stop)

    run_async(main())


@group.command()
@click.option("--order", "order_id", required=True, help="the Salesforce Order Id (span attribute fleet.order.id)")
@click.option("--file", "path", default=DEFAULT_FILE, show_default=True, type=click.Path(path_type=Path, exists=True))
@click.option("--saga", is_flag=True, help="only the traces in which the saga ran a step (the activation)")
@click.option("--no-db", is_flag=True, help="leave out the Postgres and Redis client spans")
def show(order_id: str, path: Path, saga: bool, no_db: bool) -> None:
    """Print the traces of one order as trees."""
    found = traces.traces_of_order(traces.load(path), order_id)
    if saga:
        found = [t for t in found if any(s["name"].startswith("saga step ") for s in t)]
    if not found:
        raise click.ClickException(f"no trace with a span tagged fleet.order.id={order_id} in {path}")
    for members in found:
        if no_db:
            members = traces.without_db(members)
        click.echo(traces.render(members))
        click.echo()
