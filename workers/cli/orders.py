"""`fleet orders`: where an order is in the fulfillment saga, which orders are stuck, resume one.

Owns option parsing and printing. Must not hold saga logic: state comes from ``adapters.saga_store``
and a retry is just an activation request on the fulfillment group's first retry tier (the same
message a wake-up is), so the worker resumes the order from its first unfinished step.
``show`` also reads the sf-writer's dead letters of the order's records (``fleet.sf-writer.dlq``,
keyed by record id): the saga is done once its write-back commands are on Kafka, so "fulfilled"
alone does not say that Salesforce was updated.
Exit codes: 0 done, 1 unknown order or refused, 2 bad usage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click
import structlog
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from asyncpg import PostgresError

from adapters.db import create_pool
from adapters.kafka import AiokafkaProducer, KafkaSecurityError, durable_producer, start_client
from adapters.saga_store import HistoryEntry, PgSagaStore, SagaOrder, SagaRecord, StepRecord, Timer
from events import failure as fh
from events.topics import ConsumerGroup
from workers.cli._context import Context, pass_ctx, run_async
from workers.dlq import writeback
from workers.dlq.audit import default_operator
from workers.dlq.reader import ReadStalled, TopicMissing
from workers.dlq.render import record_status
from workers.fulfillment.model import OrderState, seq_of, steps_for
from workers.fulfillment.retry import RetryRefused, RetryRequest, request_retry

log = structlog.get_logger(__name__)


@click.group(name="orders")
def group() -> None:
    """The fulfillment saga's orders: timeline, stuck orders, resume (docs/fulfillment.md).

    \b
      fleet orders show 8015g00000000001AA    steps, attempts, errors, external ids, durations
      fleet orders list --state parked        orders waiting for a customer or a human
      fleet orders retry 8015g00000000001AA   resume from the first unfinished step (audited)
    """


@asynccontextmanager
async def _store(ctx: Context) -> AsyncIterator[PgSagaStore]:
    pool = await create_pool(ctx.settings.postgres.dsn.get_secret_value(), min_size=1, max_size=2)
    try:
        yield PgSagaStore(pool)
    finally:
        await pool.close()


# --- show ----------------------------------------------------------------------------------------

#: reading the sf-writer's DLQ can fail on its own; the saga's side is still worth showing then
_DLQ_UNREADABLE = (KafkaError, KafkaSecurityError, TopicMissing, ReadStalled, OSError, TimeoutError, PostgresError)


@group.command("show")
@click.argument("sf_order_id")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")
@pass_ctx
def show(ctx: Context, sf_order_id: str, as_json: bool) -> None:
    """An order's state, its steps and its timeline, with the sf-writer's dead letters of its records."""

    async def load() -> tuple[SagaRecord | None, list[HistoryEntry]]:
        async with _store(ctx) as store:
            return await store.get(sf_order_id), await store.history(sf_order_id)

    record, history = run_async(load())
    if record is None:
        raise click.ClickException(f"order {sf_order_id} is unknown to the fulfillment saga")
    settings = ctx.settings
    dsn = settings.postgres.dsn.get_secret_value()
    try:  # not run_async: a Kafka that refuses our settings must not hide the saga's side either
        wb: writeback.WriteBack | str = asyncio.run(writeback.load(settings.kafka.connection(), dsn, record, history))
    except _DLQ_UNREADABLE as exc:
        wb = f"{type(exc).__name__}: {exc}"
    if as_json:
        doc = {"order": asdict(record.order), "steps": [asdict(s) for s in _steps(record)],
               "timeline": [asdict(h) for h in history], "writeback": _writeback_json(wb)}  # fmt: skip
        click.echo(json.dumps(doc, default=str, indent=2))
        return
    click.echo("\n".join(render_order(record, history, wb)))


def render_order(
    record: SagaRecord, history: Sequence[HistoryEntry], wb: writeback.WriteBack | str | None = None
) -> list[str]:
    """``wb``: the sf-writer's outcome, or why it could not be read (a string), or None (not asked)."""
    o = record.order
    lines = [
        f"order {o.sf_order_id}  {o.order_type or '?'}  state={o.state}{_writeback_verdict(wb)}"
        + (f"  at={o.current_step}" if o.current_step else ""),
        f"  account={o.sf_account_id or '-'}  whmcs client={o.whmcs_client_id or '-'}  "
        f"whmcs order={o.whmcs_order_id or '-'}  sim={o.sim_account or '-'}  requests={o.requests}",
        f"  created={_ts(o.created_at)}  updated={_ts(o.updated_at)}  finished={_ts(o.finished_at)}",
    ]
    if o.error_code:
        lines.append(f"  error {o.error_code}: {o.error_message}")
    lines += ["", "steps:"]
    rows = [
        [
            str(s.seq),
            s.step,
            s.status,
            str(s.attempts),
            _ts(s.started_at),
            _duration(s),
            _error(s),
            _ids(s.external_ids),
        ]
        for s in _steps(record)
    ]
    lines += _table(["#", "step", "status", "tries", "started", "took", "last error", "external ids"], rows)
    lines += ["", "timeline:"]
    entries = [(h.at, _timeline_line(h.at, h.step or "", h.kind, h.detail)) for h in history]
    if isinstance(wb, writeback.WriteBack):
        entries += _writeback_entries(wb)
    lines += [line for _, line in sorted(entries, key=lambda e: e[0] or _EPOCH)]  # stable: ties keep their order
    return lines + _writeback_notes(wb)


