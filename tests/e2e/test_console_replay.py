"""Scenario: an operator finds a dead letter in the console, previews its replay, replays it, and
sees the order recover, in a real browser (Debian's chromium) against the real stack.

Contract: the fleet page lists every worker's group with its lag, without an outage banner; an
order the saga fulfilled whose Salesforce write-back the sf-writer dead-lettered shows
"write-back dead-lettered" on its page, with a link to its dead letters; the dry run lists the
record as "would replay" and sends nothing; the replay (the CLI's own ``workers.dlq.replay``) shows
its progress until completed and puts the copy on ``fleet.sf-writer.retry.1``; the order's page
then no longer says dead-lettered and its timeline shows the replay; the audit log names the
operator ("local" in FLEET_ENV=local) for the dry run and the replay.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import expect

from events.topics import retry_topic
from tests.console_browser import chromium, running_console
from tests.e2e.test_orders_writeback_dlq import GROUP, command_letter, order_id, seed_fulfilled
from tests.support import eventually
from workers.config import DEFAULT_TRACE_URL
from workers.dlq.reader import TopicReader
from workers.dlq.testing import produce

pytestmark = pytest.mark.e2e


async def copies_on_retry(bootstrap: str, event_id: str) -> int:
    async with TopicReader(bootstrap, retry_topic(GROUP, 1)) as reader:
        return len([r async for r in reader.read() if r.event_id == event_id])


async def audit_rows(dsn: str, job_operator: str, since: datetime) -> list[tuple[str, bool, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT action, dry_run, status FROM dlq_audit WHERE consumer_group = $1 AND operator = $2"
            " AND started_at >= $3 ORDER BY started_at",
            GROUP,
            job_operator,
            since,
        )
    finally:
        await conn.close()
    return [(r["action"], r["dry_run"], r["status"]) for r in rows]


async def test_find_dry_run_replay_and_see_the_order_recover(stack_env: dict[str, str], tmp_path: Path) -> None:
    oid, started = order_id(), datetime.now(UTC)
    created = started - timedelta(minutes=3)
    await seed_fulfilled(stack_env["DATABASE_URL"], oid, created)
    refused = command_letter(
        oid,
        commanded_ms=int((created + timedelta(seconds=21)).timestamp() * 1000),
        dead_lettered_ms=int(time.time() * 1000),
        message="FIELD_CUSTOM_VALIDATION_EXCEPTION: Activation_Status__c cannot be Activated without a SIM",
    )
    (dead,) = await produce(stack_env["KAFKA_BOOTSTRAP"], GROUP, [refused])
    event_id = dead.letter.event_id

    async with (
        running_console(stack_env, tmp_path / "console.log", FLEET_ENV="local") as console,
        chromium() as browser,
    ):
        page = await browser.new_page()
        await page.goto(f"{console.url}/fleet")
        await expect(page.locator("#groups")).to_contain_text("fleet.sf-writer")
        await expect(page.locator(".banner")).to_have_count(0)

        await page.goto(f"{console.url}/orders?q={oid}")
        await page.get_by_role("link", name=oid).click()
        await expect(page.locator("#order-state")).to_contain_text("write-back dead-lettered")
        trace = DEFAULT_TRACE_URL.replace("{order_id}", oid)
        await expect(page.locator("#trace")).to_have_attribute("href", trace)

        await page.get_by_role("link", name="replay it").click()
        row = page.locator("#records tr", has_text=oid)
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("pending (not replayed)")
        await expect(row).to_contain_text("events.errors.RejectedByUpstream")

        await page.locator("#dry-run").click()
        await expect(page.locator("#plan")).to_contain_text(f"would replay {dead.partition}:{dead.offset}")
        assert await copies_on_retry(stack_env["KAFKA_BOOTSTRAP"], event_id) == 0, "a dry run sends nothing"

        await page.locator("#replay").click()
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=60_000)
        await expect(page.locator("#job-counts")).to_contain_text("replayed=1")
        assert await copies_on_retry(stack_env["KAFKA_BOOTSTRAP"], event_id) == 1

        await page.goto(f"{console.url}/orders/{oid}")
        await expect(page.locator("#order-state")).not_to_contain_text("dead-lettered")
        await expect(page.locator("#timeline")).to_contain_text("dlq_replayed")

        await page.goto(f"{console.url}/audit?group={GROUP}")
        await expect(page.locator("#audit")).to_contain_text("local")

    rows = await eventually(lambda: audit_rows(stack_env["DATABASE_URL"], "local", started), what="audit rows")
    assert ("replay", True, "completed") in rows and ("replay", False, "completed") in rows
