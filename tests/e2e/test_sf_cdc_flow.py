"""Scenario: a write in the Salesforce sandbox reaches Kafka as the right domain event.

Contract: with the subscriber (``workers.ingress.sf_cdc.serve``) running against the in-process
Salesforce sandbox (real OAuth), the real Kafka broker and Postgres of the local stack, every
translation rule turns its sandbox write into exactly the domain event the fleet expects, keyed by
the Salesforce record id, with the raw change attached; internal-only changes emit nothing. The
fixtures and helpers here are shared by the other sf-cdc e2e files, and the ``world`` fixture runs
every test of them on both transports: CometD long polling and the Pub/Sub API (gRPC, Avro).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from adapters.db import migrate
from adapters.kafka import ensure_topics
from events.envelope import header_map
from events.topics import DAY_MS, TopicSpec
from sandbox.salesforce import SalesforceSandbox
from workers.config import KafkaSettings, PostgresSettings, RuntimeSettings, SalesforceSettings, Settings
from workers.ingress.sf_cdc import CdcMetrics, CdcOptions, CdcTopics, serve

pytestmark = pytest.mark.e2e

ORDER_CH = "/data/OrderChangeEvent"
OWN_CLIENT = "fulfillment-fleet"


# --- Kafka tap ----------------------------------------------------------------------------------
@dataclass
class Record:
    topic: str
    key: str
    value: dict[str, Any]
    headers: dict[str, str]

    @property
    def type(self) -> str:
        return self.headers.get("ce_type", "")

    @property
    def id(self) -> str:
        return self.headers.get("ce_id", "")


@dataclass
class KafkaTap:
    """Reads every record of the test's topics from the beginning, in the background."""

    bootstrap: str
    topics: list[str]
    records: list[Record] = field(default_factory=list)
    _consumer: Any = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        self._consumer.assign([TopicPartition(t, 0) for t in self.topics])
        await self._consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for m in messages:
                    value = json.loads(m.value) if m.value and m.value[:1] == b"{" else {"raw": m.value}
                    key = (m.key or b"").decode()
                    self.records.append(Record(m.topic, key, value, header_map(m.headers or [])))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def on(self, topic: str, type_: str | None = None) -> list[Record]:
        return [r for r in self.records if r.topic == topic and (type_ is None or r.type == type_)]

    async def wait(self, check: Callable[[], Any], timeout: float = 15.0, what: str = "records") -> None:
        await eventually(check, timeout, what=f"{what}; have {[(r.topic, r.type, r.key) for r in self.records]}")


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- the world: sandbox, topics, settings, running subscriber -----------------------------------
@dataclass
class World:
    sandbox: SalesforceSandbox
    http: httpx.AsyncClient
    settings: Settings
    topics: CdcTopics
    tap: KafkaTap
    subscriber_name: str
    options: CdcOptions
    dsn: str
    transport: str = "cometd"
    runs: list[tuple[asyncio.Task[None], asyncio.Event, CdcMetrics]] = field(default_factory=list)

    @property
    def pubsub(self) -> bool:
        return self.transport == "pubsub"

    @property
    def column(self) -> str:
        """The ``sf_cdc_checkpoints`` column this transport's positions live in."""
        return "pubsub_replay_id" if self.pubsub else "replay_id"

    @property
    def transport_settings(self) -> dict[str, Any]:
        """The SalesforceSettings fields that choose this world's transport."""
        if not self.pubsub:
            return {"cdc_transport": "cometd"}
        return {"cdc_transport": "pubsub", "pubsub_endpoint": self.sandbox.pubsub_url}

    def position(self, sandbox_replay_id: int) -> int | bytes:
        """The sandbox's replay id as this transport's position (Pub/Sub: its 8-byte encoding)."""
        return sandbox_replay_id.to_bytes(8, "big") if self.pubsub else sandbox_replay_id

    def replay_key(self, sandbox_replay_id: int) -> int | str:
        """What a domain event's ``replay_id`` says for that change (Pub/Sub: the bytes as hex)."""
        position = self.position(sandbox_replay_id)
        return position.hex() if isinstance(position, bytes) else position

    @staticmethod
    def number(position: int | bytes | None) -> int | None:
        """A stored position as the sandbox's integer (to compare with the bus's replay ids)."""
        return int.from_bytes(position, "big") if isinstance(position, bytes) else position

    @property
    def url(self) -> str:
        return self.sandbox.url

    @property
    def metrics(self) -> CdcMetrics:
        return self.runs[-1][2]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def start(self, **option_overrides: Any) -> CdcMetrics:
        """Run ``serve`` in the background and wait until it is subscribed."""
        stop, metrics = asyncio.Event(), CdcMetrics()
        options = replace(self.options, **option_overrides)
        task = asyncio.create_task(serve(self.settings, stop, topics=self.topics, options=options, metrics=metrics))
        self.runs.append((task, stop, metrics))
        await eventually(
            lambda: task.done() or metrics.registry.get_sample_value("sf_cdc_ready") == 1, 20, "subscribed"
        )
        if task.done():
            task.result()
        return metrics

    async def stop(self, *, crash: bool = False) -> None:
        """Stop the latest run: gracefully (drain, checkpoint), or by cancelling it like a kill."""
        task, stop, _ = self.runs[-1]
        if crash:
            task.cancel()
        else:
            stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    # --- sandbox actions ------------------------------------------------------------------------
    async def seed_order(self, customer: str = "tanaka", type_: str = "Internet", **fields: Any) -> dict[str, Any]:
        lines = {"Internet": ["INT-1G-GOLD"], "SIM": ["SIM-DV-5GB"], "VPN": ["VPN-TOKYO"]}[type_]
        spec = {"customer": customer, "Type": type_, "lines": lines, **fields}
        response = await self.http.post("/_sandbox/seed", json={"orders": [spec]})
        response.raise_for_status()
        return dict(response.json()["orders"][0])

    async def approve(self, order_id: str, status: str = "Approved", **extra: Any) -> None:
        response = await self.http.post(f"/_sandbox/orders/{order_id}/approve", json={"status": status, **extra})
        response.raise_for_status()

    async def edit(self, sobject: str, record_id: str, client: str | None = None, **fields: Any) -> None:
        params = {"client": client} if client else None
        response = await self.http.patch(f"/_sandbox/records/{sobject}/{record_id}", json=fields, params=params)
        response.raise_for_status()

    async def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.post(f"/_sandbox/{path}", json=body or {})
        response.raise_for_status()
        return response.json()

    async def checkpoint(self, channel: str = ORDER_CH) -> int | None:
        """The channel's stored position (either transport's column) as the sandbox's integer."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            value = await conn.fetchval(
                "SELECT COALESCE(replay_id::text, encode(pubsub_replay_id, 'hex')) FROM sf_cdc_checkpoints"
                " WHERE subscriber = $1 AND channel = $2",
                self.subscriber_name,
                channel,
            )
        finally:
            await conn.close()
        if value is None:
            return None
        return int(value, 16) if self.pubsub else int(value)


async def wait_for_leaders(bootstrap: str, topics: list[str]) -> None:
    """New topics answer NOT_LEADER for a moment; wait until every partition has a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(100):
            described = await admin.describe_topics(topics)
            if all(p["leader"] >= 0 for t in described for p in t["partitions"]) and len(described) == len(topics):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


