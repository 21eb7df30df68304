"""Scenario: the fulfillment worker (the real runtime ``Worker``) against Kafka, PostgreSQL and the sandboxes.

Contract: an activation request on the order topic ends with the order fulfilled in PostgreSQL, exactly
one Active WHMCS order carrying ``sfOrderId=<id>`` (and, for SIM orders, one active Freebit account
whose number, serial and EID are on the WHMCS service), an ``Activated`` write-back command and an
``OrderFulfilled`` outcome. Freebit's asynchronous completion is awaited through wake-ups on the
group's retry tier. A parked order resumes on ``PaymentMethodChanged``. Redelivered and replayed
requests create nothing twice.

Every run uses a unique consumer group, unique source topics and unique Order ids, so suites share
one stack. The worker builder here is also the kill -9 test's subprocess worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from adapters.db import create_pool, migrate, seed_id_mappings
from adapters.freebit import HttpFreebit
from adapters.http import build_client
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from adapters.saga_store import PgSagaStore, SagaRecord
from adapters.salesforce import HttpSalesforce, OrderWithItems, PasswordAuth
from adapters.salesforce.http import ORDERS_WITH_ITEMS_SOQL
from adapters.whmcs import HttpWhmcs
from events.base import DomainEvent, decode_event, to_envelope
from events.billing import PaymentMethodChanged
from events.envelope import Envelope, from_record
from events.fulfillment import OrderActivationStarted, OrderFulfilled, UpdateSalesforceRecord
from events.salesforce import OrderActivationRequested, OrderChanged, OrderSnapshot, SimActivationRequested
from events.topics import DAY_MS, Topic, TopicSpec, catalog, group_topics
from sandbox import demo_data
from sandbox.freebit import FreebitSandbox
from sandbox.salesforce import SalesforceSandbox, soql
from sandbox.salesforce.org import AGENT
from sandbox.whmcs import WhmcsSandbox
from schemas.salesforce_api import OrderItemRecord, OrderRecord
from tests.contracts.support import Served, serving
from tests.support import eventually
from workers.config import (
    FreebitSettings,
    FulfillmentSettings,
    KafkaSettings,
    PostgresSettings,
    RuntimeSettings,
    Settings,
)
from workers.dlq.reader import partitions_of
from workers.fulfillment.route import bind_fulfillment
from workers.fulfillment.run import StepHook
from workers.ingress.cdc_translate import order_snapshot
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.route import Route
from workers.runtime.worker import Worker

pytestmark = pytest.mark.e2e

EID = "89049032000001000000000000000077"
CONFIG_ENV = "FLEET_E2E_FULFILLMENT_WORKER"  # the kill test hands the subprocess its config in this


# --- the worker, as a subprocess can build it too ----------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str
    dsn: str
    group: str
    order_topic: str
    billing_topic: str
    salesforce_url: str
    whmcs_url: str
    freebit_url: str
    outcome_topic: str = ""
    writeback_topic: str = ""
    tiers_ms: tuple[int, ...] = (300, 1000)
    max_wait_s: int = 60
    #: a parked order's pay-method re-checks (production: 10 min, 30 min, ...)
    payment_recheck_s: tuple[float, ...] = (2.0,)
    #: set: the worker is a static member of its group (``group.instance.id``), so a restarted worker
    #: takes a killed one's place at once instead of after the dead member's session (the kill test)
    instance_id: str = ""

    def output_topics(self) -> dict[Topic, str]:
        """The test's own output topics: its commands must never reach the fleet's real groups."""
        return {Topic.FULFILLMENT_OUTCOME: self.outcome_topic, Topic.SF_WRITEBACK: self.writeback_topic}

    def settings(self) -> Settings:
        return Settings(
            kafka=KafkaSettings(bootstrap=self.bootstrap, session_timeout_ms=6_000),
            postgres=PostgresSettings(dsn=SecretStr(self.dsn)),
            freebit=FreebitSettings(base_url=f"{self.freebit_url}/emptool/api", confirm_max_wait_s=self.max_wait_s),
            fulfillment=FulfillmentSettings(payment_recheck_s=list(self.payment_recheck_s), timer_interval_s=0.2),
            runtime=RuntimeSettings(
                retry_tier_delays_ms=list(self.tiers_ms),
                in_place_attempts=2,
                backoff_initial_s=0.05,
                backoff_max_s=0.2,
                shutdown_grace_s=3.0,
            ),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        raw = json.loads(text)
        return cls(**{**raw, "tiers_ms": tuple(raw["tiers_ms"]), "payment_recheck_s": tuple(raw["payment_recheck_s"])})


async def run_worker(cfg: WorkerConfig, stop: asyncio.Event, *, hook: StepHook | None = None) -> None:
    """Build the fulfillment route like the composition root would, and run it until ``stop``."""
    settings = cfg.settings()
    pool = await create_pool(cfg.dsn, min_size=1, max_size=6)
    http = build_client(2.0, 5.0, 20)
    aioproducer = durable_producer(cfg.bootstrap, f"e2e-{cfg.group}")
    await aioproducer.start()
    try:
        auth = PasswordAuth(http, cfg.salesforce_url, "fleet-connected-app", "sandbox-client-secret",
                            "integration@fleet.example", "sandbox-password")  # fmt: skip
        handlers = bind_fulfillment(
            salesforce=HttpSalesforce(http, auth, "60.0", "fulfillment-fleet"),
            whmcs=HttpWhmcs(http, f"{cfg.whmcs_url}/includes/api.php", "fleet-api", "sandbox-whmcs-secret"),
            freebit=HttpFreebit(http, f"{cfg.freebit_url}/emptool/api", "PASI", "sandbox-oem-key"),
            producer=AiokafkaProducer(aioproducer),
            settings=settings,
            pool=pool,
            group=cfg.group,
            hook=hook,
            output_topics=cfg.output_topics(),
        )
        route = Route(name="fulfillment", group=cfg.group, topics=(cfg.order_topic, cfg.billing_topic),
                      handlers=handlers, retry_delays_ms=cfg.tiers_ms)  # fmt: skip
        static = {"group_instance_id": cfg.instance_id} if cfg.instance_id else {}
        consumer = build_consumer(settings.kafka, cfg.group, **static)
        worker = Worker(route, consumer, AiokafkaProducer(aioproducer), settings.runtime, pool=pool,
                        partitions_for=partition_counter(aioproducer))  # fmt: skip
        await worker.run(stop)
    finally:
        await aioproducer.stop()
        await http.aclose()
        await pool.close()


# --- the world: sandboxes, topics, a producer, and views of the outcome -----------------------------


def unique_order_id() -> str:
    return demo_data.sf_id("801", int(uuid.uuid4().int % 900_000) + 100_000)


@contextmanager
def env_removed(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class World:
    def __init__(self, env: dict[str, str], sf: Served, whmcs: Served, freebit: Served, tag: str) -> None:
        assert isinstance(sf.sandbox, SalesforceSandbox)
        assert isinstance(whmcs.sandbox, WhmcsSandbox)
        assert isinstance(freebit.sandbox, FreebitSandbox)
        self.env, self.tag = env, tag
        self.salesforce: SalesforceSandbox = sf.sandbox
        self.whmcs: WhmcsSandbox = whmcs.sandbox
        self.freebit: FreebitSandbox = freebit.sandbox
        self.cfg = WorkerConfig(
            bootstrap=env["KAFKA_BOOTSTRAP"], dsn=env["DATABASE_URL"], group=f"fleet.fulfillment.e2e-{tag}",
            order_topic=f"e2e.{tag}.sf.order.v1", billing_topic=f"e2e.{tag}.whmcs.billing.v1",
            outcome_topic=f"e2e.{tag}.fulfillment.outcome.v1", writeback_topic=f"e2e.{tag}.sf.writeback.v1",
            salesforce_url=self.salesforce.url, whmcs_url=whmcs.base_url, freebit_url=freebit.base_url,
        )  # fmt: skip
        self.store: PgSagaStore | None = None
        self.producer: AiokafkaProducer | None = None
        self.tap = OutputTap(env["KAFKA_BOOTSTRAP"], [self.cfg.outcome_topic, self.cfg.writeback_topic])

    async def prepare(self) -> None:
        await migrate(self.cfg.dsn)
        pool = await create_pool(self.cfg.dsn, min_size=1, max_size=4)
        await seed_id_mappings(pool, demo_data.id_mappings())
        self.store = PgSagaStore(pool)
        own = (self.cfg.order_topic, self.cfg.billing_topic, self.cfg.outcome_topic, self.cfg.writeback_topic)
        specs = [TopicSpec(t, 2, DAY_MS) for t in own]
        await ensure_topics(self.cfg.bootstrap, [*catalog(), *specs, *group_topics(self.cfg.group, 2)])
        aioproducer = durable_producer(self.cfg.bootstrap, f"e2e-test-{self.tag}")
        await aioproducer.start()
        self.producer = AiokafkaProducer(aioproducer)
        self._aioproducer = aioproducer
        await self.tap.start()

    async def close(self) -> None:
        await self.tap.stop()
        await self._aioproducer.stop()
        if self.store is not None:
            await self.store._pool.close()

    # --- arranging ---------------------------------------------------------------------------
    def place_order(self, customer: str, order_type: str, skus: list[str], **fields: Any) -> tuple[str, list[str]]:
        """An Order with a fresh, unique id (the sandbox counter restarts every run; the stack does not)."""
        store, order_id = self.salesforce.store, unique_order_id()
        account = next(c["sf_account_id"] for c in demo_data.CUSTOMERS if c["key"] == customer)
        with self.salesforce.org.transaction(AGENT) as tx:
            tx.create("Order", {"Id": order_id, "AccountId": account, "Status": "Processed", "Type": order_type,
                                "EffectiveDate": "2026-03-10", "Pricebook2Id": demo_data.PORTAL_PRICEBOOK_ID,
                                "Activation_Status__c": "Activating", **fields})  # fmt: skip
            items = []
            for sku in skus:
                product = next(p for p in store.rows("Product2") if p["StockKeepingUnit"] == sku)
                entry = next(e for e in store.rows("PricebookEntry") if e["Product2Id"] == product["Id"])
                line = {"OrderId": order_id, "Product2Id": product["Id"], "Quantity": 1,
                        "PricebookEntryId": entry["Id"], "UnitPrice": entry["UnitPrice"]}  # fmt: skip
                items.append(tx.create("OrderItem", line)["Id"])
        return order_id, items

    async def request(
        self, order_id: str, *, event_id: str | None = None, snapshot: OrderSnapshot | None = None
    ) -> Envelope:
        return await self.publish(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot), event_id)

    async def publish(self, event: DomainEvent, event_id: str | None = None) -> Envelope:
        """What sf-cdc would publish on the order topic."""
        envelope = to_envelope(event, source="/e2e/sf-cdc", **({"id": event_id} if event_id else {}))
        assert self.producer is not None
        await self.producer.publish(self.cfg.order_topic, envelope)
        return envelope

    async def outcomes(self, order_id: str, *, at_least: int = 1) -> list[DomainEvent]:
        """How the order's deliveries ended (fulfilled, parked, failed), without the
        ``OrderActivationStarted`` notes, once ``at_least`` arrived."""

        def ending(event: DomainEvent) -> bool:
            return not isinstance(event, OrderActivationStarted)

        return await self.published(Topic.FULFILLMENT_OUTCOME, order_id, at_least=at_least, where=ending)

    def card(self, card_id: str) -> dict[str, Any]:
        """A SIM_Inventory__c record of the Salesforce sandbox."""
        found = self.salesforce.store.get("SIM_Inventory__c", card_id)
        assert found is not None, card_id
        return found

    async def payment_method_changed(self, client_id: int) -> None:
        assert self.producer is not None
        envelope = to_envelope(PaymentMethodChanged(whmcs_client_id=client_id), source="/e2e/whmcs")
        await self.producer.publish(self.cfg.billing_topic, envelope)

    # --- observing ---------------------------------------------------------------------------
    async def record(self, order_id: str) -> SagaRecord | None:
        assert self.store is not None
        return await self.store.get(order_id)

    async def reaches(self, order_id: str, state: str, timeout: float = 45.0) -> SagaRecord:
        async def check() -> SagaRecord | None:
            record = await self.record(order_id)
            return record if record is not None and record.order.state == state else None

        found: SagaRecord = await eventually(check, timeout, f"order {order_id} {state}")
        return found

    def snapshot(self, order_id: str) -> OrderSnapshot:
        """What sf-cdc attaches: the bulk read's query run on the sandbox's records directly (so the
        request log shows only the worker's own calls), translated by ``cdc_translate``."""
        text = ORDERS_WITH_ITEMS_SOQL.format(ids=f"'{order_id}'")
        (row,) = soql.run(self.salesforce.store, soql.parse(text), api_version="60.0")
        items = [OrderItemRecord.model_validate(r) for r in row["OrderItems"]["records"]]
        return order_snapshot(OrderWithItems(OrderRecord.model_validate(row), items), datetime.now(UTC))

    def whmcs_orders(self, order_id: str) -> list[Any]:
        assert isinstance(self.whmcs, WhmcsSandbox)
        return [o for o in self.whmcs.world.orders.values() if f"sfOrderId={order_id}" in o.notes]

    def freebit_accounts(self, number: str) -> list[Any]:
        assert isinstance(self.freebit, FreebitSandbox)
        return [a for a in self.freebit.accounts.values() if a.account == number]

    async def published(
        self,
        topic: str,
        key: str,
        *,
        at_least: int = 1,
        settle_s: float = 0.3,
        where: Callable[[DomainEvent], bool] = lambda _event: True,
    ) -> list[DomainEvent]:
        """The events on ``topic`` keyed ``key`` that ``where`` keeps, once ``at_least`` arrived and
        ``settle_s`` passed without more (so an "exactly one" assertion would see a duplicate)."""
        topic = self.cfg.output_topics().get(Topic(topic), topic) if topic in set(Topic) else topic

        def kept() -> list[DomainEvent]:
            return [event for event in map(decode_event, self.tap.on(topic, key)) if where(event)]

        await eventually(lambda: _async(len(kept()) >= at_least), 20, f"{topic} records of {key}")
        await asyncio.sleep(settle_s)
        return kept()


class OutputTap:
    """Reads the test's output topics from their end at start-up, in the background (callers filter by key)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.records: list[tuple[str, Envelope]] = []
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        partitions = [TopicPartition(t, p) for t in self.topics for p in await partitions_of(self.bootstrap, t)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before the test produces anything
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                self.records += [(r.topic, from_record(r.key, r.value, r.headers)) for r in records]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def on(self, topic: str, key: str) -> list[Envelope]:
        return [e for t, e in self.records if t == topic and e.key == key]


async def _async(value: Any) -> Any:
    return value


@asynccontextmanager
async def world_for(stack_env: dict[str, str], *, freebit_delay_s: float = 1.0) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:8]
    sf = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await sf.start()
    try:
        async with serving(WhmcsSandbox()) as whmcs, serving(FreebitSandbox(activation_delay_s=freebit_delay_s)) as fb:
            world = World(stack_env, Served(sf, sf.url), whmcs, fb, tag)
            await world.prepare()
            try:
                yield world
            finally:
                await world.close()
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:
    async with world_for(stack_env) as w:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(w.cfg, stop))
        try:
            yield w
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


# --- scenarios ------------------------------------------------------------------------------------------

ORDER_TYPES: dict[str, tuple[str, str, list[str], dict[str, Any]]] = {
    "internet": ("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE", "INT-HIKARI-DENWA"], {}),
    "vpn": ("suzuki", "VPN", ["VPN-TOKYO", "VPN-ACTIVATION"], {"VPN_Region__c": "Tokyo"}),
    "physical-sim-with-voice": (
        "suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"],
        {"SIM_Type__c": "Physical SIM", "SIM_Voice_Mail__c": True, "SIM_Call_Waiting__c": True},
    ),
    "esim": ("tanaka", "SIM", ["SIM-D-20GB", "SIM-ACTIVATION"], {"SIM_Type__c": "eSIM", "EID__c": EID}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ORDER_TYPES))
async def test_each_order_type_is_fulfilled_end_to_end(world: World, case: str) -> None:
    customer, order_type, skus, fields = ORDER_TYPES[case]
    order_id, items = world.place_order(customer, order_type, skus, **fields)
    await world.request(order_id)
    record = await world.reaches(order_id, "fulfilled")

    [whmcs_order] = world.whmcs_orders(order_id)
    assert whmcs_order.status == "Active" and len(whmcs_order.service_ids) == len(skus)
    assert record.order.whmcs_order_id == whmcs_order.id
    [outcome] = await world.outcomes(order_id)
    assert isinstance(outcome, OrderFulfilled) and outcome.whmcs_service_ids == whmcs_order.service_ids
    [update] = await world.published(Topic.SF_WRITEBACK, order_id)
    assert isinstance(update, UpdateSalesforceRecord)
    assert update.fields["Activation_Status__c"] == "Activated" and update.fields["WHMCS_Order_ID__c"] == str(
        whmcs_order.id
    )
    for item, service_id in zip(items, whmcs_order.service_ids, strict=True):
        [item_update] = await world.published(Topic.SF_WRITEBACK, item)
        assert isinstance(item_update, UpdateSalesforceRecord)
        assert item_update.fields == {"WHMCS_Service_ID__c": str(service_id)}

    if order_type == "SIM":
        assert record.order.sim_account is not None
        card = world.card(record.steps["sim_assign"].external_ids["card_id"])  # from the sandbox's inventory
        assert card["Phone_Number__c"] == record.order.sim_account
        assert card["SIM_Type__c"] == ("eSIM" if fields.get("SIM_Type__c") == "eSIM" else "Physical")
        [assigned] = await world.published(Topic.SF_WRITEBACK, card["Id"])
        assert isinstance(assigned, UpdateSalesforceRecord) and assigned.sobject == "SIM_Inventory__c"
        assert assigned.fields["Assigned_Order__c"] == order_id and assigned.fields["Status__c"] == "Assigned"
        [account] = world.freebit_accounts(record.order.sim_account)
        assert world.freebit.accounts and account.state(world.freebit.clock()) == "active"
        assert isinstance(world.whmcs, WhmcsSandbox)
        service = world.whmcs.world.services[whmcs_order.service_ids[0]]
        product = world.whmcs.world.products[service.pid]
        fields_by_name = {product.custom_fields[k]: v for k, v in service.customfields.items()}
        assert fields_by_name["SIM Number"] == account.account
        if fields.get("SIM_Type__c") == "eSIM":
            assert fields_by_name["EID"] == EID and account.eid == EID
        else:
            assert fields_by_name["Serial Number"] == account.product_number == card["Serial_Number__c"]
            assert account.voice_mail and account.call_waiting
        assert record.steps["sim_confirm"].attempts >= 1
    else:
        assert record.order.sim_account is None


async def test_a_request_carrying_a_snapshot_is_fulfilled_without_reading_salesforce(world: World) -> None:
    order_id, items = world.place_order("suzuki", "VPN", ["VPN-TOKYO", "VPN-ACTIVATION"], VPN_Region__c="Tokyo")
    await world.request(order_id, snapshot=world.snapshot(order_id))
    await world.reaches(order_id, "fulfilled")

    reads = [r for r in world.salesforce.requests if r.endpoint in ("sobjects.get", "query")]
    assert [r for r in reads if order_id in r.path or order_id in r.query.get("q", "")] == []
    [whmcs_order] = world.whmcs_orders(order_id)
    assert whmcs_order.status == "Active" and len(whmcs_order.service_ids) == len(items)


async def test_redelivered_and_replayed_requests_create_nothing_twice(world: World) -> None:
    order_id, _ = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    first = await world.request(order_id)
    await world.request(order_id, event_id=first.id)  # the same record again (redelivery)
    await world.reaches(order_id, "fulfilled")
    await world.request(order_id, event_id=first.id)  # a replay of it after fulfilment
    last = await world.request(order_id)  # a second CDC event for the same order
    await eventually(lambda: _history_has(world, order_id, last.id), 20, "the last request handled")

    assert len(world.whmcs_orders(order_id)) == 1
    assert len(await world.outcomes(order_id)) == 1


async def _history_has(world: World, order_id: str, event_id: str) -> bool:
    assert world.store is not None
    return any(h.detail.get("event_id") == event_id for h in await world.store.history(order_id))


async def test_a_parked_order_resumes_when_the_client_adds_a_payment_method(world: World) -> None:
    order_id, _ = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])
    await world.request(order_id)
    record = await world.reaches(order_id, "parked")
    assert record.order.error_code == "PAYMENT_METHOD_MISSING" and world.whmcs_orders(order_id) == []
    [update] = await world.published(Topic.SF_WRITEBACK, order_id)
    assert isinstance(update, UpdateSalesforceRecord)
    assert update.fields["Activation_Error_Code__c"] == "PAYMENT_METHOD_MISSING"

    async with httpx.AsyncClient(base_url=world.cfg.whmcs_url) as control:
        added = await control.post("/_sandbox/paymethods", json={"clientid": 1003, "type": "CreditCard"})
        assert added.status_code == 201
    await world.payment_method_changed(1003)
    await world.reaches(order_id, "fulfilled")
    assert len(world.whmcs_orders(order_id)) == 1


async def test_an_unmapped_account_fails_with_its_code(world: World) -> None:
    order_id, _ = world.place_order("yamada", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    record = await world.reaches(order_id, "failed")
    assert record.order.error_code == "WHMCS_CLIENT_NOT_MAPPED"
    [update] = await world.published(Topic.SF_WRITEBACK, order_id)
    assert isinstance(update, UpdateSalesforceRecord)
    assert update.fields["Activation_Error_Code__c"] == "WHMCS_CLIENT_NOT_MAPPED"


async def test_a_sim_order_is_billed_on_approval_and_registered_once_an_agent_sets_processed(world: World) -> None:
    """Activating with Status = Approved: WHMCS AddOrder/AcceptOrder, then a quiet park (no error on
    the Order, no card taken, Freebit never called). The agent's Processed (SimActivationRequested)
    takes a card from the inventory and registers it."""
    order_id, _ = world.place_order("suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"],
                                    SIM_Type__c="Physical SIM", Status="Approved")  # fmt: skip
    await world.publish(OrderActivationRequested(sf_order_id=order_id, status="Approved"))
    record = await world.reaches(order_id, "parked")
    assert record.order.error_code == "AWAITING_PROCESSED" and record.order.sim_account is None
    assert [o.status for o in world.whmcs_orders(order_id)] == ["Active"]
    assert "sim_assign" not in record.steps  # never attempted: no card taken
    await asyncio.sleep(0.5)
    assert world.tap.on(world.cfg.writeback_topic, order_id) == []  # a wait, not an error: nothing written

    with world.salesforce.org.transaction(AGENT) as tx:
        tx.update("Order", order_id, {"Status": "Processed"})
    await world.publish(SimActivationRequested(sf_order_id=order_id, sim_type="Physical SIM", status="Processed"))
    record = await world.reaches(order_id, "fulfilled")
    assert record.order.sim_account is not None
    [account] = world.freebit_accounts(record.order.sim_account)
    card = world.card(record.steps["sim_assign"].external_ids["card_id"])
    assert (account.account, account.product_number) == (card["Phone_Number__c"], card["Serial_Number__c"])
    assert len(world.whmcs_orders(order_id)) == 1


async def test_an_empty_sim_inventory_fails_the_order_with_its_code_and_registers_nothing(
    stack_env: dict[str, str],
) -> None:
    """Every physical card taken (Status__c = Assigned in the sandbox): SIM_INVENTORY_EMPTY on the
    Order with Status back to Approved, and no registration reaches Freebit."""
    async with world_for(stack_env) as world:
        with world.salesforce.org.transaction(AGENT) as tx:
            for card in list(world.salesforce.store.rows("SIM_Inventory__c")):
                if card["SIM_Type__c"] == "Physical":
                    tx.update("SIM_Inventory__c", card["Id"], {"Status__c": "Assigned"})
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(world.cfg, stop))
        try:
            order_id, _ = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
            await world.request(order_id)
            record = await world.reaches(order_id, "failed")
            assert record.order.error_code == "SIM_INVENTORY_EMPTY"
            [update] = await world.published(Topic.SF_WRITEBACK, order_id)
            assert isinstance(update, UpdateSalesforceRecord)
            assert update.fields["Activation_Error_Code__c"] == "SIM_INVENTORY_EMPTY"
            assert update.fields["Status"] == "Approved"
            assert [r for r in world.freebit.requests if r.endpoint in ("master/addAcnt", "mvno/esim/addAcnt")] == []
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def _japan_day(days: int) -> str:
    return (datetime.now(UTC) + timedelta(hours=9, days=days)).date().isoformat()


async def test_a_ported_number_reaches_freebit_with_its_mnp_reservation(world: World) -> None:
    """The ported number is the Freebit account, registered with the reservation; the card from the
    inventory still gives the serial."""
    number = f"090{uuid.uuid4().int % 10**8:08d}"
    order_id, _ = world.place_order("suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"], SIM_Type__c="Physical SIM",
                                    MNP_Reservation_Number__c="4567890123", MNP_Expiry_Date__c=_japan_day(7),
                                    MNP_Phone_Number__c=number)  # fmt: skip
    await world.request(order_id)
    record = await world.reaches(order_id, "fulfilled")
    assert record.order.sim_account == number
    [account] = world.freebit_accounts(number)
    card = world.card(record.steps["sim_assign"].external_ids["card_id"])
    assert (account.mnp_reserve_number, account.product_number) == ("4567890123", card["Serial_Number__c"])


async def test_an_expired_mnp_reservation_fails_the_order_and_freebit_never_hears_of_it(world: World) -> None:
    number = f"090{uuid.uuid4().int % 10**8:08d}"
    order_id, _ = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM",
                                    MNP_Reservation_Number__c="4567890123", MNP_Expiry_Date__c=_japan_day(-1),
                                    MNP_Phone_Number__c=number)  # fmt: skip
    await world.request(order_id)
    record = await world.reaches(order_id, "failed")
    assert record.order.error_code == "MNP_RESERVATION_EXPIRED"
    assert world.freebit_accounts(number) == []
    assert not [r for r in world.freebit.requests if number in r.body]


async def test_an_order_from_an_opportunity_is_linked_both_ways(world: World) -> None:
    with world.salesforce.org.transaction(AGENT) as tx:
        opportunity = tx.create("Opportunity", {"Name": "Tanaka Home 1G", "StageName": "Ready",
                                                "AccountId": demo_data.CUSTOMERS[0]["sf_account_id"]})  # fmt: skip
    order_id, _ = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"],
                                    OpportunityId=opportunity["Id"])  # fmt: skip
    await world.request(order_id)
    await world.reaches(order_id, "fulfilled")
    [whmcs_order] = world.whmcs_orders(order_id)
    service = world.whmcs.world.services[whmcs_order.service_ids[0]]
    product = world.whmcs.world.products[service.pid]
    fields_by_name = {product.custom_fields[k]: v for k, v in service.customfields.items()}
    assert fields_by_name["OpportunityId"] == opportunity["Id"]
    [link] = await world.published(Topic.SF_WRITEBACK, opportunity["Id"])
    assert isinstance(link, UpdateSalesforceRecord) and link.sobject == "Opportunity"
    assert link.fields == {"WHMCS_Service_ID__c": str(whmcs_order.service_ids[0])}


async def test_a_scheduled_activation_waits_on_a_durable_timer_then_runs(world: World) -> None:
    """Activation_Type__c = Scheduled: the order waits in state scheduled (no WHMCS order, no retry
    hops) until Activation_Scheduled_At__c, when the worker's timer loop resumes it."""
    at = datetime.now(UTC) + timedelta(seconds=4)
    scheduled = {
        "Activation_Type__c": "Scheduled",
        "Activation_Scheduled_At__c": at.isoformat(),
        "VPN_Region__c": "Tokyo",
    }
    order_id, _ = world.place_order("suzuki", "VPN", ["VPN-TOKYO", "VPN-ACTIVATION"], **scheduled)
    await world.request(order_id)
    await world.reaches(order_id, "scheduled", timeout=10)
    assert world.store is not None
    timer = await world.store.timer(order_id)
    assert timer is not None and timer.reason == "scheduled" and abs((timer.due_at - at).total_seconds()) < 0.01
    assert world.whmcs_orders(order_id) == []
    await world.reaches(order_id, "fulfilled", timeout=30)
    assert datetime.now(UTC) >= at and len(world.whmcs_orders(order_id)) == 1
    assert await world.store.timer(order_id) is None


async def test_a_date_moved_in_salesforce_moves_the_scheduled_activation(world: World) -> None:
    """Scheduled an hour ahead; staff move the date to a few seconds from now: the OrderChanged sf-cdc
    publishes for ``Activation_Scheduled_At__c`` moves the timer, and the order activates then."""
    far = datetime.now(UTC) + timedelta(hours=1)
    scheduled = {"Activation_Type__c": "Scheduled", "Activation_Scheduled_At__c": far.isoformat()}
    order_id, _ = world.place_order("tanaka", "VPN", ["VPN-TOKYO"], **scheduled)
    await world.request(order_id)
    await world.reaches(order_id, "scheduled", timeout=10)
    soon = datetime.now(UTC) + timedelta(seconds=3)
    with world.salesforce.org.transaction(AGENT) as tx:
        tx.update("Order", order_id, {"Activation_Scheduled_At__c": soon.isoformat()})
    await world.publish(OrderChanged(sf_order_id=order_id, changed_fields=["Activation_Scheduled_At__c"]))
    assert world.store is not None
    await eventually(lambda: _timer_due_before(world, order_id, far), 10, "the timer moved")
    await world.reaches(order_id, "fulfilled", timeout=30)
    assert datetime.now(UTC) >= soon and len(world.whmcs_orders(order_id)) == 1


async def _timer_due_before(world: World, order_id: str, moment: datetime) -> bool:
    assert world.store is not None
    timer = await world.store.timer(order_id)
    return timer is None or timer.due_at < moment


async def test_a_parked_order_resumes_on_its_recheck_when_a_bank_account_is_added_without_any_hook(
    world: World,
) -> None:
    """Production WHMCS fires no hook for a bank account: the parked order's timer re-checks
    GetPayMethods and the order goes on, with no PaymentMethodChanged at all."""
    async with httpx.AsyncClient(base_url=world.cfg.whmcs_url) as control:
        state = (await control.get("/_sandbox/state")).json()
        client = next(c for c in state["clients"] if c["id"] == 1003)
        for method in client.get("paymethods", []):  # an earlier test may have given sato a card
            await control.delete(f"/_sandbox/paymethods/{method['id']}")
        order_id, _ = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])
        await world.request(order_id)
        await world.reaches(order_id, "parked")
        assert world.store is not None
        timer = await world.store.timer(order_id)
        assert timer is not None and timer.reason == "payment_recheck"
        added = await control.post("/_sandbox/paymethods", json={"clientid": 1003, "type": "BankAccount"})
        assert added.status_code == 201
    await world.reaches(order_id, "fulfilled", timeout=30)
    assert len(world.whmcs_orders(order_id)) == 1 and await world.store.timer(order_id) is None