def _steps(record: SagaRecord) -> list[StepRecord]:
    """Every step of the order's plan, the ones not reached yet as pending placeholders."""
    planned = {s.value: StepRecord(s.value, seq_of(s)) for s in steps_for(record.order.order_type)}
    planned.update(record.steps)
    return sorted(planned.values(), key=lambda s: s.seq)


def _timeline_line(at: datetime | None, step: str, kind: str, detail: dict[str, Any]) -> str:
    return f"  {_ts(at)}  {step:<16} {kind:<14} {_ids(detail)}"


# --- show: the sf-writer's outcome -------------------------------------------------------------------

_EPOCH = datetime.min.replace(tzinfo=UTC)


def _writeback_verdict(wb: writeback.WriteBack | str | None) -> str:
    if isinstance(wb, str):
        return ", write-back not checked"
    return ", write-back dead-lettered" if wb is not None and wb.dead_lettered else ""


def _writeback_entries(wb: writeback.WriteBack) -> list[tuple[datetime | None, str]]:
    """A ``dead_lettered`` line per dead letter, and ``dlq_replayed``/``dlq_parked`` when a replay job took it."""
    entries: list[tuple[datetime | None, str]] = []
    for view in wb.letters:
        dl, replay = view.dl, view.replay
        detail = {
            "record": writeback.record_of(view),
            "error": dl.error_class,
            "code": dl.header(fh.ERROR_CODE),
            "message": json.dumps(_short(dl.header(fh.ERROR_MESSAGE) or ""), ensure_ascii=False),
            "dlq": f"{dl.partition}:{dl.offset}",
            "status": record_status(view),
        }
        entries.append((dl.dead_lettered_at, _timeline_line(dl.dead_lettered_at, "sf-writer", "dead_lettered", detail)))
        if replay is not None and replay.updated_at is not None:
            to = {"job": replay.job_id, "to": f"{replay.target_topic}[{replay.target_partition}]"}
            entries.append(
                (replay.updated_at, _timeline_line(replay.updated_at, "sf-writer", f"dlq_{replay.outcome}", to))
            )
    return entries


def _writeback_notes(wb: writeback.WriteBack | str | None) -> list[str]:
    if isinstance(wb, str):
        return ["", f"sf-writer dead letters not read ({writeback.GROUP}): {wb}"]
    if wb is None:
        return []
    notes = []
    if wb.dead_lettered:
        key = wb.open[-1].dl.key_text
        notes += [
            "",
            "write-back dead-lettered: Salesforce does not show what the saga did; once the cause is fixed:",
            f"  fleet dlq replay -g {wb.group} --key {key} --dry-run",
        ]
    if wb.capped:
        notes.append(f"(only the newest dead letters of {wb.group} were searched: its DLQ is very large)")
    return notes


def _writeback_json(wb: writeback.WriteBack | str) -> dict[str, Any]:
    if isinstance(wb, str):
        return {"status": "not checked", "error": wb, "dead_letters": []}
    letters = [
        {
            "at": v.dl.dead_lettered_at,
            "record": writeback.record_of(v),
            "dlq": f"{v.dl.topic} {v.dl.partition}:{v.dl.offset}",
            "error_class": v.dl.error_class,
            "error_code": v.dl.header(fh.ERROR_CODE),
            "error_message": v.dl.header(fh.ERROR_MESSAGE),
            "status": record_status(v),
            "open": v in wb.open,
        }
        for v in wb.letters
    ]
    return {"status": "dead-lettered" if wb.dead_lettered else "ok", "dead_letters": letters, "capped": wb.capped}