TRANSPORTS = ["cometd", "pubsub"]


def settings_for(url: str, env: dict[str, str], **salesforce: Any) -> Settings:
    sf = {
        "instance_url": url,
        "login_url": url,
        "auth": "refresh_token",
        "refresh_token": "sandbox-refresh-token",
        "call_options_client": OWN_CLIENT,
        **salesforce,
    }
    return Settings(
        kafka=KafkaSettings(bootstrap=env["KAFKA_BOOTSTRAP"]),
        postgres=PostgresSettings(dsn=env["DATABASE_URL"]),
        salesforce=SalesforceSettings(**sf),
        runtime=RuntimeSettings(health_port=0, shutdown_grace_s=10),
    )


@pytest.fixture(params=TRANSPORTS)
async def world(request: pytest.FixtureRequest, stack_env: dict[str, str]) -> AsyncIterator[World]:  # noqa: F811
    await migrate(stack_env["DATABASE_URL"])
    # Pub/Sub: an empty keepalive response every second, so the 5 s watchdog sees an idle stream alive
    sandbox = SalesforceSandbox(cometd_timeout_ms=1000, pubsub_port=0, pubsub_keepalive_s=1.0)
    runner = await sandbox.start(port=0)
    transport = str(request.param)
    suffix = uuid.uuid4().hex[:8]
    topics = CdcTopics(*(f"test.sfcdc.{suffix}.{name}" for name in ("order", "catalog", "account", "resync", "dlq")))
    await ensure_topics(stack_env["KAFKA_BOOTSTRAP"], [TopicSpec(t, 1, DAY_MS) for t in topics.all()])
    await wait_for_leaders(stack_env["KAFKA_BOOTSTRAP"], topics.all())
    tap = KafkaTap(stack_env["KAFKA_BOOTSTRAP"], topics.all())
    await tap.start()
    name = unique("e2e")
    options = CdcOptions(
        subscriber=name,
        watchdog_s=5.0,
        watchdog_tick_s=0.1,
        checkpoint_interval_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.5,
        reconnect_max_s=1.0,
        shutdown_grace_s=10.0,
    )
    http = httpx.AsyncClient(base_url=sandbox.url, timeout=10)
    dsn = stack_env["DATABASE_URL"]
    w = World(sandbox, http, settings_for(sandbox.url, stack_env), topics, tap, name, options, dsn, transport)
    w.settings = settings_for(sandbox.url, stack_env, **w.transport_settings)
    try:
        yield w
    finally:
        for task, stop, _ in w.runs:
            stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        await tap.stop()
        await http.aclose()
        await runner.cleanup()


