"""`fleet dlq`: inspect, replay and purge a consumer group's dead letters (docs/dlq-runbook.md).

``-g ingress`` means the ingress workers' dead letters (``ingress.dlq.v1``): raw bodies refused
before any group saw them; their replay re-ingests them (``workers.dlq.ingress``).

Owns option parsing and printing (rich tables and a progress bar on a terminal, plain lines in a
pipe). Must not hold the logic: reading, selecting, replaying and purging live in ``workers.dlq``.
Exit codes: 0 done, 1 failed or not confirmed, 2 bad usage, 130 interrupted (progress is saved).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import click
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from adapters.db import migrate
from workers.cli._context import Context, config_errors, pass_ctx
from workers.dlq import audit, browse, purge, render, unpark
from workers.dlq.filters import Filter, FilterError, parse_coordinates, parse_when
from workers.dlq.names import INGRESS, every_name
from workers.dlq.reader import ReadStalled, TopicMissing
from workers.dlq.replay import ReplayOptions, replay
from workers.dlq.selection import REFUSED, Action

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: failures an operator can act on: one line, exit 1, no traceback
_EXPECTED = (
    TopicMissing,
    ReadStalled,
    audit.GroupBusy,
    KafkaError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the job; SIGTERM cancels it like Ctrl-C does, so its audit row and progress are written."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    try:
        with config_errors():
            return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted: progress is saved; run the same command again to resume", err=True)
        sys.exit(130)
    except _EXPECTED as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(name="dlq")
def group() -> None:
    """Dead letters: list, show, replay (into the group's own retry topic) and purge.

    GROUP is a consumer group, or `ingress` for ingress.dlq.v1 (webhook bodies the receiver
    refused; replay re-ingests them onto whmcs.billing.v1).

    \b
      fleet dlq list                          what is dead-lettered, by error and event type
      fleet dlq show -g G -p 0 -o 12          one record: provenance, error, payload, headers
      fleet dlq replay -g G --since 2h --dry-run   preview, then run without --dry-run
      fleet dlq purge -g G --error-class X    hide records you will never replay
      fleet dlq unpark -g G --parked 0:3      replay a parked record once more (past the loop guard)
      fleet dlq audit                         who replayed or purged what, when
    """


# --- filters shared by replay and purge --------------------------------------------------------


def filter_options(fn: F) -> F:
    options = [
        click.option("--since", help="dead-lettered at or after: 2h, 30m, 1d, or ISO (UTC if no zone)"),
        click.option("--until", help="dead-lettered at or before (same forms as --since)"),
        click.option("--error-class", "error_classes", multiple=True, help="error class, full or short; globs ok"),
        click.option("--event-type", "event_types", multiple=True, help="ce_type, e.g. fleet.order.changed.v1; globs"),
        click.option("--key", "keys", multiple=True, help="record key (exact)"),
        click.option("--event-id", "event_ids", multiple=True, help="ce_id (exact)"),
        click.option("--record", "records", multiple=True, help="PARTITION:OFFSET in the DLQ (exact)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_filter(
    since: str | None,
    until: str | None,
    error_classes: Sequence[str],
    event_types: Sequence[str],
    keys: Sequence[str],
    event_ids: Sequence[str],
    records: Sequence[str],
    *,
    now: datetime | None = None,
) -> Filter:
    now = now or datetime.now(UTC)
    try:
        return Filter(
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            error_classes=tuple(error_classes),
            event_types=tuple(event_types),
            keys=tuple(keys),
            event_ids=tuple(event_ids),
            records=tuple(parse_coordinates(r) for r in records),
        )
    except FilterError as exc:
        raise click.BadParameter(str(exc)) from None


def _window_note(filt: Filter) -> str | None:
    if not (filt.since or filt.until):
        return None
    return f"window (dead-lettered, UTC): {render.when(filt.since)} .. {render.when(filt.until)}"


# --- list / show / audit -----------------------------------------------------------------------


@group.command("list")
@click.option(
    "--group", "-g", "groups", multiple=True, help=f"consumer group or {INGRESS} (repeatable); default: all of them"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_ctx
def list_cmd(ctx: Context, groups: tuple[str, ...], as_json: bool) -> None:
    """Per group (and ingress): dead letters by error class and event type, oldest/newest (purged ones hidden)."""
    s = ctx.settings
    chosen = list(groups) or every_name()
    views = _run(browse.overviews(s.kafka.connection(), s.postgres.dsn.get_secret_value(), chosen))
    if as_json:
        click.echo(json.dumps([render.overview_json(v) for v in views], indent=2))
        return
    console = _console()
    for view in views:
        _print_overview(console, view)


_NUMERIC = {"count", "replayed", "parked"}


def _print_overview(console: Console, view: browse.GroupOverview) -> None:
    console.print(render.overview_headline(view))
    rows = [render.bucket_row(b) for b in view.sorted_buckets()]
    if not rows:
        return
    if console.is_terminal:
        table = Table(show_edge=False)
        for name in render.OVERVIEW_COLUMNS:
            table.add_column(name, overflow="fold", justify="right" if name in _NUMERIC else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        for row in rows:
            console.print("  " + "  ".join(row))


@group.command("show")
@click.option("--group", "-g", required=True, help=f"consumer group whose DLQ to read, or {INGRESS}")
@click.option("--partition", "-p", type=int, help="DLQ partition (with --offset)")
@click.option("--offset", "-o", type=int, help="DLQ offset (with --partition)")
@click.option("--event-id", help="ce_id; shows every dead letter of that event")
@pass_ctx
def show_cmd(ctx: Context, group: str, partition: int | None, offset: int | None, event_id: str | None) -> None:
    """One dead letter in full: status, provenance, error and stack trace, payload, original headers."""
    if (partition is None) != (offset is None) or (partition is None) == (event_id is None):
        raise click.UsageError("give either --partition and --offset, or --event-id")
    at = (partition, offset) if partition is not None and offset is not None else None
    s = ctx.settings
    views = _run(browse.find(s.kafka.connection(), s.postgres.dsn.get_secret_value(), group, at=at, event_id=event_id))
    if not views:
        raise click.ClickException("no such dead letter (wrong coordinates, or deleted by retention/truncation)")
    console = _console()
    for view in views:
        _print_record(console, view)


def _print_record(console: Console, view: browse.RecordView) -> None:
    for title, pairs in render.record_sections(view):
        console.print(f"[bold]{title}[/bold]" if console.is_terminal else f"{title}:")
        for label, value in pairs:
            console.print(f"  {label + ':':<18} {value}", markup=False)
    if view.dl.ingress is not None:  # what the sender signed, byte for byte, and every header
        console.print("raw body:")
        console.print(render.raw_body(view), markup=False)
        console.print("headers:")
        for line in render.header_lines(view.dl.headers):
            console.print(f"  {line}", markup=False)
        console.print()
        return
    console.print("stack trace:")
    console.print(view.dl.header("error_stacktrace") or "  -", markup=False)
    console.print("payload:")
    console.print(render.payload_text(view), markup=False)
    console.print("original headers:")
    for line in render.original_header_lines(view):
        console.print(f"  {line}", markup=False)
    console.print()


@group.command("audit")
@click.option("--group", "-g", help="only this consumer group")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@pass_ctx
def audit_cmd(ctx: Context, group: str | None, limit: int) -> None:
    """Recent replay and purge jobs (dry runs included): who, when, which filters, what happened."""
    rows = _run(_recent_jobs(ctx.settings.postgres.dsn.get_secret_value(), group, limit))
    console = _console()
    table = Table(*render.AUDIT_COLUMNS, show_edge=False)
    for row in rows:
        cells = render.audit_row(row)
        if console.is_terminal:
            table.add_row(*cells)
        else:
            console.print("  ".join(cells), markup=False)
    if console.is_terminal:
        console.print(table)


async def _recent_jobs(dsn: str, group: str | None, limit: int) -> list[audit.AuditRow]:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        return await audit.recent(conn, group, limit)
    finally:
        await conn.close()


# --- replay ----------------------------------------------------------------------------------


class _Listener:
    """Dry run: one line per record. Real run: a line per refused record, and a progress bar on a terminal."""

    def __init__(self, console: Console, dry_run: bool) -> None:
        self.console, self.dry_run = console, dry_run
        self.progress: Progress | None = None
        self.task: Any = None

    def planned(self, actions: Sequence[Action]) -> None:
        if self.dry_run:
            for action in actions:
                self.console.print(render.action_line(action, dry_run=True), markup=False)
            return
        for action in actions:
            if action.outcome == REFUSED:
                self.console.print(render.action_line(action, dry_run=False), markup=False)
        if any(a.outcome != REFUSED for a in actions) and self.console.is_terminal:
            self.progress = Progress(
                TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=self.console
            )
            self.progress.start()
            total = sum(a.outcome != REFUSED for a in actions)
            self.task = self.progress.add_task("replay", total=total)

    def sent(self, count: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, count)
            if self.progress.finished:  # stop before the job logs its summary under the bar
                self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@group.command("replay")
@click.option(
    "--group",
    "-g",
    required=True,
    help=f"the consumer group that failed (replays go to its retry.1), or {INGRESS} (re-ingest refused webhooks)",
)
@filter_options
@click.option("--limit", type=click.IntRange(min=1), help="replay at most N records (the rest wait for a re-run)")
@click.option("--dry-run", is_flag=True, help="print what would be replayed or parked; send nothing")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="records per second (default: unpaced)")
@click.option("--again", is_flag=True, help="also replay records an earlier job already replayed")
@click.option("--operator", default=audit.default_operator, show_default="OS user", help="name in the audit")
@pass_ctx
def replay_cmd(
    ctx: Context,
    /,
    group: str,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    again: bool,
    operator: str,
    **filters: Any,
) -> None:
    """Re-send dead letters to GROUP's own retry topic (never the shared source topic).

    Records already replayed max_replays times are parked (<group>.parked) instead. Resumable:
    re-running the same command skips what was replayed, even after a kill.

    With -g ingress, each refused webhook body is parsed and translated again, as the receiver
    would, and its event goes to whmcs.billing.v1 with the receiver's CloudEvent id (no group had
    seen it). A body that still fails is refused: nothing is sent for it, and the exit code is 1.
    """
    filt = build_filter(**filters)
    s = ctx.settings
    opts = ReplayOptions(group, filt, operator, s.runtime.max_replays, limit, dry_run, again, rate)
    console = _console()
    if note := _window_note(filt):
        click.echo(note, err=True)
    listener = _Listener(console, dry_run)
    try:
        report = _run(replay(s.kafka.connection(), s.postgres.dsn.get_secret_value(), opts, listener))
    finally:
        listener.close()
    click.echo(render.summary_line("replay", group, report.job_id, dry_run, report.counts))
    if report.counts.get(REFUSED) and not dry_run:
        raise click.ClickException(
            f"{report.counts[REFUSED]} dead letter(s) still refused (see above), nothing sent for them;"
            " fix the cause and run the same command again"
        )


# --- unpark ----------------------------------------------------------------------------------


@group.command("unpark")
@click.option("--group", "-g", required=True, help="the consumer group whose parked record to send back")
@click.option("--parked", "parked_at", required=True, help="PARTITION:OFFSET of the copy on <group>.parked")
@click.option("--dry-run", is_flag=True, help="print what would be replayed; send nothing")
@click.option("--operator", default=audit.default_operator, show_default="OS user", help="name in the audit")
@pass_ctx
def unpark_cmd(ctx: Context, /, group: str, parked_at: str, dry_run: bool, operator: str) -> None:
    """Replay the dead letter a parked copy came from once more, past the loop guard (audited as a replay)."""
    try:
        at = parse_coordinates(parked_at)
    except FilterError as exc:
        raise click.BadParameter(str(exc)) from None
    s = ctx.settings
    dsn = s.postgres.dsn.get_secret_value()
    origins = _run(unpark.parked_origins(dsn, group))
    if at not in origins:
        raise click.ClickException(f"{group}.parked {parked_at} is not a parked record (or it was un-parked already)")
    opts = unpark.unpark_options(group, origins[at], operator, dry_run=dry_run)
    listener = _Listener(_console(), dry_run)
    try:
        report = _run(replay(s.kafka.connection(), dsn, opts, listener))
    finally:
        listener.close()
    click.echo(render.summary_line("replay", group, report.job_id, dry_run, report.counts))


# --- purge -----------------------------------------------------------------------------------


@group.command("purge")
@click.option("--group", "-g", required=True, help="the consumer group whose dead letters to purge")
@filter_options
@click.option("--dry-run", is_flag=True, help="print what would be purged; mark nothing")
@click.option("--truncate", is_flag=True, help="also delete each partition's purged prefix from Kafka")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--operator", default=audit.default_operator, show_default="OS user", help="name in the audit")
@pass_ctx
def purge_cmd(
    ctx: Context, /, group: str, dry_run: bool, truncate: bool, yes: bool, operator: str, **filters: Any
) -> None:
    """Hide matching dead letters from list/show/replay (Kafka cannot delete single records).

    With --truncate, each partition is also cut (Kafka DeleteRecords) before its first record
    that is not purged, so only purged records are ever deleted.
    """
    filt = build_filter(**filters)
    s = ctx.settings
    bootstrap, dsn = s.kafka.connection(), s.postgres.dsn.get_secret_value()
    plan = _run(purge.prepare(bootstrap, dsn, group, filt))
    click.echo(f"{len(plan.selected)} dead letter(s) of {group} match" + _counts_note(plan.counts))
    if dry_run:
        for dl in plan.selected:
            click.echo(f"would purge  {dl.partition}:{dl.offset}  id={dl.event_id}  type={dl.event_type}")
    elif not plan.selected:
        click.echo("nothing to purge")
        return
    elif not yes:
        _confirm(group, len(plan.selected))
    opts = purge.PurgeOptions(group, filt, operator, dry_run, truncate)
    report = _run(purge.execute(bootstrap, dsn, plan, opts))
    click.echo(render.summary_line("purge", group, report.job_id, dry_run, report.counts))


def _counts_note(counts: Any) -> str:
    labels = {"filtered_out": "filtered out", "purged_hidden": "already purged"}
    parts = [f"{counts[k]} {label}" for k, label in labels.items() if counts.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def _confirm(group: str, count: int) -> None:
    question = f"Type the group name ({group}) to purge {count} dead letter(s)"
    typed = click.prompt(question, default="", show_default=False)
    if typed.strip() != group:
        raise click.ClickException("not confirmed; nothing was purged")
