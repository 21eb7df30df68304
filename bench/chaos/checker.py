"""The chaos run's checker: what was lost or done twice, read from the world, never from the fleet.

It shares no code with what it checks (Jepsen's rule): it imports nothing of ``workers``, ``adapters``,
``events`` or ``schemas``; topic names, header names and record fields are written out here as the
vendors and the portal would see them. Its inputs are the load's ``History`` (what was offered, what
each sender was answered) and four views of the end state:

* the Salesforce sandbox's Orders: ``Activation_Status__c = Activated``, or an
  ``Activation_Error_Code__c`` a human can act on (failed or parked); anything else is lost;
* the WHMCS sandbox's orders: how many carry ``sfOrderId=<id>`` in their notes (must be 1 for an
  activated order, 0 or 1 for the others, never 2);
* the Freebit sandbox's accounts and request log: one account per activated SIM order, and no
  account the fleet asked Freebit to register twice (a second registration request that reached
  Freebit unharmed by a fault, for an account that already existed);
* Kafka: every webhook a receiver accepted (a 2xx) has its record on ``whmcs.billing.v1``
  (``ce_id = whmcs-webhook:<webhook-id>``), and each group's dead letters with their causes;
* Redis: the portal key each accepted webhook made stale is gone.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

BILLING_TOPIC = "whmcs.billing.v1"
DLQ_TOPICS = ("fleet.fulfillment.dlq", "fleet.sf-writer.dlq", "fleet.cache-invalidator.dlq")
WEBHOOK_CE_PREFIX = "whmcs-webhook:"
REGISTRATION_ENDPOINTS = ("master/addAcnt", "mvno/esim/addAcnt")
READ_TIMEOUT_S = 120.0
_SF_ORDER = re.compile(r"sfOrderId=([A-Za-z0-9]+)")


async def check(
    history: dict[str, Any], *, salesforce: str, whmcs: str, freebit: str, bootstrap: str, redis_url: str
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60.0) as http:
        sf_orders = {o["Id"]: o for o in (await _get(http, f"{salesforce}/_sandbox/state"))["orders"]}
        whmcs_state = await _get(http, f"{whmcs}/_sandbox/state")
        freebit_state = await _get(http, f"{freebit}/_sandbox/state")
        freebit_log = await _get(http, f"{freebit}/_sandbox/requests")
    records, dead = await _kafka(bootstrap)
    report: dict[str, Any] = {}
    report["orders"] = _orders(history["orders"], sf_orders)
    report["whmcs_orders"] = _whmcs(history["orders"], report["orders"]["outcome_of"], whmcs_state)
    report["freebit"] = _freebit(history["orders"], report["orders"]["outcome_of"], freebit_state, freebit_log)
    report["webhooks"] = _webhooks(history["webhooks"], records)
    report["portal_keys"] = await _keys(history["webhooks"], redis_url)
    report["dead_letters"] = dead
    report["zeros"] = {
        "duplicate_whmcs_orders": report["whmcs_orders"]["duplicated"],
        "duplicate_sim_registrations": report["freebit"]["registered_twice"],
        "lost_webhooks": report["webhooks"]["accepted_not_on_kafka"],
        "lost_orders": report["orders"]["lost"],
        "stale_portal_keys": report["portal_keys"]["still_present"],
    }
    del report["orders"]["outcome_of"]
    return report


async def _get(http: httpx.AsyncClient, url: str) -> Any:
    answer = await http.get(url)
    answer.raise_for_status()
    return answer.json()


def _orders(offered: dict[str, Any], sf_orders: dict[str, Any]) -> dict[str, Any]:
    outcome_of: dict[str, str] = {}
    for order_id, order in offered.items():
        record = sf_orders.get(order_id, {})
        if record.get("Activation_Status__c") == "Activated":
            outcome_of[order_id] = "activated"
        elif record.get("Activation_Error_Code__c"):
            outcome_of[order_id] = f"error:{record['Activation_Error_Code__c']}"
        elif order.get("approved_at") is None:
            outcome_of[order_id] = "not approved"
        else:
            outcome_of[order_id] = f"lost:{record.get('Status')}/{record.get('Activation_Status__c')}"
    by_kind: dict[str, Counter[str]] = {}
    for order_id, order in offered.items():
        by_kind.setdefault(order["kind"], Counter())[
            outcome_of[order_id].split(":")[0] if outcome_of[order_id].startswith("lost") else outcome_of[order_id]
        ] += 1
    lost = sorted(i for i, o in outcome_of.items() if o.startswith("lost"))
    return {
        "offered": len(offered),
        "approved": sum(1 for o in offered.values() if o.get("approved_at") is not None),
        "activated": sum(1 for o in outcome_of.values() if o == "activated"),
        "with_error_code": dict(Counter(o.split(":", 1)[1] for o in outcome_of.values() if o.startswith("error:"))),
        "lost": len(lost),
        "lost_examples": {i: outcome_of[i] for i in lost[:20]},
        "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "outcome_of": outcome_of,
    }


def _whmcs(offered: dict[str, Any], outcome_of: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
    per_order: Counter[str] = Counter()
    for order in state.get("orders", []):
        for sf_id in _SF_ORDER.findall(order.get("notes") or ""):
            per_order[sf_id] += 1
    ours = {i: per_order.get(i, 0) for i in offered}
    missing = sorted(i for i, n in ours.items() if n == 0 and outcome_of.get(i) == "activated")
    return {
        "orders_with_sf_id": sum(per_order[i] for i in offered),
        "per_sf_order": dict(Counter(ours.values())),
        "duplicated": sum(1 for n in ours.values() if n > 1),
        "duplicated_examples": sorted(i for i, n in ours.items() if n > 1)[:20],
        "activated_without_whmcs_order": len(missing),
    }


def _freebit(
    offered: dict[str, Any], outcome_of: dict[str, str], state: dict[str, Any], log: list[dict[str, Any]]
) -> dict[str, Any]:
    accounts = {a["account"]: a for a in state.get("accounts", [])}
    sims_activated = sum(1 for i, o in offered.items() if o["type"] == "SIM" and outcome_of.get(i) == "activated")
    attempts: Counter[str] = Counter()
    unharmed: Counter[str] = Counter()
    for entry in log:
        if entry.get("endpoint") not in REGISTRATION_ENDPOINTS:
            continue
        account = registered_account(entry.get("body") or "")
        if not account:
            continue
        attempts[account] += 1
        if entry.get("fault") is None and entry.get("status") == 200:
            unharmed[account] += 1
    return {
        "accounts": len(accounts),
        "sim_orders_activated": sims_activated,
        "accounts_missing": max(0, sims_activated - len(accounts)),
        "registration_requests_per_account": dict(Counter(attempts.values())),
        # a second unharmed request for one account: the fleet asked to register a SIM it had registered
        "registered_twice": sum(1 for n in unharmed.values() if n > 1),
        "registered_twice_examples": sorted(a for a, n in unharmed.items() if n > 1)[:20],
        "log_entries": len(log),
    }


def registered_account(form_body: str) -> str | None:
    raw = parse_qs(form_body).get("json", [""])[0]
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    account = body.get("account") if isinstance(body, dict) else None
    return str(account) if account else None


def _webhooks(offered: dict[str, Any], seen: Counter[str]) -> dict[str, Any]:
    accepted = [i for i, w in offered.items() if w.get("accepted")]
    lost = sorted(i for i in accepted if seen.get(i, 0) == 0)
    return {
        "offered": len(offered),
        "accepted": len(accepted),
        "never_accepted": len(offered) - len(accepted),
        "delivered_twice_by_the_load": sum(
            1 for w in offered.values() if len(w.get("delivered_to", [])) > 1 or w.get("redelivered")
        ),
        "on_kafka": sum(1 for i in offered if seen.get(i)),
        "records_per_accepted_webhook": dict(Counter(seen.get(i, 0) for i in accepted)),
        "accepted_not_on_kafka": len(lost),
        "lost_examples": lost[:20],
    }


async def _keys(offered: dict[str, Any], redis_url: str) -> dict[str, Any]:
    keys = [w["key"] for w in offered.values() if w.get("accepted")]
    client = aioredis.from_url(redis_url)
    try:
        present = 0
        for start in range(0, len(keys), 500):
            present += int(await client.exists(*keys[start : start + 500])) if keys[start : start + 500] else 0
    finally:
        await client.aclose()
    return {"checked": len(keys), "still_present": present}


async def _kafka(bootstrap: str) -> tuple[Counter[str], dict[str, Any]]:
    """The webhook ids on the billing topic, and each dead-letter topic's records by cause."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=30_000)
    await consumer.start()
    try:
        seen: Counter[str] = Counter()
        for _, _, headers in await _read(consumer, BILLING_TOPIC):
            ce_id = headers.get("ce_id", b"").decode()
            if ce_id.startswith(WEBHOOK_CE_PREFIX):
                seen[ce_id.removeprefix(WEBHOOK_CE_PREFIX)] += 1
        dead: dict[str, Any] = {}
        for topic in DLQ_TOPICS:
            causes: Counter[str] = Counter()
            records = await _read(consumer, topic)
            for _, _, headers in records:
                cause = headers.get("error_class", b"?").decode().rsplit(".", 1)[-1]
                code = headers.get("error_code", b"").decode()
                causes[f"{cause}{':' + code if code else ''}"] += 1
            dead[topic] = {"records": len(records), "by_cause": dict(causes)}
        return seen, dead
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, topic: str) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - an assign-only consumer knows no topics
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return []
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    remaining = {tp for tp in tps if ends[tp] > 0}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while remaining and time.monotonic() < deadline:
        batch = await consumer.getmany(*remaining, timeout_ms=1_000)
        for tp, records in batch.items():
            for r in records:
                out.append((r.key, r.value, dict(r.headers)))
                if r.offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    if remaining:
        raise RuntimeError(f"{topic}: could not read to the end within {READ_TIMEOUT_S:g} s: {sorted(remaining)}")
    return out