# --- the translation rules, end to end ----------------------------------------------------------
ACTIVATION = "fleet.order.activation-requested.v2"
SIM_ACTIVATION = "fleet.order.sim-activation-requested.v2"
CHANGED = "fleet.order.changed.v1"
CATALOG = "fleet.catalog.changed.v1"
ELIGIBILITY = "fleet.account.eligibility-changed.v1"


async def test_an_approved_order_becomes_an_activation_request(world: World) -> None:
    await world.start()
    order = await world.seed_order()
    oid = order["id"]
    await world.approve(oid)  # agent sets Approved; the Flow sets Activating in the same transaction
    tap = world.tap
    await tap.wait(lambda: tap.on(world.topics.order, ACTIVATION), what="activation")
    (activation,) = tap.on(world.topics.order, ACTIVATION)
    assert activation.key == oid and activation.value["sf_order_id"] == oid
    assert activation.value["status"] == "Approved" and activation.value["sf_account_id"] == order["AccountId"]
    assert activation.value["change"]["payload"]["Activation_Status__c"] == "Activating"
    assert activation.value["replay_id"] and activation.headers["ce_source"] == f"/salesforce{ORDER_CH}"
    # the order and its lines as sf-cdc read them (one SOQL query with an OrderItems sub-query), for the saga
    snapshot = activation.value["snapshot"]
    assert (snapshot["sf_order_id"], snapshot["order_type"], snapshot["status"]) == (oid, "Internet", "Approved")
    (line,) = snapshot["lines"]
    assert line["sf_order_item_id"] == order["items"][0]["id"] and line["whmcs_product_id"] == "182"
    reads = (await world.http.get("/_sandbox/requests", params={"endpoint": "query"})).json()
    assert any(oid in r["query"]["q"] and "FROM OrderItems" in r["query"]["q"] for r in reads)

    def order_changes() -> list[dict[str, Any]]:
        return [r.value for r in tap.on(world.topics.order, CHANGED) if r.value["entity"] == "Order"]

    await tap.wait(lambda: len(order_changes()) == 2)
    changed = order_changes()
    assert [c["change_type"] for c in changed] == ["CREATE", "UPDATE"]
    assert changed[1]["changed_fields"] == ["Status"]


