"""`fleet orders show` and the sf-writer's dead letters of an order (``workers.dlq.writeback``), pure parts.

Contract: a dead letter of the order's last write-back that was neither replayed nor purged makes the
headline say "write-back dead-lettered" and is listed in the timeline (when, record, error class and
code, message, status); one replayed or purged, or one a later write-back superseded, is listed but
does not; a parked one still does (nothing was written); an unreadable DLQ says "not checked".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from adapters.dlq_store import ProgressRow
from adapters.saga_store import HistoryEntry, SagaOrder, SagaRecord, StepRecord
from events.errors import RejectedByUpstream
from events.topics import Topic
from workers.cli.orders import render_order
from workers.dlq.browse import RecordView
from workers.dlq.models import DeadLetter
from workers.dlq.testing import Letter, build
from workers.dlq.writeback import GROUP, assess, record_ids

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # the write-back step's last attempt
OID = "801C00000000ABCDEF"


def order(**steps: datetime) -> SagaRecord:
    o = SagaOrder(OID, state="fulfilled", order_type="SIM", created_at=AT - timedelta(minutes=5))
    o.plan = {"lines": [{"order_item_id": "802C00000000000001"}]}
    rec = StepRecord("sf_writeback", 9, "done", 1, started_at=AT, last_attempt_at=AT, finished_at=AT)
    return SagaRecord(o, {"sf_writeback": rec})


def letter(commanded: datetime, offset: int = 7, key: str = OID) -> DeadLetter:
    data = {"sobject": "Order", "record_id": key, "fields": {"Activation_Status__c": "Activated"}}
    error = RejectedByUpstream("FIELD_CUSTOM_VALIDATION_EXCEPTION: WHMCS order id required")
    spec = Letter(key=key, event_type="fleet.salesforce.update-record.v1", data=data, error=error,
                  source_topic=Topic.SF_WRITEBACK, source_timestamp_ms=int(commanded.timestamp() * 1000))  # fmt: skip
    k, v, h = build(spec, GROUP)
    return DeadLetter(
        f"{GROUP}.dlq", 2, offset, int((commanded + timedelta(seconds=40)).timestamp() * 1000), k, v, tuple(h)
    )


def done(outcome: str) -> ProgressRow:
    return ProgressRow(UUID(int=5), outcome, f"{GROUP}.retry.1", 2, 11, 1, AT + timedelta(minutes=2))


def test_a_pending_dead_letter_of_the_last_write_back_flags_the_order() -> None:
    view = RecordView(letter(AT + timedelta(milliseconds=200)), None, False)
    wb = assess([view], order(), [])
    assert wb.dead_lettered
    text = "\n".join(render_order(order(), [HistoryEntry("fulfilled", None, {}, AT)], wb))
    assert f"order {OID}  SIM  state=fulfilled, write-back dead-lettered\n" in text
    [line] = [x for x in text.splitlines() if "dead_lettered" in x]
    assert line.startswith("  2026-03-02 09:00:40  sf-writer        dead_lettered")
    for part in (f"record=Order/{OID}", "error=events.errors.RejectedByUpstream", "code=", "FIELD_CUSTOM_VALIDATION",
                 "dlq=2:7", "status=pending (not replayed)"):  # fmt: skip
        assert part in line
    assert f"fleet dlq replay -g {GROUP} --key {OID} --dry-run" in text


@pytest.mark.parametrize(
    ("replay", "purged", "flagged"),
    [(done("replayed"), False, False), (done("parked"), False, True), (None, True, False)],
    ids=["replayed", "parked", "purged"],
)
def test_what_operators_did_decides(replay: ProgressRow | None, purged: bool, flagged: bool) -> None:
    view = RecordView(letter(AT + timedelta(milliseconds=200)), replay, purged)
    wb = assess([view], order(), [])
    assert wb.dead_lettered is flagged
    headline = render_order(order(), [], wb)[0]
    assert headline.endswith("state=fulfilled" + (", write-back dead-lettered" if flagged else ""))
    if replay is not None:
        assert any(f"dlq_{replay.outcome}" in line and "job=00000000" in line for line in render_order(order(), [], wb))


def test_a_dead_letter_superseded_by_a_later_write_back_is_listed_but_does_not_flag() -> None:
    earlier = RecordView(letter(AT - timedelta(minutes=3)), None, False)  # the error fields of an earlier park
    wb = assess([earlier], order(), [HistoryEntry("parked", "payment_gate", {}, AT - timedelta(minutes=3))])
    assert not wb.dead_lettered and wb.letters == [earlier]
    lines = render_order(order(), [], wb)
    assert lines[0].endswith("state=fulfilled") and any("dead_lettered" in x for x in lines)


def test_an_unreadable_dlq_is_said_not_hidden() -> None:
    lines = render_order(order(), [], "KafkaConnectionError: Unable to bootstrap")
    assert lines[0].endswith("state=fulfilled, write-back not checked")
    assert lines[-1].endswith("KafkaConnectionError: Unable to bootstrap")


def test_the_order_and_its_lines_are_looked_up() -> None:
    assert record_ids(order()) == {OID, "802C00000000000001"}
