"""Screenshots of the ops console for docs/console.md, taken with the real browser against a running demo.

    python -m devtools.console_screenshots --url http://127.0.0.1:18500 --out docs/console

Run it while ``make run`` (``fleet demo up``) is up: it seeds one dead letter of a demo order's
write-back (so the dead-letter pages have something to show), then opens the fleet, dead letters,
a group with a replay dry run, a dead letter, an order and the audit log in Debian's chromium
(Playwright, ``executable_path``; never ``playwright install``) and saves a PNG of each.
A development tool: never imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import asyncpg
from playwright.async_api import Page, async_playwright

from events.errors import RejectedByUpstream
from events.topics import ConsumerGroup, Topic
from workers.config import load_settings
from workers.dlq.testing import Letter, produce

CHROMIUM = "/usr/bin/chromium"
GROUP = ConsumerGroup.SF_WRITER.value


async def _demo_order(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        oid = await conn.fetchval(
            "SELECT sf_order_id FROM fulfillment_orders WHERE state = 'fulfilled' ORDER BY updated_at DESC LIMIT 1"
        )
    finally:
        await conn.close()
    if oid is None:
        raise SystemExit("no fulfilled order yet: run `make run` and wait for its scenario first")
    return str(oid)


async def _seed_dead_letter(bootstrap: str, oid: str) -> None:
    letter = Letter(
        key=oid,
        event_type="fleet.salesforce.update-record.v1",
        data={"sobject": "Order", "record_id": oid, "fields": {"Activation_Status__c": "Activated"}},
        error=RejectedByUpstream("FIELD_CUSTOM_VALIDATION_EXCEPTION: Activation_Status__c needs a SIM"),
        source_topic=Topic.SF_WRITEBACK,
        source_timestamp_ms=int(time.time() * 1000),
    )
    await produce(bootstrap, GROUP, [letter])


async def _shot(page: Page, out: Path, name: str) -> None:
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"wrote {out / name}.png")


async def main(url: str, out: Path) -> None:
    settings = load_settings()
    dsn = settings.postgres.dsn.get_secret_value()
    oid = await _demo_order(dsn)
    await _seed_dead_letter(settings.kafka.bootstrap, oid)
    url = url.rstrip("/")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(f"{url}/fleet")
        await _shot(page, out, "fleet")
        await page.goto(f"{url}/dlq")
        await _shot(page, out, "dead-letters")
        await page.goto(f"{url}/orders/{oid}")
        await _shot(page, out, "order")
        await page.goto(f"{url}/dlq/{GROUP}?key={oid}")
        await page.locator("#dry-run").click()
        await page.locator("#plan").wait_for()
        await _shot(page, out, "replay-dry-run")
        await page.locator("#records a").first.click()
        await _shot(page, out, "dead-letter")
        await page.goto(f"{url}/orders")
        await _shot(page, out, "orders")
        await page.goto(f"{url}/audit")
        await _shot(page, out, "audit")
        await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:18500")
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.url, args.out))