async def test_a_processed_sim_order_becomes_a_sim_activation_request(world: World) -> None:
    await world.start()
    oid = (await world.seed_order(type_="SIM", SIM_Type__c="eSIM"))["id"]
    await world.edit("Order", oid, Status="Processed")
    tap = world.tap
    await tap.wait(lambda: tap.on(world.topics.order, SIM_ACTIVATION), what="sim activation")
    (sim,) = tap.on(world.topics.order, SIM_ACTIVATION)
    assert sim.key == oid and sim.value["sim_type"] == "eSIM" and sim.value["status"] == "Processed"
    assert tap.on(world.topics.order, ACTIVATION) == []


async def test_only_customer_facing_changes_become_order_changed(world: World) -> None:
    await world.start()
    oid = (await world.seed_order())["id"]
    await world.edit("Order", oid, Activation_Error_Code__c="X", Activation_Error_Message__c="internal")
    await world.edit("Order", oid, BillingCity="Osaka")
    tap = world.tap

    def order_changes() -> list[dict[str, Any]]:
        return [r.value for r in tap.on(world.topics.order, CHANGED) if r.value["entity"] == "Order"]

    await tap.wait(lambda: len(order_changes()) == 2)
    created, billing = order_changes()
    assert created["change_type"] == "CREATE" and billing["changed_fields"] == ["BillingAddress"]
    await eventually(lambda: world.metric("sf_cdc_events_skipped_total", channel=ORDER_CH, reason="no_rule_matched"))


async def test_an_order_item_change_is_an_order_change_keyed_by_its_order(world: World) -> None:
    await world.start()
    order = await world.seed_order()
    oid, item = order["id"], order["items"][0]["id"]
    await world.edit("OrderItem", item, Quantity=3)
    tap = world.tap

    def item_changes() -> list[Record]:
        return [r for r in tap.on(world.topics.order, CHANGED) if r.value["entity"] == "OrderItem"]

    await tap.wait(lambda: len(item_changes()) == 2, what="item create + update")
    create, quantity = item_changes()
    assert create.key == quantity.key == oid and quantity.value["record_id"] == item
    assert quantity.value["changed_fields"] == ["Quantity"]
    # the roll-up changed Order.TotalAmount in the same transaction: a customer-facing order change
    await tap.wait(lambda: any("TotalAmount" in r.value["changed_fields"] for r in tap.on(world.topics.order, CHANGED)))


async def test_catalog_writes_become_catalog_changed(world: World) -> None:
    await world.start()
    product = {"Name": "Home 10G", "StockKeepingUnit": unique("INT-10G"), "Family": "Internet", "UnitPrice": 9000}
    created = (await world.http.post("/_sandbox/seed", json={"products": [product]})).json()["products"][0]
    tap = world.tap
    await tap.wait(lambda: len(tap.on(world.topics.catalog, CATALOG)) == 2, what="product + pricebook entry")
    by_entity = {r.value["entity"]: r for r in tap.on(world.topics.catalog, CATALOG)}
    assert by_entity["Product2"].key == created["id"]
    assert by_entity["PricebookEntry"].key == created["pricebook_entry_id"]
    assert by_entity["PricebookEntry"].value["product2_id"] == created["id"]


async def test_the_eligibility_platform_event_becomes_account_eligibility_changed(world: World) -> None:
    await world.start()
    account = "0015g00000000001AA"
    fields = {"Account_Id__c": account, "Eligibility_Status__c": "Eligible", "Verification_Status__c": "Verified"}
    await world.control("events/platform", {"fields": fields})
    tap = world.tap
    await tap.wait(lambda: tap.on(world.topics.account, ELIGIBILITY), what="eligibility")
    (event,) = tap.on(world.topics.account, ELIGIBILITY)
    assert event.key == account and event.value["eligibility"] == "Eligible"
    assert event.value["verification_status"] == "Verified"
