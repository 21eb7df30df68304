"""The console's aiohttp application: routes, page handlers, error pages and the outage banner.

Owns what each page reads and which function each button calls. Reads go through the CLI's own
read functions (``workers.dlq.browse``, ``workers.dlq.audit``, ``workers.dlq.writeback``, the saga
store); writes through the CLI's own write functions (``workers.dlq.replay.replay`` in
``workers.console.jobs``, ``workers.dlq.purge``, ``workers.fulfillment.retry.request_retry``), each
given the operator's name for the audit. A Kafka or PostgreSQL failure while a page loads becomes a
banner naming what is down and what still works (the rest of the page renders); any other failure
becomes an error page (or JSON, when asked for) with a reason and never a stack trace.
Must not hold the logic of a replay, a purge or a retry, nor read the environment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import aiohttp_jinja2
import asyncpg
import jinja2
import structlog
from aiohttp import web
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from adapters.db import create_pool, migrate
from adapters.dlq_store import PgDlqStore
from adapters.kafka import AiokafkaProducer, KafkaSecurityError, durable_producer, start_client
from adapters.saga_store import HistoryEntry, PgSagaStore, SagaRecord, StepRecord
from events import failure as fh
from events.topics import ConsumerGroup, parked_topic
from workers.config import Settings
from workers.console import fleet
from workers.console.jobs import ReplayJobs
from workers.console.security import CSRF_FIELD, CSRF_HEADER, CSRF_KEY, OPERATOR_KEY, Guard
from workers.dlq import audit, browse, purge, render, unpark, writeback
from workers.dlq.filters import Filter, FilterError, parse_coordinates, parse_when
from workers.dlq.models import DeadLetter
from workers.dlq.names import dead_letter_topic, every_name
from workers.dlq.reader import ReadStalled, TopicMissing, TopicReader
from workers.dlq.replay import ReplayOptions, replay
from workers.dlq.selection import REFUSED, Action
from workers.fulfillment.model import OrderState, seq_of, steps_for
from workers.fulfillment.retry import RetryRefused, RetryRequest, request_retry

log = structlog.get_logger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HERE = Path(__file__).parent
#: the one vendored htmx file (npm ``htmx.org``; see docs/console.md for how to update it)
HTMX = "htmx-2.0.11.min.js"
RECORDS_SHOWN = 200
CLIENT_ID = "fleet-console"

#: failures that mean a dependency is down or unreachable: a banner, not an error page
INFRA_ERRORS = (
    KafkaError,
    KafkaSecurityError,
    ReadStalled,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
#: per dependency: what it stops, and what still works without it
STILL_WORKS = {
    "Kafka": "consumer groups, lag, dead letters and replays cannot be read or run;"
    " orders and the audit log still work",
    "PostgreSQL": "orders, the audit log, replays and purges are unavailable; consumer groups and lag still work",
}

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)
GUARD_KEY: web.AppKey[Guard] = web.AppKey("guard", Guard)
JOBS_KEY: web.AppKey[ReplayJobs] = web.AppKey("jobs", ReplayJobs)
HTTP_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)
BANNERS_KEY: web.RequestKey[list[dict[str, str]]] = web.RequestKey("banners", list)


# --- the application ---------------------------------------------------------------------------


def build_app(settings: Settings) -> web.Application:
    guard = Guard(settings)
    app = web.Application(middlewares=[errors, guard.authenticate, guard.protect_writes])
    app[SETTINGS_KEY] = settings
    app[GUARD_KEY] = guard
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
    )
    env.filters["ts"] = _ts
    env.filters["ids"] = _ids
    app.router.add_static("/static/", HERE / "static", name="static")
    routes = [
        web.get("/livez", livez),
        web.get("/", index),
        web.get("/fleet", fleet_page),
        web.get("/dlq", dlq_page),
        web.get("/dlq/{group}", dlq_group_page),
        web.get("/dlq/{group}/record/{partition:\\d+}/{offset:\\d+}", record_page),
        web.get("/dlq/{group}/parked", parked_page),
        web.post("/dlq/{group}/unpark", unpark_start),
        web.post("/dlq/{group}/replay/preview", replay_preview),
        web.post("/dlq/{group}/replay", replay_start),
        web.get("/dlq/{group}/jobs/{number:\\d+}", job_page),
        web.get("/dlq/{group}/jobs/{number:\\d+}/progress", job_progress),
        web.post("/dlq/{group}/jobs/{number:\\d+}/stop", job_stop),
        web.post("/dlq/{group}/purge/preview", purge_preview),
        web.post("/dlq/{group}/purge", purge_run),
        web.get("/orders", orders_page),
        web.get("/orders/{order_id}", order_page),
        web.post("/orders/{order_id}/retry", order_retry),
        web.get("/audit", audit_page),
    ]
    app.add_routes(routes)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    app[JOBS_KEY] = ReplayJobs(settings.kafka.connection(), settings.postgres.dsn.get_secret_value())
    async with aiohttp.ClientSession() as session:
        app[HTTP_KEY] = session
        yield
        await app[JOBS_KEY].close()


def _page_context(request: web.Request) -> dict[str, Any]:
    csrf = request.get(CSRF_KEY, "")
    return {
        "operator": request.get(OPERATOR_KEY, ""),
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf,
        "csrf_headers": json.dumps({CSRF_HEADER: csrf}),
        "banners": request.get(BANNERS_KEY, []),
        "htmx": HTMX,
        "env": request.app[SETTINGS_KEY].env,
        "path": request.path,
    }


def _page(name: str, request: web.Request, context: dict[str, Any], *, status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(name, request, {**_page_context(request), **context}, status=status)


async def index(_: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/fleet")


# --- failures: banners and error pages ------------------------------------------------------------


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 4xx/5xx as a page (or JSON) with a reason; an outage during a write as a 503 with its banner."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(request, exc.status, exc.text or exc.reason, dict(exc.headers))
    except audit.GroupBusy as exc:
        return _error(request, 409, str(exc))
    except INFRA_ERRORS as exc:
        await _note_outage(request, exc)
        return _error(request, 503, "a dependency is down: " + _reason(exc))
    except Exception as exc:
        log.exception("console_request_failed", path=request.path)
        return _error(request, 500, f"internal error ({type(exc).__name__}); the console's log has the details")


def _error(request: web.Request, status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    headers = {k: v for k, v in (headers or {}).items() if k.lower() in ("www-authenticate",)}
    if _wants_json(request):
        return web.json_response({"status": status, "reason": reason}, status=status, headers=headers)
    response = _page("error.html", request, {"status": status, "reason": reason}, status=status)
    response.headers.update(headers)
    return response


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _note_outage(request: web.Request, exc: BaseException) -> None:
    """Which of Kafka and PostgreSQL cannot be reached (a TCP probe each), as banners on this page."""
    banners = request.setdefault(BANNERS_KEY, [])  # type: ignore[call-overload]
    settings = request.app[SETTINGS_KEY]
    down = await unreachable(settings)
    state = "is down or unreachable"
    if not down:  # both answer: name the failure as it came
        down = ["PostgreSQL"] if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError) else ["Kafka"]
        state = "answers, but the request failed"
    for what in down:
        if all(b["what"] != what for b in banners):
            banners.append({"what": what, "state": state, "error": _reason(exc), "still": STILL_WORKS[what]})


async def unreachable(settings: Settings) -> list[str]:
    kafka_host, _, kafka_port = settings.kafka.bootstrap.split(",")[0].strip().rpartition(":")
    pg = urlsplit(settings.postgres.dsn.get_secret_value())
    targets = {
        "Kafka": (kafka_host, int(kafka_port or 9092)),
        "PostgreSQL": (pg.hostname or "127.0.0.1", pg.port or 5432),
    }
    results = await asyncio.gather(*(_tcp_open(host, port) for host, port in targets.values()))
    return [name for name, ok in zip(targets, results, strict=True) if not ok]


async def _tcp_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def attempt(request: web.Request, coro: Coroutine[Any, Any, T]) -> T | None:
    """The page's data, or None with a banner when Kafka or PostgreSQL failed."""
    try:
        return await coro
    except INFRA_ERRORS as exc:
        await _note_outage(request, exc)
        return None


