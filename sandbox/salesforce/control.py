"""The Salesforce sandbox's own control API under ``/_sandbox/`` (never logged, never faulted).

What a test or ``make run`` needs to play the parts Salesforce users and the platform play:
seed orders as the portal would, approve an order as an agent (the record-triggered Flow runs in
the same transaction), edit records in the "UI", expire every token, spend the API budget, make
chosen records fail in DML, bend the event stream (gap, overflow, merged, duplicate,
out-of-order, platform events, dropped CometD clients), bend the Pub/Sub API's gRPC streams
(``/_sandbox/pubsub``: streams, faults, schema evolution) and arrange the SIM inventory
(``/_sandbox/sim-inventory``: list, add, clear). Every record change goes through an org
transaction, so it emits its change event like any other write (``SIM_Inventory__c`` has no CDC
channel, so its writes emit none; clearing the inventory removes its records outright).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sandbox import demo_data
from sandbox.salesforce.cometd import BayeuxServer
from sandbox.salesforce.events import PLATFORM_CHANNEL, channel_for
from sandbox.salesforce.oauth import TokenIssuer
from sandbox.salesforce.org import AGENT, Actor, Org, RecordMissing, api_actor
from sandbox.salesforce.pubsub import FAULTS, PubSubServer, unavailable
from sandbox.salesforce.pubsub_avro import KINDS
from sandbox.salesforce.rest import ApiLimits, RecordFaults
from sandbox.salesforce.store import FIELDS, FieldProblem, Store

#: orders are placed by the portal's BFF through the API unless a seed says otherwise
PORTAL_CLIENT = "customer-portal"
SIM_INVENTORY = "SIM_Inventory__c"
_SEED_KEYS = frozenset({"customer", "lines", "client", "opportunity"})
#: ``POST /_sandbox/pubsub/faults`` kinds: the server's own plus the two that live elsewhere
PUBSUB_FAULTS = (*FAULTS, "auth_expiry", "duplicate")


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


class ControlApi:
    def __init__(self, org: Org, tokens: TokenIssuer, limits: ApiLimits, faults: RecordFaults,
                 cometd: BayeuxServer, api_version: str, *, pubsub: PubSubServer | None = None) -> None:  # fmt: skip
        self.org = org
        self.tokens = tokens
        self.limits = limits
        self.faults = faults
        self.cometd = cometd
        self.api_version = api_version
        self.pubsub = pubsub

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/_sandbox/expire-tokens", self.expire_tokens)
        r.add_post("/_sandbox/api-usage", self.api_usage)
        r.add_post("/_sandbox/record-faults", self.add_record_fault)
        r.add_delete("/_sandbox/record-faults", self.clear_record_faults)
        r.add_post("/_sandbox/orders/{order_id}/approve", self.approve)
        r.add_get("/_sandbox/records/{sobject}/{record_id}", self.read_record)
        r.add_patch("/_sandbox/records/{sobject}/{record_id}", self.agent_edit)
        r.add_get("/_sandbox/events", self.list_events)
        r.add_post("/_sandbox/events/gap", self.gap_event)
        r.add_post("/_sandbox/events/overflow", self.overflow_event)
        r.add_post("/_sandbox/events/merged", self.merged_event)
        r.add_post("/_sandbox/events/duplicate", self.duplicate_event)
        r.add_post("/_sandbox/events/out-of-order", self.out_of_order)
        r.add_post("/_sandbox/events/platform", self.platform_event)
        r.add_post("/_sandbox/drop-connections", self.drop_connections)
        r.add_get("/_sandbox/sim-inventory", self.list_sim_cards)
        r.add_post("/_sandbox/sim-inventory", self.add_sim_cards)
        r.add_delete("/_sandbox/sim-inventory", self.clear_sim_cards)
        if self.pubsub is not None:
            r.add_get("/_sandbox/pubsub", self.pubsub_summary)
            r.add_post("/_sandbox/pubsub/faults", self.pubsub_fault)
            r.add_delete("/_sandbox/pubsub/faults", self.clear_pubsub_faults)
            r.add_post("/_sandbox/pubsub/schemas", self.evolve_schema)

    @property
    def store(self) -> Store:
        return self.org.store

    # --- seeding ------------------------------------------------------------------------------
    def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"products": [...], "orders": [{"customer", "Type", "lines": [sku | {...}], ...}]}``."""
        created: dict[str, Any] = {}
        if body.get("products"):
            created["products"] = [self._seed_product(spec) for spec in body["products"]]
        if body.get("orders"):
            created["orders"] = [self._seed_order(spec) for spec in body["orders"]]
        return created

    def _seed_product(self, spec: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in spec.items() if k != "UnitPrice"}
        Store.check_writable("Product2", fields)
        with self.org.transaction(AGENT) as tx:
            product = tx.create("Product2", fields)
            entry_fields = {"Pricebook2Id": demo_data.PORTAL_PRICEBOOK_ID, "Product2Id": product["Id"],
                            "UnitPrice": spec.get("UnitPrice", 0), "IsActive": True}  # fmt: skip
            entry = tx.create("PricebookEntry", entry_fields)
        return {"id": product["Id"], "pricebook_entry_id": entry["Id"]}

    def _seed_order(self, spec: dict[str, Any]) -> dict[str, Any]:
        order_fields = self._order_fields(spec)
        lines = [self._line_fields(line) for line in spec.get("lines", [])]
        client = spec.get("client", PORTAL_CLIENT)
        actor = api_actor(self.api_version, f"client={client}") if client else AGENT
        with self.org.transaction(actor) as tx:
            if "OpportunityId" not in order_fields and spec.get("opportunity", True):
                # the portal's checkout converts the customer's Opportunity ("Ready") into the Order
                opportunity = {"Name": f"{order_fields.get('Type') or 'Order'} for {order_fields['AccountId']}",
                               "AccountId": order_fields["AccountId"], "StageName": "Ready",
                               "CloseDate": order_fields["EffectiveDate"]}  # fmt: skip
                order_fields["OpportunityId"] = tx.create("Opportunity", opportunity)["Id"]
            order = tx.create("Order", order_fields)
            items = [tx.create("OrderItem", {**line, "OrderId": order["Id"]}) for line in lines]
        return {
            "id": order["Id"],
            "OrderNumber": order["OrderNumber"],
            "AccountId": order["AccountId"],
            "OpportunityId": order["OpportunityId"],
            "items": [
                {"id": i["Id"], "Product2Id": i["Product2Id"], "PricebookEntryId": i["PricebookEntryId"]} for i in items
            ],  # fmt: skip
        }

    def _order_fields(self, spec: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in spec.items() if k not in _SEED_KEYS}
        Store.check_writable("Order", extra)
        account_id = extra.pop("AccountId", None) or _account_id(spec.get("customer", "tanaka"))
        account = self.store.get("Account", account_id)
        if account is None:
            raise FieldProblem("INVALID_CROSS_REFERENCE_KEY", f"no Account {account_id}", ["AccountId"])
        billing = {k: account[k] for k in account if k.startswith("Billing")}
        defaults = {"Status": "Pending Review", "EffectiveDate": datetime.now(UTC).date().isoformat(),
                    "Pricebook2Id": demo_data.PORTAL_PRICEBOOK_ID, "Activation_Type__c": "Immediate"}  # fmt: skip
        return {**defaults, **billing, **extra, "AccountId": account_id}

    def _line_fields(self, line: str | dict[str, Any]) -> dict[str, Any]:
        spec = {"sku": line} if isinstance(line, str) else dict(line)
        sku = spec.pop("sku", None)
        product = next((p for p in self.store.rows("Product2") if p["StockKeepingUnit"] == sku), None)
        if product is None:
            raise FieldProblem("INVALID_CROSS_REFERENCE_KEY", f"no Product2 with SKU {sku!r}", ["Product2Id"])
        entry = next(e for e in self.store.rows("PricebookEntry") if e["Product2Id"] == product["Id"])
        Store.check_writable("OrderItem", spec)
        defaults = {"Quantity": 1, "UnitPrice": entry["UnitPrice"], "Billing_Cycle__c": product["Billing_Cycle__c"]}
        return {**defaults, **spec, "Product2Id": product["Id"], "PricebookEntryId": entry["Id"]}

    # --- record changes as agents and Flows make them -----------------------------------------
    async def approve(self, request: web.Request) -> web.Response:
        """An agent sets ``Status``; the record-triggered Flow sets ``Activation_Status__c`` and clears
        the error fields in the same transaction, so ONE change event carries both (unless
        ``separate_transactions``). Body: ``status`` (default Approved; Processed for SIM),
        ``activation_status`` (default Activating; null = the Flow does nothing)."""
        body = await _body(request)
        order_id = request.match_info["order_id"]
        flow = {"Activation_Error_Code__c": None, "Activation_Error_Message__c": None}
        if body.get("activation_status", "Activating") is not None:
            flow["Activation_Status__c"] = body.get("activation_status", "Activating")
        steps = [{"Status": body.get("status", "Approved")}, flow]
        if not body.get("separate_transactions"):
            steps = [{**steps[0], **flow}]
        try:
            for fields in steps:
                with self.org.transaction(AGENT) as tx:
                    tx.update("Order", order_id, fields)
        except RecordMissing as missing:
            return web.json_response({"error": str(missing)}, status=404)
        return web.json_response(self.store.get("Order", order_id))

    async def read_record(self, request: web.Request) -> web.Response:
        record = self.store.get(request.match_info["sobject"], request.match_info["record_id"])
        return web.json_response(record) if record else web.json_response({"error": "no such record"}, status=404)

    async def agent_edit(self, request: web.Request) -> web.Response:
        """A UI edit: changeOrigin empty, commitUser an agent. ``?client=x`` makes it an API write instead."""
        sobject, record_id = request.match_info["sobject"], request.match_info["record_id"]
        client = request.query.get("client")
        actor = api_actor(self.api_version, f"client={client}") if client else AGENT
        return self._write(actor, sobject, record_id, await _body(request))

    def _write(self, actor: Actor, sobject: str, record_id: str, fields: dict[str, Any]) -> web.Response:
        if sobject not in FIELDS:
            return _bad(f"unknown sObject {sobject}")
        try:
            Store.check_writable(sobject, fields)
            with self.org.transaction(actor) as tx:
                tx.update(sobject, record_id, fields)
        except FieldProblem as problem:
            return web.json_response(problem.entry, status=400)
        except RecordMissing as missing:
            return web.json_response({"error": str(missing)}, status=404)
        return web.json_response(self.store.get(sobject, record_id))

    # --- SIM inventory ------------------------------------------------------------------------
    async def list_sim_cards(self, request: web.Request) -> web.Response:
        """Every ``SIM_Inventory__c`` record with every field, by Name; ``?status=`` / ``?sim_type=``
        / ``?assigned_order=`` keep only cards with that ``Status__c`` / ``SIM_Type__c`` /
        ``Assigned_Order__c``."""
        filters = {"Status__c": "status", "SIM_Type__c": "sim_type", "Assigned_Order__c": "assigned_order"}
        wanted = {name: request.query[key] for name, key in filters.items() if key in request.query}
        cards = [c for c in self.store.rows(SIM_INVENTORY) if all(c[k] == v for k, v in wanted.items())]
        return web.json_response(sorted(cards, key=lambda c: str(c["Name"])))

    async def add_sim_cards(self, request: web.Request) -> web.Response:
        """``{"clear": true, "cards": [{"Name": "SIM-900001", "Phone_Number__c": ..., ...}]}``: remove
        every card first when ``clear``, then create the cards (``Status__c`` defaults to Available,
        ``SIM_Type__c`` to Physical). Answers 201 with the created records."""
        body = await _body(request)
        cards = body.get("cards", [])
        if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
            return _bad("cards must be a list of SIM_Inventory__c field objects")
        try:
            for card in cards:
                Store.check_writable(SIM_INVENTORY, card)
        except FieldProblem as problem:
            return web.json_response(problem.entry, status=400)
        removed = self._clear_sim_cards() if body.get("clear") else 0
        defaults = {"Status__c": "Available", "SIM_Type__c": "Physical"}
        with self.org.transaction(AGENT) as tx:
            created = [tx.create(SIM_INVENTORY, {**defaults, **card}) for card in cards]
        return web.json_response({"removed": removed, "cards": created}, status=201)

    async def clear_sim_cards(self, _request: web.Request) -> web.Response:
        """Remove every card: the inventory is empty until cards are added (or ``/_sandbox/reset``)."""
        return web.json_response({"removed": self._clear_sim_cards()})

    def _clear_sim_cards(self) -> int:
        cards = self.store.records[SIM_INVENTORY]
        removed = len(cards)
        cards.clear()
        return removed

    # --- stream shaping -----------------------------------------------------------------------
    async def list_events(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel", "/data/OrderChangeEvent")
        return web.json_response(self.org.bus.retained(channel, after=int(request.query.get("after", "0"))))

    async def gap_event(self, request: web.Request) -> web.Response:
        """``{"entity", "record_ids", "change_type": "GAP_UPDATE", "fields": {...}}``: the fields (if any)
        change silently, as a database-level change would, and only a header-only event says so."""
        body = await _body(request)
        entity, ids = str(body.get("entity", "Order")), [str(i) for i in body.get("record_ids", [])]
        for record_id in ids if body.get("fields") else []:
            self.store.apply(entity, record_id, dict(body["fields"]), user=AGENT.user_id, now=self.org.clock())
        return self._header_only(entity, ids, str(body.get("change_type", "GAP_UPDATE")))

    async def overflow_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return self._header_only(str(body.get("entity", "Order")), [], "GAP_OVERFLOW")

    def _header_only(self, entity: str, record_ids: list[str], change_type: str) -> web.Response:
        if channel_for(entity) is None:
            return _bad(f"{entity} is not selected for Change Data Capture")
        with self.org.transaction(AGENT) as tx:
            tx.header_only(entity, record_ids, change_type)
            published = tx.commit()
        return web.json_response(published)

    async def merged_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        entity, ids = str(body.get("entity", "Order")), [str(i) for i in body.get("record_ids", [])]
        if not ids or any(self.store.get(entity, i) is None for i in ids):
            return _bad("record_ids must name existing records")
        client = body.get("client")
        actor = api_actor(self.api_version, f"client={client}") if client else AGENT
        with self.org.transaction(actor) as tx:
            tx.merged_update(entity, ids, dict(body.get("fields", {})))
            published = tx.commit()
        return web.json_response(published)

    async def duplicate_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        message = self.org.bus.duplicate_last(str(body.get("channel", "/data/OrderChangeEvent")))
        return web.json_response(message) if message else _bad("the channel has no event yet")

    async def out_of_order(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.org.bus.reverse_next(str(body.get("channel", "/data/OrderChangeEvent")), int(body.get("count", 2)))
        return web.json_response({"armed": True})

    async def platform_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        fields = dict(body.get("fields", body))
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        payload = {"CreatedDate": stamp, "CreatedById": demo_data.INTEGRATION_USER_ID, **fields}
        return web.json_response(self.org.bus.publish(PLATFORM_CHANNEL, payload))

    async def drop_connections(self, request: web.Request) -> web.Response:
        body = await _body(request)
        mode = str(body.get("mode", "unknown-client"))
        if mode not in ("unknown-client", "abort"):
            return _bad("mode must be unknown-client or abort")
        dropped = self.cometd.drop(mode)
        # gRPC streams lose their connection too: UNAVAILABLE, as after a network blip
        pubsub = self.pubsub.end_streams(unavailable()) if self.pubsub is not None else 0
        return web.json_response({"dropped": dropped, "pubsub_dropped": pubsub})

    # --- the Pub/Sub API's streams --------------------------------------------------------------
    async def pubsub_summary(self, _request: web.Request) -> web.Response:
        assert self.pubsub is not None  # noqa: S101 (the route exists only with a server)
        return web.json_response(self.pubsub.summary())

    async def pubsub_fault(self, request: web.Request) -> web.Response:
        """``{"kind": reset | internal | auth_expiry | invalid_replay | allocation_exhausted | half_open |
        duplicate, "channel"?}``: ``reset``/``internal``/``auth_expiry`` end the open streams now,
        ``duplicate`` re-delivers the channel's last event, the others stay until ``DELETE``."""
        assert self.pubsub is not None  # noqa: S101
        body = await _body(request)
        kind = str(body.get("kind", ""))
        if kind not in PUBSUB_FAULTS:
            return _bad(f"kind must be one of {', '.join(PUBSUB_FAULTS)}")
        if kind == "auth_expiry":
            affected = self._expire_all()[1]
        elif kind == "duplicate":
            message = self.org.bus.duplicate_last(str(body.get("channel", "/data/OrderChangeEvent")))
            if message is None:
                return _bad("the channel has no event yet")
            affected = sum(s.topic == message["channel"] for s in self.pubsub.streams.values())
        else:
            affected = self.pubsub.inject(kind)
        return web.json_response({"kind": kind, "streams": affected, "faults": sorted(self.pubsub.faults)}, status=201)

    async def clear_pubsub_faults(self, _request: web.Request) -> web.Response:
        assert self.pubsub is not None  # noqa: S101
        return web.json_response({"cleared": self.pubsub.clear_faults()})

    async def evolve_schema(self, request: web.Request) -> web.Response:
        """``{"topic": "/data/OrderChangeEvent", "field": "Promo_Code__c", "type": "string"}``: the topic's
        schema gets one more field (new schema id); events published before keep the old one."""
        assert self.pubsub is not None  # noqa: S101
        body = await _body(request)
        topic, name, kind = str(body.get("topic", "")), str(body.get("field", "")), str(body.get("type", "string"))
        old = self.pubsub.schemas.current(topic)
        if old is None:
            return web.json_response({"error": f"unknown topic {topic!r}"}, status=404)
        if kind not in KINDS:
            return _bad(f"type must be one of {', '.join(KINDS)}")
        try:
            new = self.pubsub.add_field(topic, name, kind)
        except ValueError as exc:
            return _bad(str(exc))
        answer = {"topic": topic, "schema_id": new.schema_id, "previous_schema_id": old.schema_id,
                  "fields": list(new.fields)}  # fmt: skip
        return web.json_response(answer, status=201)

    # --- auth and limits ----------------------------------------------------------------------
    async def expire_tokens(self, _request: web.Request) -> web.Response:
        expired, streams = self._expire_all()
        return web.json_response({"expired": expired, "pubsub_streams_ended": streams})

    def _expire_all(self) -> tuple[int, int]:
        """Every token dies: pending long polls re-check theirs, gRPC streams end with the auth error."""
        expired = self.tokens.expire_all()
        self.cometd.wake_all()
        return expired, self.pubsub.expire_auth() if self.pubsub is not None else 0

    async def api_usage(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.limits.used = int(body.get("used", self.limits.used))
        self.limits.limit = int(body.get("limit", self.limits.limit))
        return web.json_response({"used": self.limits.used, "limit": self.limits.limit})

    async def add_record_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if not body.get("record_id") or not body.get("statusCode"):
            return _bad("record_id and statusCode are required")
        self.faults.add(str(body["record_id"]), str(body["statusCode"]), message=body.get("message"),
                        times=int(body.get("times", 1)), fields=body.get("fields"))  # fmt: skip
        return web.json_response({"pending": len(self.faults.pending[str(body["record_id"])])}, status=201)

    async def clear_record_faults(self, _request: web.Request) -> web.Response:
        self.faults.pending.clear()
        return web.json_response({"cleared": True})


def _account_id(customer: str) -> str:
    found = next((c for c in demo_data.CUSTOMERS if c["key"] == customer), None)
    if found is None:
        raise FieldProblem("INVALID_CROSS_REFERENCE_KEY", f"unknown demo customer {customer!r}", ["AccountId"])
    return str(found["sf_account_id"])


async def _body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        error = json.dumps({"error": "body must be a JSON object"})
        raise web.HTTPBadRequest(text=error, content_type="application/json")
    return body
