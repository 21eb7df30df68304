"""Scenario: two ``fleet run whmcs-webhooks`` processes behind one URL share the stack's Redis dedupe.

Contract: the same signed webhook sent to both receivers at the same moment (50 distinct webhooks,
each sent to both concurrently) is produced once: every answer is a 2xx or a retryable status (409
while the other receiver holds it, 503 if Kafka did not acknowledge), a sender that retries its 409s
gets a 2xx for every webhook, exactly one answer per webhook says "accepted", and the topic holds
exactly one record per webhook id. Sending the whole set to both again only yields "duplicate".

The receivers write to the catalog topic ``whmcs.billing.v1``; the test reads it from its end as it
was before the first webhook, keeping the records of its own (unique) webhook ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from events.topics import Topic
from tests.e2e.test_sf_cdc_flow import eventually
from tests.e2e.test_sf_cdc_standby import Tap
from tests.integration.test_webhook_receiver import SECRET, free_port
from workers.ingress.webhook_server import PATH

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLEET = Path(sys.executable).with_name("fleet")
WEBHOOKS = 50
RETRYABLE = {409, 503}

Request = tuple[bytes, dict[str, str]]


def signed(webhook_id: str, invoice_id: int) -> Request:
    """One signed request; both receivers get these very bytes and headers."""
    body = json.dumps(
        {
            "event": "InvoicePaid",
            "occurred_at": "2027-01-15T08:00:00Z",
            "data": {"client_id": 4242, "invoice_id": invoice_id},
        }
    )
    stamp = datetime.fromtimestamp(int(time.time()), UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, stamp, body),
        "content-type": "application/json",
    }
    return body.encode(), headers


async def post(http: aiohttp.ClientSession, url: str, request: Request) -> tuple[int, str]:
    body, headers = request
    async with http.post(url + PATH, data=body, headers=headers) as response:
        answer = await response.json()
        return response.status, str(answer.get("status") or answer.get("error"))


@contextlib.asynccontextmanager
async def receivers(stack_env: dict[str, str], count: int) -> AsyncIterator[list[str]]:  # noqa: F811
    ports = [free_port() for _ in range(count)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    procs = []
    for port in ports:
        env = {
            **base,
            "FLEET_SECRETS_DIR": os.environ.get("FLEET_SECRETS_DIR", ""),
            "FLEET_KAFKA__BOOTSTRAP": stack_env["KAFKA_BOOTSTRAP"],
            "FLEET_REDIS__URL": stack_env["REDIS_URL"],
            "FLEET_WHMCS__WEBHOOK_LISTEN_PORT": str(port),
            "FLEET_LOG__FORMAT": "json",
            "FLEET_LOG__LEVEL": "WARNING",
        }
        procs.append(
            await asyncio.create_subprocess_exec(
                str(FLEET),
                "run",
                "whmcs-webhooks",
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        async with aiohttp.ClientSession() as http:
            for url, proc in zip(urls, procs, strict=True):
                deadline = time.monotonic() + 30
                while True:
                    assert proc.returncode is None, f"the receiver on {url} exited"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/readyz") as response:
                            if response.status == 200:
                                break
                    assert time.monotonic() < deadline, f"the receiver on {url} never became ready"
                    await asyncio.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_the_same_webhook_sent_to_both_receivers_at_once_is_produced_once(
    stack_env: dict[str, str],  # noqa: F811
) -> None:
    tap = Tap(stack_env["KAFKA_BOOTSTRAP"], str(Topic.WHMCS_BILLING))
    await tap.start()
    run = uuid.uuid4().hex[:10]
    requests = {f"msg_shared_{run}_{i}": signed(f"msg_shared_{run}_{i}", 70_000 + i) for i in range(WEBHOOKS)}
    try:
        async with receivers(stack_env, 2) as (one, two), aiohttp.ClientSession() as http:
            ids = list(requests)
            # every webhook to both receivers at the same moment: 100 concurrent requests
            first = await asyncio.gather(*(post(http, url, requests[i]) for i in ids for url in (one, two)))
            answers: dict[str, list[tuple[int, str]]] = {i: list(first[2 * n : 2 * n + 2]) for n, i in enumerate(ids)}
            statuses = Counter(status for pair in answers.values() for status, _ in pair)
            assert set(statuses) <= {200} | RETRYABLE, statuses
            assert all(
                any(s == 200 for s, _ in pair) or any(s in RETRYABLE for s, _ in pair) for pair in answers.values()
            )

            # the sender retries what was refused with a retryable status (after Retry-After: 1 s)
            deadline = time.monotonic() + 30
            pending = [
                (i, url)
                for i in ids
                for url, (status, _) in zip((one, two), answers[i], strict=True)
                if status in RETRYABLE
            ]
            retried = len(pending)
            while pending:
                assert time.monotonic() < deadline, f"still refused: {pending}"
                await asyncio.sleep(1.0)
                outcomes = await asyncio.gather(*(post(http, url, requests[i]) for i, url in pending))
                still = []
                for (i, url), (status, outcome) in zip(pending, outcomes, strict=True):
                    if status == 200:
                        answers[i].append((status, outcome))
                    else:
                        assert status in RETRYABLE, (status, outcome)
                        still.append((i, url))
                pending = still

            accepted = Counter(i for i, pair in answers.items() for status, outcome in pair if outcome == "accepted")
            assert accepted == Counter({i: 1 for i in ids})  # exactly one receiver produced each

            # the whole set again, to both: nothing new
            again = await asyncio.gather(*(post(http, url, requests[i]) for i in ids for url in (one, two)))
            assert set(again) == {(200, "duplicate")}

        expected = {f"whmcs-webhook:{i}" for i in ids}

        def ours() -> Counter[str]:
            return Counter(h["ce_id"] for _, h in tap.records if h.get("ce_id") in expected)

        await eventually(lambda: set(ours()) == expected, 20, "a record per webhook")
        await asyncio.sleep(1.0)  # a second record of any webhook would have arrived by now
        assert ours() == Counter({ce_id: 1 for ce_id in expected})
        print(f"\n{WEBHOOKS} webhooks x 2 receivers: first answers {dict(statuses)}, {retried} retried")
    finally:
        await tap.stop()
