"""The sf-writer's side of one order: its dead letters of the order's records, and which still matter.

The fulfillment saga is done once its write-back commands (``UpdateSalesforceRecord``, keyed by
record id) are on Kafka; whether Salesforce took them is the sf-writer's outcome, and a command it
gave up on is a dead letter on ``fleet.sf-writer.dlq``. ``fleet orders show`` reads them here.

Owns the rule "the order's last write-back is dead-lettered": a dead letter is *open* when it was
neither replayed (a parked one was not written either) nor purged (a human settled it), and its
command belongs to the saga's last write-back, i.e. no later write-back superseded it. Must not
change anything in Kafka or Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from adapters.kafka import KafkaTarget
from adapters.saga_store import HistoryEntry, SagaRecord
from events import failure as fh
from events.topics import ConsumerGroup
from workers.dlq.browse import RecordView
from workers.dlq.lookup import dead_letters_of
from workers.dlq.models import ms_to_datetime
from workers.dlq.selection import REPLAYED
from workers.fulfillment.model import OrderState, Step

GROUP = ConsumerGroup.SF_WRITER.value
#: slack between the saga's clock and a command's Kafka timestamp (both the fulfillment worker's clock)
SKEW = timedelta(seconds=1)
#: timeline entries of the saga that go with publishing write-back commands: a park or failure (the
#: error fields), a repaired write-back or a ledger mismatch (noted right after their commands, so
#: within ``SKEW`` of them)
_WRITEBACK_KINDS = frozenset(
    {OrderState.FAILED.value, OrderState.PARKED.value, "writeback_repaired", "ledger_mismatch"}
)


@dataclass(frozen=True)
class WriteBack:
    """``letters``: every sf-writer dead letter of the order's records, oldest first; ``open``: those
    that leave Salesforce behind the saga (see the module docstring); ``capped``: the DLQ was too big
    to search whole since the order was created."""

    letters: list[RecordView] = field(default_factory=list)
    open: list[RecordView] = field(default_factory=list)
    capped: bool = False
    group: str = GROUP

    @property
    def dead_lettered(self) -> bool:
        return bool(self.open)


async def load(kafka: KafkaTarget, dsn: str, record: SagaRecord, history: Sequence[HistoryEntry]) -> WriteBack:
    """Bounded: the DLQ is read from the order's creation on (``workers.dlq.lookup``), filtered by key."""
    since = record.order.created_at - timedelta(minutes=1) if record.order.created_at else None
    found = await dead_letters_of(kafka, dsn, GROUP, record_ids(record), since)
    return assess(found.views, record, history, capped=found.capped)


def assess(
    letters: Iterable[RecordView], record: SagaRecord, history: Sequence[HistoryEntry], *, capped: bool = False
) -> WriteBack:
    letters = list(letters)
    last = last_writeback_at(record, history)
    return WriteBack(letters, [v for v in letters if is_open(v, last)], capped)


def record_ids(record: SagaRecord) -> set[str]:
    """The records the saga writes back to: the Order, and each OrderItem of its plan."""
    lines = record.order.plan.get("lines") or []
    items = {str(line["order_item_id"]) for line in lines if isinstance(line, dict) and line.get("order_item_id")}
    return {record.order.sf_order_id, *items}


def last_writeback_at(record: SagaRecord, history: Sequence[HistoryEntry]) -> datetime | None:
    """When the saga last published write-back commands: its write-back step's last attempt (the
    commands follow it), or one of ``_WRITEBACK_KINDS``."""
    step = record.steps.get(Step.SF_WRITEBACK.value)
    moments = [h.at for h in history if h.kind in _WRITEBACK_KINDS and h.at is not None]
    if step is not None and step.last_attempt_at is not None:
        moments.append(step.last_attempt_at)
    return max(moments, default=None)


def is_open(view: RecordView, last_writeback: datetime | None) -> bool:
    if view.purged or (view.replay is not None and view.replay.outcome == REPLAYED):
        return False
    # ``source_timestamp``: when the command was published (kept across retry tiers and replays)
    stamp = view.dl.header_int(fh.SOURCE_TIMESTAMP)
    commanded = ms_to_datetime(stamp) if stamp else view.dl.dead_lettered_at
    return last_writeback is None or commanded + SKEW >= last_writeback


def record_of(view: RecordView) -> str:
    """``Order/801...``: the command's sObject and record id."""
    payload = view.dl.payload()
    sobject = payload.get("sobject", "?") if isinstance(payload, dict) else "?"
    return f"{sobject}/{view.dl.key_text}"
