"""Plain-text renderings of dead letters, overviews, plans and summaries (what ``fleet dlq`` prints).

Owns the wording and the column order, so the rich tables of a terminal and the plain lines of a
pipe say the same thing. Must not do I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from events import failure as fh
from events.envelope import H_CORRELATION, H_ID, H_SOURCE, H_TIME
from workers.dlq.audit import AuditRow
from workers.dlq.browse import Bucket, GroupOverview, RecordView
from workers.dlq.ingress import replay_event_id
from workers.dlq.models import Header, decode_header, header_dict, iso
from workers.dlq.selection import PARKED, REFUSED, Action

OVERVIEW_COLUMNS = ("count", "replayed", "parked", "oldest", "newest", "error class", "event type")
AUDIT_COLUMNS = ("started", "action", "group", "operator", "dry run", "status", "counts", "job")


def when(dt: datetime | None) -> str:
    return iso(dt) if dt else "-"


def bucket_row(b: Bucket) -> tuple[str, ...]:
    return (str(b.count), str(b.replayed), str(b.parked), when(b.oldest), when(b.newest), b.error_class, b.event_type)


def overview_headline(o: GroupOverview) -> str:
    if not o.exists:
        return f"{o.group}: no dead-letter topic {o.topic} on the broker"
    t = o.total
    hidden = f", {o.purged_hidden} purged (hidden)" if o.purged_hidden else ""
    return (
        f"{o.group} ({o.topic}): {t.count} dead letters, {t.replayed} replayed, {t.parked} parked{hidden};"
        f" oldest {when(t.oldest)}, newest {when(t.newest)}"
    )


def overview_json(o: GroupOverview) -> dict[str, Any]:
    return {
        "group": o.group,
        "topic": o.topic,
        "exists": o.exists,
        "count": o.total.count,
        "replayed": o.total.replayed,
        "parked": o.total.parked,
        "purged_hidden": o.purged_hidden,
        "oldest": when(o.total.oldest),
        "newest": when(o.total.newest),
        "by_error_and_type": [dict(zip(OVERVIEW_COLUMNS, bucket_row(b), strict=True)) for b in o.sorted_buckets()],
    }


def action_line(action: Action, *, dry_run: bool) -> str:
    """One line per record of a replay plan: what happens, to which record, and where the copy goes."""
    dl = action.dl
    if action.outcome == REFUSED:
        return f"{'refused':<12} {dl.partition}:{dl.offset}  key={dl.key_text}  type={dl.event_type}  {action.reason}"
    verb = "park" if action.outcome == PARKED else "replay"
    verb = f"would {verb}" if dry_run else verb
    if action.records:  # an ingress body, re-ingested: the events go out under the receiver's ids
        ids = ",".join(decode_header(header_dict(headers).get(H_ID)) for _, _, headers in action.records)
        return (
            f"{verb:<12} {dl.partition}:{dl.offset}  webhook_id={dl.key_text}  type={dl.event_type}"
            f"  error={dl.error_class}  -> {action.target_topic}[{action.target_partition}]  as id={ids}"
        )
    return (
        f"{verb:<12} {dl.partition}:{dl.offset}  id={dl.event_id}  type={dl.event_type}  key={dl.key_text}"
        f"  error={dl.error_class}  replay_count={dl.replay_count}"
        f"  -> {action.target_topic}[{action.target_partition}]"
    )


def summary_line(action: str, group: str, job_id: UUID, dry_run: bool, counts: Mapping[str, Any]) -> str:
    """``<action> summary job=… group=… dry_run=… name=value …``: one greppable line, also logged."""
    fields = " ".join(f"{name}={_scalar(value)}" for name, value in counts.items())
    return f"{action} summary job={job_id} group={group} dry_run={str(dry_run).lower()} {fields}"


def _scalar(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)


def record_sections(view: RecordView) -> list[tuple[str, list[tuple[str, str]]]]:
    """``fleet dlq show``: titled sections of (label, value) pairs; payload and stack come separately."""
    dl = view.dl
    record = (
        "record",
        [
            ("dlq", f"{dl.topic} {dl.partition}:{dl.offset}"),
            ("dead-lettered", when(dl.dead_lettered_at)),
            ("status", record_status(view)),
        ],
    )
    if dl.ingress is not None:  # a body a receiver refused: no CloudEvent yet, no group, no stack
        return [record, *_ingress_sections(view)]
    return [
        record,
        (
            "event",
            [
                ("id", dl.event_id),
                ("type", dl.event_type),
                ("key", dl.key_text),
                ("source", dl.header(H_SOURCE) or "-"),
                ("time", dl.header(H_TIME) or "-"),
                ("correlation id", dl.header(H_CORRELATION) or "-"),
            ],
        ),
        ("provenance", _pairs(dl.header, _PROVENANCE_LABELS)),
        ("error", _pairs(dl.header, _ERROR_LABELS)),
    ]


def record_status(view: RecordView) -> str:
    if view.purged:
        return "purged (hidden from list and replay)"
    r = view.replay
    if r is None:
        return "pending (not replayed)"
    times = f", {r.replays} times" if r.replays > 1 else ""
    return f"{r.outcome} by job {r.job_id} -> {r.target_topic}[{r.target_partition}]@{r.target_offset}{times}"


def _ingress_sections(view: RecordView) -> list[tuple[str, list[tuple[str, str]]]]:
    dl = view.dl
    return [
        (
            "webhook",
            [
                ("ingress", dl.ingress or "-"),
                ("webhook id", dl.header(fh.WEBHOOK_ID) or "-"),
                ("type", dl.event_type),
                ("replayed as id", replay_event_id(dl) or "- (not re-ingestible)"),
            ],
        ),
        (
            "error",
            [
                ("code", dl.header(fh.ERROR_CODE) or "-"),
                ("stage", dl.header(fh.ERROR_STAGE) or "-"),
                ("message", dl.header(fh.ERROR_MESSAGE) or "-"),
                ("failed at", dl.failed_at or "-"),
            ],
        ),
    ]


def original_header_lines(view: RecordView) -> list[str]:
    return header_lines(view.dl.original_headers())


def header_lines(headers: list[Header] | tuple[Header, ...]) -> list[str]:
    return [f"{name}: {'<null>' if value is None else decode_header(value)}" for name, value in headers]


def raw_body(view: RecordView) -> str:
    """The value exactly as stored (a refused body may not even be JSON), as text."""
    return decode_header(view.dl.value) if view.dl.value else "<empty>"


def payload_text(view: RecordView) -> str:
    payload = view.dl.payload()
    return payload if isinstance(payload, str) else json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)


def audit_row(row: AuditRow) -> tuple[str, ...]:
    counts = " ".join(f"{k}={_scalar(v)}" for k, v in row.counts.items() if v)
    return (
        when(row.started_at),
        row.action,
        row.group,
        row.operator,
        "yes" if row.dry_run else "no",
        row.status,
        counts or "-",
        str(row.job_id),
    )


_PROVENANCE_LABELS = (
    ("source topic", fh.SOURCE_TOPIC),
    ("source partition", fh.SOURCE_PARTITION),
    ("source offset", fh.SOURCE_OFFSET),
    ("source timestamp", fh.SOURCE_TIMESTAMP),
    ("consumer group", fh.SOURCE_GROUP),
    ("attempts", fh.ATTEMPTS),
    ("first failed at", fh.FIRST_FAILED_AT),
    ("last failed at", fh.LAST_FAILED_AT),
    ("replay count", fh.REPLAY_COUNT),
    ("replay job", fh.REPLAY_JOB),
)
_ERROR_LABELS = (
    ("class", fh.ERROR_CLASS),
    ("code", fh.ERROR_CODE),
    ("stage", fh.ERROR_STAGE),
    ("message", fh.ERROR_MESSAGE),
)


def _pairs(header: Any, labels: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(label, header(name) or "-") for label, name in labels]
