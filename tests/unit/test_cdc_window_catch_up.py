"""A failed catch-up keeps its window (issue 14): the checkpoint row records it as pending and keeps
the window's start while the stream checkpoints its replay ids; the catch-up is retried with back-off
until it succeeds, also by the next subscriber that loads the row. And the fleet's own writes: a
customer-facing field they change yields a cache-only ``OrderChanged``, never a trigger."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from adapters.cdc_checkpoints import Checkpoint, MemoryCheckpointStore
from events.errors import RejectedByUpstream
from events.salesforce import OrderChanged
from tests.unit.test_cdc_subscriber import FAST, ORDER_CH, TOPICS, build, eventually, running, update
from tests.unit.test_cdc_translate import ORDER_ID, OWN_CLIENT, RULES, change_message, fake_org, parse
from workers.ingress.cdc_translate import Translator

OWN = f"com/salesforce/api/rest/60.0;client={OWN_CLIENT}"
PENDING = "CATCH_UP_PENDING:REPLAY_ID_REJECTED"


def refused() -> RejectedByUpstream:
    return RejectedByUpstream("GET /query answered 400", upstream="salesforce", code="MALFORMED_QUERY")


async def test_a_failed_catch_up_is_kept_in_the_row_while_the_stream_checkpoints_then_retried() -> None:
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, 500, since)})
    r = build(store=store, options=replace(FAST, catch_up_retry_initial_s=0.3))
    r.source.reject(ORDER_CH)
    r.org.fail_next_with(refused())
    async with running(r):
        assert r.metric("sf_cdc_catch_up_failures_total", channel=ORDER_CH) == 1
        assert store.rows[ORDER_CH] == Checkpoint(ORDER_CH, None, since, PENDING)
        r.source.push(update(600))
        await eventually(lambda: r.checkpoint() == 600)
        assert store.rows[ORDER_CH] == Checkpoint(ORDER_CH, 600, since, PENDING)
        await eventually(lambda: store.rows[ORDER_CH].reset_reason == "REPLAY_ID_REJECTED")
        row = store.rows[ORDER_CH]
        assert row.replay_id == 600 and row.position_time is not None and row.position_time > since
        assert {e["sf_order_id"] for e in r.on(TOPICS.order)} >= {ORDER_ID}
        assert r.metric("sf_cdc_catch_up_pending", channel=ORDER_CH) == 0


async def test_the_next_subscriber_resumes_a_pending_catch_up_from_the_window_start() -> None:
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, 600, since, PENDING)})
    r = build(store=store)
    async with running(r):
        assert r.source.opens == [{ORDER_CH: 600}]  # the stream resumes where it was
        (request,) = r.on(TOPICS.resync)
        assert datetime.fromisoformat(request["since"]) == since and request["reason"] == "REPLAY_ID_REJECTED"
        assert r.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 0
        row = store.rows[ORDER_CH]
        assert row.replay_id == 600 and row.reset_reason == "REPLAY_ID_REJECTED"
        assert row.position_time is not None and row.position_time > since
        resynced = [e for e in r.on(TOPICS.order) if "resync" in (e.get("change") or {})]
        assert {e["change"]["resync"]["request_id"] for e in resynced} == set(r.ids(TOPICS.resync))


async def test_an_own_write_of_a_customer_facing_field_is_a_cache_only_order_change() -> None:
    message = change_message(
        "Order",
        fields={"Status": "Approved", "Activation_Status__c": "Activating", "Activation_Error_Code__c": "SIM_FAILED"},
        origin=OWN,
    )
    result = await Translator(RULES, fake_org()).translate(parse(message))
    (emission,) = result.emissions
    assert isinstance(emission.event, OrderChanged) and emission.event.changed_fields == ["Status"]


async def test_an_own_write_of_internal_fields_only_emits_nothing_and_reads_nothing() -> None:
    org = fake_org()
    message = change_message(
        "Order", fields={"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "9"}, origin=OWN
    )
    result = await Translator(RULES, org).translate(parse(message))
    assert result.emissions == () and result.note == "own_write" and org.bulk_reads == []