# --- fleet -------------------------------------------------------------------------------------------


async def livez(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def fleet_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    tiers = len(settings.runtime.retry_tier_delays_ms)
    groups = await attempt(request, fleet.read_groups(settings.kafka.connection(), tiers)) or []
    targets = fleet.health_targets(settings.console.health_urls)
    health = await fleet.read_health(targets, request.app[HTTP_KEY]) if targets else {}
    for view in groups:
        view.health = health.get(view.worker, [])
    others = {name: h for name, h in health.items() if name not in {g.worker for g in groups}}
    return _page("fleet.html", request, {"groups": groups, "others": others, "health_known": bool(targets)})


# --- dead letters ------------------------------------------------------------------------------------


def _kafka_dsn(request: web.Request) -> tuple[Any, str]:
    settings = request.app[SETTINGS_KEY]
    return settings.kafka.connection(), settings.postgres.dsn.get_secret_value()


def _group(request: web.Request) -> str:
    group = request.match_info["group"]
    if group not in every_name():
        raise web.HTTPNotFound(text=f"no such consumer group: {group} (known: {', '.join(every_name())})")
    return group


async def dlq_page(request: web.Request) -> web.Response:
    kafka, dsn = _kafka_dsn(request)
    views = await attempt(request, browse.overviews(kafka, dsn, every_name())) or []
    return _page("dlq.html", request, {"views": views, "headline": render.overview_headline})


async def dlq_group_page(request: web.Request) -> web.Response:
    group = _group(request)
    kafka, dsn = _kafka_dsn(request)
    filt, form, error = _filter_from(request.query)
    overview = await attempt(request, browse.overviews(kafka, dsn, [group]))
    records = await attempt(request, _records(kafka, dsn, group, filt)) if error is None else None
    context = {
        "group": group,
        "overview": overview[0] if overview else None,
        "headline": render.overview_headline,
        "records": records or [],
        "shown": RECORDS_SHOWN,
        "form": form,
        "filter_error": error,
        "status": render.record_status,
        "jobs": request.app[JOBS_KEY].of_group(group),
        "default_rate": request.app[SETTINGS_KEY].console.default_rate,
    }
    return _page("dlq_group.html", request, context)


async def _records(kafka: Any, dsn: str, group: str, filt: Filter) -> list[browse.RecordView]:
    """The group's dead letters matching ``filt`` (purged ones included, marked), newest first."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        store = PgDlqStore(conn)
        purged, done = await store.purged_records(group), await store.done_records(group)
    finally:
        await conn.close()
    try:
        async with TopicReader(kafka, dead_letter_topic(group), client_id=CLIENT_ID) as reader:
            found = [dl async for dl in reader.read() if filt.matches(dl)]
    except TopicMissing:
        return []
    found.sort(key=lambda dl: dl.timestamp_ms, reverse=True)
    return [browse.RecordView(dl, done.get(dl.coordinates), dl.coordinates in purged) for dl in found[:RECORDS_SHOWN]]


async def record_page(request: web.Request) -> web.Response:
    group = _group(request)
    kafka, dsn = _kafka_dsn(request)
    at = (int(request.match_info["partition"]), int(request.match_info["offset"]))
    views = await attempt(request, browse.find(kafka, dsn, group, at=at))
    if views == []:
        raise web.HTTPNotFound(text=f"no dead letter at {at[0]}:{at[1]} of {group} (wrong coordinates, or deleted)")
    view = views[0] if views else None
    context: dict[str, Any] = {"group": group, "view": view}
    if view is not None:
        context.update(
            sections=render.record_sections(view),
            stack=view.dl.header("error_stacktrace"),
            payload=render.raw_body(view) if view.dl.ingress is not None else render.payload_text(view),
            headers=render.header_lines(view.dl.headers)
            if view.dl.ingress is not None
            else render.original_header_lines(view),
        )
    return _page("record.html", request, context)


async def parked_page(request: web.Request) -> web.Response:
    """Records the replay loop guard parked (``<group>.parked``, consumed by nobody), with un-park."""
    group = _group(request)
    kafka, dsn = _kafka_dsn(request)

    async def read() -> list[DeadLetter]:
        try:
            async with TopicReader(kafka, parked_topic(group), client_id=CLIENT_ID) as reader:
                return [dl async for dl in reader.read()][-RECORDS_SHOWN:]
        except TopicMissing:
            return []

    parked = await attempt(request, read())
    origins = await attempt(request, unpark.parked_origins(dsn, group)) or {}
    context = {"group": group, "parked": list(reversed(parked or [])), "origins": origins}
    return _page("parked.html", request, context)


async def unpark_start(request: web.Request) -> web.Response:
    """``fleet dlq unpark``: replay the parked copy's dead letter once more, as a console job."""
    group = _group(request)
    values = await request.post()
    try:
        at = parse_coordinates(str(values.get("parked", "")))
    except FilterError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    _, dsn = _kafka_dsn(request)
    origins = await unpark.parked_origins(dsn, group)
    if at not in origins:
        raise web.HTTPConflict(text=f"{group}.parked {at[0]}:{at[1]} is not parked (or was un-parked already)")
    rate = request.app[SETTINGS_KEY].console.default_rate
    job = request.app[JOBS_KEY].start(unpark.unpark_options(group, origins[at], request[OPERATOR_KEY], rate=rate))
    raise web.HTTPSeeOther(f"/dlq/{quote(group)}/jobs/{job.number}")


def _filter_from(values: Any) -> tuple[Filter, dict[str, str], str | None]:
    """The CLI's filter options from a form or query string (repeatable ones: comma or space separated)."""
    names = ("since", "until", "error_class", "event_type", "key", "event_id", "record")
    form = {name: str(values.get(name, "")).strip() for name in names}

    def many(name: str) -> tuple[str, ...]:
        return tuple(part for part in form[name].replace(",", " ").split() if part)

    now = datetime.now(UTC)
    try:
        filt = Filter(
            since=parse_when(form["since"], now) if form["since"] else None,
            until=parse_when(form["until"], now) if form["until"] else None,
            error_classes=many("error_class"),
            event_types=many("event_type"),
            keys=many("key"),
            event_ids=many("event_id"),
            records=tuple(parse_coordinates(r) for r in many("record")),
        )
    except FilterError as exc:
        return Filter(), form, str(exc)
    return filt, form, None


def _rate(values: Any, default: float) -> float | None:
    text = str(values.get("rate", "")).strip()
    if not text:
        return default
    try:
        rate = float(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"rate {text!r} is not a number of records per second") from None
    if rate <= 0:
        raise web.HTTPBadRequest(text="rate must be above 0 records per second")
    return rate


def _limit(values: Any) -> int | None:
    text = str(values.get("limit", "")).strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise web.HTTPBadRequest(text=f"limit {text!r} is not a positive whole number")
    return int(text)


def _options(request: web.Request, group: str, values: Any, *, dry_run: bool) -> ReplayOptions:
    filt, _, error = _filter_from(values)
    if error is not None:
        raise web.HTTPBadRequest(text=error)
    settings = request.app[SETTINGS_KEY]
    rate = _rate(values, settings.console.default_rate)
    again = str(values.get("again", "")) in ("1", "on", "true")
    operator = request[OPERATOR_KEY]
    return ReplayOptions(group, filt, operator, settings.runtime.max_replays, _limit(values), dry_run, again, rate)


class _Collect:
    def __init__(self) -> None:
        self.actions: list[Action] = []

    def planned(self, actions: Sequence[Action]) -> None:
        self.actions = list(actions)

    def sent(self, count: int) -> None:
        pass


async def replay_preview(request: web.Request) -> web.Response:
    """The dry run: the CLI's ``replay --dry-run`` (audited as a dry run), one line per record."""
    group = _group(request)
    values = await request.post()
    opts = _options(request, group, values, dry_run=True)
    kafka, dsn = _kafka_dsn(request)
    collect = _Collect()
    report = await replay(kafka, dsn, opts, collect)
    lines = [render.action_line(a, dry_run=True) for a in collect.actions]
    sendable = sum(a.outcome != REFUSED for a in collect.actions)
    context = {
        "group": group,
        "lines": lines,
        "counts": report.counts,
        "sendable": sendable,
        "values": {k: str(v) for k, v in values.items() if k != CSRF_FIELD},
        "rate": opts.rate,
        "job_id": report.job_id,
    }
    name = "replay_preview.html" if request.headers.get("HX-Request") else "replay_preview_page.html"
    return _page(name, request, context)


async def replay_start(request: web.Request) -> web.Response:
    group = _group(request)
    values = await request.post()
    opts = _options(request, group, values, dry_run=False)
    job = request.app[JOBS_KEY].start(opts)
    log.info("console_replay_started", group=group, operator=opts.operator, job=job.number)
    raise web.HTTPSeeOther(f"/dlq/{quote(group)}/jobs/{job.number}")


def _job(request: web.Request, group: str) -> Any:
    job = request.app[JOBS_KEY].jobs.get(int(request.match_info["number"]))
    if job is None or job.opts.group != group:
        raise web.HTTPNotFound(text="no such replay job in this console (jobs of other processes: see the audit log)")
    return job


async def job_page(request: web.Request) -> web.Response:
    group = _group(request)
    return _page("job.html", request, {"group": group, "job": _job(request, group), "filters": _job_filters})


async def job_progress(request: web.Request) -> web.Response:
    group = _group(request)
    return _page("job_progress.html", request, {"group": group, "job": _job(request, group)})


async def job_stop(request: web.Request) -> web.Response:
    group = _group(request)
    job = _job(request, group)
    request.app[JOBS_KEY].stop(job.number)
    if job.task is not None:
        await asyncio.gather(job.task, return_exceptions=True)
    raise web.HTTPSeeOther(f"/dlq/{quote(group)}/jobs/{job.number}")


def _job_filters(opts: ReplayOptions) -> dict[str, str]:
    """The job's filters as form values, so "resume" starts the same selection again."""
    f = opts.filt
    values = {
        "since": f.since.isoformat() if f.since else "",
        "until": f.until.isoformat() if f.until else "",
        "error_class": " ".join(f.error_classes),
        "event_type": " ".join(f.event_types),
        "key": " ".join(f.keys),
        "event_id": " ".join(f.event_ids),
        "record": " ".join(f"{p}:{o}" for p, o in f.records),
        "limit": str(opts.limit or ""),
        "rate": str(opts.rate or ""),
        "again": "1" if opts.again else "",
    }
    return {k: v for k, v in values.items() if v}


async def purge_preview(request: web.Request) -> web.Response:
    """What a purge would mark; the purge itself needs the group's name typed (as the CLI asks)."""
    group = _group(request)
    values = await request.post()
    filt, _, error = _filter_from(values)
    if error is not None:
        raise web.HTTPBadRequest(text=error)
    kafka, dsn = _kafka_dsn(request)
    plan = await purge.prepare(kafka, dsn, group, filt)
    context = {
        "group": group,
        "plan": plan,
        "values": {k: str(v) for k, v in values.items() if k != CSRF_FIELD},
    }
    return _page("purge_confirm.html", request, context)


async def purge_run(request: web.Request) -> web.Response:
    group = _group(request)
    values = await request.post()
    if str(values.get("confirm", "")).strip() != group:
        raise web.HTTPBadRequest(text=f"not confirmed: type the group name ({group}) to purge; nothing was purged")
    filt, _, error = _filter_from(values)
    if error is not None:
        raise web.HTTPBadRequest(text=error)
    kafka, dsn = _kafka_dsn(request)
    plan = await purge.prepare(kafka, dsn, group, filt)
    truncate = str(values.get("truncate", "")) in ("1", "on", "true")
    opts = purge.PurgeOptions(group, filt, request[OPERATOR_KEY], False, truncate)
    report = await purge.execute(kafka, dsn, plan, opts)
    return _page("purge_done.html", request, {"group": group, "report": report})


# --- orders --------------------------------------------------------------------------------------------


@asynccontextmanager
async def _saga(request: web.Request) -> AsyncIterator[PgSagaStore]:
    pool = await create_pool(request.app[SETTINGS_KEY].postgres.dsn.get_secret_value(), min_size=1, max_size=2)
    try:
        yield PgSagaStore(pool)
    finally:
        await pool.close()


async def orders_page(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    state = request.query.get("state", "").strip() or None
    if state is not None and state not in {s.value for s in OrderState}:
        raise web.HTTPBadRequest(text=f"no such state: {state}")

    async def load() -> list[Any]:
        async with _saga(request) as store:
            return await store.search_orders(query) if query else await store.list_orders(state, 100)

    orders = await attempt(request, load())
    states = [s.value for s in OrderState]
    return _page("orders.html", request, {"orders": orders or [], "q": query, "state": state, "states": states})


async def order_page(request: web.Request) -> web.Response:
    oid = request.match_info["order_id"]

    async def load() -> tuple[SagaRecord | None, list[HistoryEntry]]:
        async with _saga(request) as store:
            return await store.get(oid), await store.history(oid)

    loaded = await attempt(request, load())
    record, history = loaded if loaded is not None else (None, [])
    if loaded is not None and record is None:
        raise web.HTTPNotFound(text=f"order {oid} is unknown to the fulfillment saga")
    context: dict[str, Any] = {"oid": oid, "record": record, "trace_url": _trace_url(request, oid)}
    if record is not None:
        kafka, dsn = _kafka_dsn(request)
        wb: writeback.WriteBack | str
        try:  # as `fleet orders show`: the saga's side is worth showing when the DLQ cannot be read
            wb = await writeback.load(kafka, dsn, record, history)
        except (*INFRA_ERRORS, TopicMissing) as exc:
            wb = _reason(exc)
        context.update(
            steps=_steps(record),
            timeline=_timeline(history, wb),
            writeback=wb,
            writeback_error=wb if isinstance(wb, str) else None,
            retryable=record.order.state != OrderState.FULFILLED,
        )
    return _page("order.html", request, context)


async def order_retry(request: web.Request) -> web.Response:
    """``fleet orders retry``: the same function, the operator's name in the order's timeline."""
    oid = request.match_info["order_id"]
    values = await request.post()
    settings = request.app[SETTINGS_KEY]
    connection = settings.kafka.connection()
    producer = durable_producer(connection, f"{settings.kafka.client_id}-console-retry")
    async with _saga(request) as store:
        await start_client(producer, connection)
        try:
            await request_retry(
                store,
                AiokafkaProducer(producer),
                RetryRequest(oid, request[OPERATOR_KEY], str(values.get("reason", "")).strip()),
                group=ConsumerGroup.FULFILLMENT.value,
                tier_delays_ms=settings.runtime.retry_tier_delays_ms,
                clock_ms=lambda: int(datetime.now(UTC).timestamp() * 1000),
            )
        except RetryRefused as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        finally:
            await producer.stop()
    raise web.HTTPSeeOther(f"/orders/{quote(oid)}?retried=1")


def _trace_url(request: web.Request, oid: str) -> str:
    return request.app[SETTINGS_KEY].console.trace_url.replace("{order_id}", quote(oid, safe=""))


def _steps(record: SagaRecord) -> list[StepRecord]:
    """Every step of the order's plan, the ones not reached yet as pending placeholders."""
    planned = {s.value: StepRecord(s.value, seq_of(s)) for s in steps_for(record.order.order_type)}
    planned.update(record.steps)
    return sorted(planned.values(), key=lambda s: s.seq)


def _timeline(history: Sequence[HistoryEntry], wb: writeback.WriteBack | str) -> list[dict[str, Any]]:
    """The saga's history and, as ``fleet orders show``, the sf-writer's dead letters of the order."""
    entries = [{"at": h.at, "step": h.step or "", "kind": h.kind, "detail": h.detail} for h in history]
    if isinstance(wb, writeback.WriteBack):
        for view in wb.letters:
            dl = view.dl
            detail = {
                "record": writeback.record_of(view),
                "error": dl.error_class,
                "message": dl.header(fh.ERROR_MESSAGE),
                "dlq": f"{dl.partition}:{dl.offset}",
                "status": render.record_status(view),
            }
            entries.append({"at": dl.dead_lettered_at, "step": "sf-writer", "kind": "dead_lettered", "detail": detail,
                            "link": f"/dlq/{writeback.GROUP}/record/{dl.partition}/{dl.offset}"})  # fmt: skip
            if view.replay is not None and view.replay.updated_at is not None:
                to = {"job": view.replay.job_id, "to": f"{view.replay.target_topic}[{view.replay.target_partition}]"}
                entries.append({"at": view.replay.updated_at, "step": "sf-writer",
                                "kind": f"dlq_{view.replay.outcome}", "detail": to})  # fmt: skip
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(entries, key=lambda e: e["at"] or epoch)


# --- audit ---------------------------------------------------------------------------------------------


async def audit_page(request: web.Request) -> web.Response:
    group = request.query.get("group", "").strip() or None
    dsn = request.app[SETTINGS_KEY].postgres.dsn.get_secret_value()

    async def load() -> list[audit.AuditRow]:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            return await audit.recent(conn, group, 200)
        finally:
            await conn.close()

    rows = await attempt(request, load())
    return _page("audit.html", request, {"rows": rows or [], "group": group or "", "asdict": asdict})


# --- formatting ----------------------------------------------------------------------------------------


def _ts(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _ids(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if v not in (None, "", [], {})) or "-"