def _short(text: str | None, limit: int = 120) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 3] + "..."


# --- list ----------------------------------------------------------------------------------------


@group.command("list")
@click.option("--state", type=click.Choice([s.value for s in OrderState]), help="only orders in this state")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
@click.option(
    "--stuck",
    is_flag=True,
    help="only orders longer in their state than FLEET_FULFILLMENT__STUCK_AFTER_S allows, longest first",
)
@pass_ctx
def list_cmd(ctx: Context, state: str | None, limit: int, as_json: bool, stuck: bool) -> None:
    """Orders, most recently updated first; with their timer (a scheduled activation's time, a parked
    order's next pay-method re-check) when they hold one."""

    async def load() -> list[tuple[SagaOrder, Timer | None, datetime | None]]:
        async with _store(ctx) as store:
            if stuck:
                deadlines = dict(ctx.settings.fulfillment.stuck_after_s)
                if state is not None:
                    deadlines = {k: v for k, v in deadlines.items() if k == state}
                found = (await store.stuck_orders(datetime.now(UTC), deadlines))[:limit]
                return [(order, await store.timer(order.sf_order_id), since) for order, since in found]
            orders = await store.list_orders(state, limit)
            timed = {OrderState.PARKED.value, OrderState.SCHEDULED.value}
            return [(o, await store.timer(o.sf_order_id) if o.state in timed else None, None) for o in orders]

    found = run_async(load())
    if as_json:
        for order, timer, since in found:
            doc = {**asdict(order), "timer": asdict(timer) if timer else None, "stuck_since": since}
            click.echo(json.dumps(doc, default=str))
        return
    if not found:
        what = "stuck orders" if stuck else "orders"
        click.echo(f"no {what}" + (f" in state {state}" if state else ""))
        return
    rows = [
        [o.sf_order_id, o.order_type or "?", o.state, o.current_step or "-", o.error_code or "-", _ts(o.updated_at),
         f"{t.reason} {_ts(t.due_at)}" if t else "-", *([_ts(since)] if stuck else [])]
        for o, t, since in found
    ]  # fmt: skip
    header = ["order", "type", "state", "step", "error", "updated", "timer", *(["since"] if stuck else [])]
    click.echo("\n".join(_table(header, rows)))


# --- retry ---------------------------------------------------------------------------------------


@group.command("retry")
@click.argument("sf_order_id")
@click.option("--reason", default="", help="why (kept in the audit log and the order's timeline)")
@click.option("--force", is_flag=True, help="also for an order the saga has never seen")
@click.option("--group", default=ConsumerGroup.FULFILLMENT.value, show_default=True, help="the saga's consumer group")
@pass_ctx
def retry(ctx: Context, sf_order_id: str, reason: str, force: bool, group: str) -> None:
    """Re-emit an activation request: the worker resumes the order from its first unfinished step."""
    settings = ctx.settings

    async def go() -> str:
        async with _store(ctx) as store:
            connection = settings.kafka.connection()
            aioproducer = durable_producer(connection, f"{settings.kafka.client_id}-orders-retry")
            await start_client(aioproducer, connection)
            try:
                return await request_retry(
                    store, AiokafkaProducer(aioproducer), RetryRequest(sf_order_id, default_operator(), reason, force),
                    group=group, tier_delays_ms=settings.runtime.retry_tier_delays_ms,
                    clock_ms=lambda: int(datetime.now(UTC).timestamp() * 1000),
                )  # fmt: skip
            except RetryRefused as exc:
                raise click.ClickException(str(exc)) from None
            finally:
                await aioproducer.stop()

    event_id = run_async(go())
    click.echo(f"activation request {event_id} sent for {sf_order_id}; `fleet orders show {sf_order_id}` to follow")


# --- formatting ----------------------------------------------------------------------------------


def _ts(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _duration(step: StepRecord) -> str:
    if step.started_at is None:
        return "-"
    end = step.finished_at or datetime.now(UTC)
    seconds = (end - step.started_at).total_seconds()
    text = f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"
    return text if step.finished_at else f"{text}+"


def _error(step: StepRecord) -> str:
    if not step.last_error_code:
        return "-"
    message = (step.last_error_message or "")[:60]
    return f"{step.last_error_code}: {message}" if message else step.last_error_code


def _ids(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if v not in (None, "", [], {})) or "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return [fmt.format(*headers), *(fmt.format(*row) for row in rows)]
