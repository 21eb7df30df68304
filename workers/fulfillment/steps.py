"""The fulfillment saga's steps: what each one does against Salesforce, id_mappings, WHMCS and Freebit.

Owns each step's effect and why repeating it is safe: every step either only reads, sets absolute
values, or looks for its own earlier result before creating anything. Must not persist state, sleep,
or write Salesforce statuses directly: the saga (``workers.fulfillment.saga``) records outcomes and
publishes ``UpdateSalesforceRecord`` commands; Salesforce is called here only to read the order, and
only when the activation request carries no usable snapshot of it (a v1 request, a wake-up, a
resume, a snapshot too old). The message handlers that drive the saga are in ``route``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog

from adapters.freebit.port import DUPLICATE_ACCOUNT, FreebitAccount, MnpReservation
from adapters.saga_store import SimCard
from events.errors import RejectedByUpstream, RetryableError
from workers.fulfillment import writeback
from workers.fulfillment.model import Done, ErrorCode, Fail, Outcome, Park, Skipped, Step, Wait, WaitUntil
from workers.fulfillment.plan import PHYSICAL, SimSpec, build_plan, inventory_sim_type, records_from_snapshot
from workers.fulfillment.policy import SIM_GO_STATUS, poll_delay, snapshot_usable
from workers.fulfillment.run import Publisher, Run

if TYPE_CHECKING:
    from adapters.freebit.port import FreebitPort
    from adapters.mappings import IdMappingsPort
    from adapters.saga_store import SagaStore
    from adapters.salesforce.port import SalesforcePort
    from adapters.whmcs.port import WhmcsOrder, WhmcsPort

log = structlog.get_logger(__name__)

JST = ZoneInfo("Asia/Tokyo")

#: free cards read per page of ``SIM_Inventory__c``, and pages read before the inventory counts as
#: empty. A page runs out only while many orders take cards at once (a taken card reads Available
#: until the sf-writer's write lands), so the next page (keyset, by Name) has the free ones.
SIM_CARD_PAGE = 50
SIM_CARD_PAGES = 10


# --- steps: common -------------------------------------------------------------------------------
async def validate_order(run: Run, *, salesforce: SalesforcePort) -> Outcome:
    # Reads only. Plans from the request's snapshot when it carries a fresh one (read by sf-cdc
    # right after the change that triggered this run: a re-approval after a fixed Product2 mapping
    # brings a new one); otherwise reads the order and its lines now.
    snapshot, sf_order_id = run.trigger.snapshot, run.order.sf_order_id
    if snapshot is not None and snapshot.sf_order_id == sf_order_id and snapshot_usable(snapshot.read_at, run.clock()):
        order, items = records_from_snapshot(sf_order_id, snapshot)
        run.note("planned_from_snapshot", Step.VALIDATE, read_at=snapshot.read_at.isoformat())
    else:
        order = await salesforce.get_order(sf_order_id)
        items = await salesforce.get_order_items(order.id)
    plan = build_plan(order, items)
    if isinstance(plan, Fail):
        return plan
    run.order.plan = plan.model_dump(mode="json")
    run.order.order_type = plan.order_type
    run.order.sf_account_id = plan.sf_account_id or run.order.sf_account_id
    return Done({"order_type": plan.order_type.value, "lines": len(plan.lines)})


async def await_schedule(run: Run, *, salesforce: SalesforcePort) -> Outcome:
    # Reads at most. An order with Activation_Type__c = Scheduled waits for Activation_Scheduled_At__c
    # on a durable timer (saga: Schedule → fulfillment_timers). Each time the step runs again (the
    # timer fired, the date changed in Salesforce, a new request) it reads the order's current type
    # and date, from the request's snapshot when it carries one, else from Salesforce: a moved date
    # moves the timer, an order switched to Immediate goes on at once. An order planned Immediate
    # is not read again.
    snapshot = run.trigger.snapshot
    if snapshot is not None and snapshot.sf_order_id == run.order.sf_order_id:
        kind, at = snapshot.activation_type, snapshot.activation_scheduled_at
    elif run.plan.scheduled:
        order = await salesforce.get_order(run.order.sf_order_id)
        kind, at = order.activation_type, order.activation_scheduled_at
    else:
        return Skipped("an Immediate activation")
    if (kind or "").strip().lower() != "scheduled":
        return Skipped(f"Activation_Type__c is {kind or 'empty'}")
    if at is None:
        return Fail(ErrorCode.ORDER_INVALID, "a Scheduled activation without Activation_Scheduled_At__c")
    if at > run.clock():
        return WaitUntil(at)
    return Done({"scheduled_at": at.isoformat()})


async def resolve_whmcs_client(run: Run, *, mappings: IdMappingsPort) -> Outcome:
    # Reads only (the portal owns id_mappings).
    account = run.order.sf_account_id
    rows = await mappings.for_sf_account(account) if account else []
    if not rows:
        message = f"Salesforce Account {account} has no WHMCS client in id_mappings"
        return Fail(ErrorCode.WHMCS_CLIENT_NOT_MAPPED, message)
    run.order.whmcs_client_id = rows[0].whmcs_client_id
    return Done({"whmcs_client_id": rows[0].whmcs_client_id})


async def check_payment_method(run: Run, *, whmcs: WhmcsPort) -> Outcome:
    # Reads only; parking is undone by PaymentMethodChanged for this client (resume_parked_orders).
    client_id = _client(run)
    methods = await whmcs.list_pay_methods(client_id)
    if not methods:
        message = f"WHMCS client {client_id} has no payment method; fulfillment resumes when one is added"
        return Park(ErrorCode.PAYMENT_METHOD_MISSING, message)
    return Done({"paymethod_ids": [m.paymethod_id for m in methods]})


# --- steps: SIM inventory and Freebit (SIM orders) ------------------------------------------------
async def await_processed(run: Run, *, salesforce: SalesforcePort) -> Outcome:
    # Reads at most. A SIM order is billed on approval, and its card and Freebit registration wait
    # for an agent's Status = Processed (domain-facts §2.3). The request says which Status it saw;
    # one that says nothing (a PaymentMethodChanged resume, `fleet orders retry`) reads it. Parked
    # here, the order resumes on the SimActivationRequested that sf-cdc publishes when the agent sets
    # Processed, or on any later request that carries Processed.
    status = run.trigger.status
    if status is None:
        status = (await salesforce.get_order(run.order.sf_order_id)).status
    if status == SIM_GO_STATUS:
        return Done({"status": status})
    message = f"billed in WHMCS; the SIM is taken and registered once an agent sets Status = Processed (now {status})"
    return Park(ErrorCode.AWAITING_PROCESSED, message)


async def assign_sim_card(run: Run, *, salesforce: SalesforcePort, store: SagaStore) -> Outcome:
    # Takes one free card of the order's type from Salesforce SIM_Inventory__c. Postgres
    # (sim_card_assignments) is the arbiter: a card goes to one order, and a retried order gets back
    # the card it took (the store answers with it before looking at candidates). The number is
    # claimed too (fulfillment_orders.sim_account). Both are recorded before Freebit hears of them.
    # A ported number (MNP) replaces the card's own: the card gives its serial, the customer the
    # number; an eSIM that ports takes no inventory record at all.
    ids, sim = run.ids(Step.SIM_ASSIGN), _sim(run)
    if "account" not in ids:
        if "account" in run.ids(Step.SIM_REGISTER):  # registered by a release before the inventory
            return Skipped("the SIM was registered before cards came from SIM_Inventory__c")
        sim_type, card = inventory_sim_type(sim), None
        if not (sim.mnp is not None and sim.kind == "esim"):
            card = await _take_card(run, salesforce, store, sim_type)
            if card is None:
                message = f"no Available {sim_type} card in SIM_Inventory__c; nothing was registered"
                return Fail(ErrorCode.SIM_INVENTORY_EMPTY, message)
        if sim.mnp is not None:
            number, whose = sim.mnp.phone_number, f"the ported number {sim.mnp.phone_number}"
        else:
            assert card is not None, "only a ported eSIM takes no card"
            number, whose = card.phone_number, f"card {card.name}'s number {card.phone_number}"
        if not await store.reserve_sim_account(run.order.sf_order_id, number):
            return Fail(ErrorCode.SIM_INVENTORY_CONFLICT, f"{whose} is already held by another order")
        run.order.sim_account = number
        await run.remember(
            Step.SIM_ASSIGN,
            card_id=card.card_id if card else None,
            card=card.name if card else None,
            account=number,
            serial_number=(card.serial_number or "") if card else "",
            sim_type=sim_type,
        )
        ids = run.ids(Step.SIM_ASSIGN)
    # The card's assignment (Status__c = Assigned, absolute values) is not published here: it goes
    # with the order's next Salesforce writes (Run.owed_updates), the write-back when nothing stops
    # the order first, so the card and the Activated cost one writer call, not two. Until then the
    # card reads Available in Salesforce; Postgres, not Salesforce, decides who holds it.
    return Done({k: ids.get(k) for k in ("card_id", "card", "account", "serial_number")})


async def register_sim(run: Run, *, freebit: FreebitPort) -> Outcome:
    # The card was committed before Freebit is called (sim_assign), and Freebit is asked about its
    # number before a registration is submitted: a crash after an earlier submit finds the account.
    # A ported number's reservation is checked here, where it is used, not only at approval: an
    # expired one is our error code for staff, not a Freebit 400.
    sim, ids = _sim(run), _card(run)
    if sim.mnp is not None and sim.mnp.expired(japan_today(run.clock())):
        message = (
            f"the MNP reservation {sim.mnp.reservation_number} for {sim.mnp.phone_number} expired on "
            f"{sim.mnp.expiry.isoformat()}; nothing was registered at Freebit"
        )
        return Fail(ErrorCode.MNP_RESERVATION_EXPIRED, message)
    existing = await freebit.account_detail(ids["account"])
    if existing is None or existing.state == "cancelled":
        try:
            await _submit_registration(freebit, sim, ids)
        except RejectedByUpstream as exc:
            if exc.code != DUPLICATE_ACCOUNT:
                raise
        existing = await freebit.account_detail(ids["account"])
    if existing is not None and not _ours(existing, sim, ids):
        return Fail(ErrorCode.FREEBIT_REGISTRATION_FAILED, f"Freebit account {ids['account']} belongs to another SIM")
    return Done({"account": ids["account"], "submitted": True})


async def confirm_sim(run: Run, *, freebit: FreebitPort, max_wait_s: float) -> Outcome:
    # PA03-02 is a read; the wait is a scheduled wake-up, never a sleep (see wakeup.py).
    account = run.ids(Step.SIM_REGISTER)["account"]
    current = await _look(run, Step.SIM_CONFIRM, freebit, account)
    if current is not None and current.state == "active":
        return Done({"account": account, "serial_number": current.serial_number, "eid": current.eid})
    if current is not None and current.state == "cancelled":
        message = f"Freebit account {account} was cancelled before its registration completed"
        return Fail(ErrorCode.FREEBIT_REGISTRATION_FAILED, message)
    return _wait_or_time_out(run, Step.SIM_CONFIRM, max_wait_s, f"the registration of {account}")


async def add_voice_options(run: Run, *, freebit: FreebitPort, max_wait_s: float) -> Outcome:
    # Options are a set at Freebit: re-submitting the same ones is harmless, so one submit per
    # attempt window (a window restarts when a timed-out order is resumed) and then poll.
    sim, account = _sim(run), run.ids(Step.SIM_REGISTER)["account"]
    if not sim.wants_voice:
        return Skipped("no voice options ordered")
    current = await _look(run, Step.SIM_VOICE, freebit, account)
    if current is not None and (current.voice_mail, current.call_waiting) == (sim.voice_mail, sim.call_waiting):
        return Done({"voice_mail": sim.voice_mail, "call_waiting": sim.call_waiting})
    if not _submitted_in_window(run, Step.SIM_VOICE):
        await freebit.add_voice_options(account, voice_mail=sim.voice_mail, call_waiting=sim.call_waiting)
        await run.remember(Step.SIM_VOICE, submitted_at=run.clock().isoformat())
    return _wait_or_time_out(run, Step.SIM_VOICE, max_wait_s, f"the voice options of {account}")


# --- steps: WHMCS --------------------------------------------------------------------------------
async def create_whmcs_order(run: Run, *, whmcs: WhmcsPort) -> Outcome:
    # AddOrder is not idempotent: a crash between AddOrder and our commit leaves an order we never
    # recorded, so a later attempt looks for this order's marker first (a cancelled one, our
    # compensation, does not count). The first attempt has nothing to find: its attempt was
    # committed before this call (the saga's rule 2) and no earlier one ever reached AddOrder, so
    # it skips the search (GetOrders pages through the client's whole order history: 2-4 calls and
    # a quarter of the fulfillment worker's CPU in a burst, py-spy).
    plan, client_id = run.plan, _client(run)
    marker = f"sfOrderId={plan.sf_order_id}"
    existing = None
    if run.step(Step.WHMCS_CREATE).attempts > 1 or plan.sf_whmcs_order_id is not None:
        existing = await _existing_order(whmcs, client_id, marker, plan.sf_whmcs_order_id)
    if existing is not None:
        order_id, service_ids, adopted = existing.order_id, existing.service_ids, True
    else:
        added = await whmcs.add_order(client_id, [line.order_line() for line in plan.lines], notes=marker)
        order_id, service_ids, adopted = added.order_id, added.service_ids, False
    run.order.whmcs_order_id = order_id
    return Done({"whmcs_order_id": order_id, "service_ids": list(service_ids), "adopted": adopted})


async def accept_whmcs_order(run: Run, *, whmcs: WhmcsPort) -> Outcome:
    # AcceptOrder of an already Active order succeeds, so a repeat is harmless. A refusal means
    # the pending order was cancelled or flagged in WHMCS: compensate by cancelling what is left
    # and forgetting it, so the next activation request creates a clean one.
    order_id = run.order.whmcs_order_id
    assert order_id is not None, "whmcs_create records the order id"
    try:
        await whmcs.accept_order(order_id)
    except RejectedByUpstream as exc:
        await _cancel_quietly(whmcs, order_id)
        run.order.whmcs_order_id = None
        message = f"WHMCS refused to accept order {order_id} ({exc.code}); it was cancelled and will be re-created"
        return Fail(ErrorCode.WHMCS_ORDER_REJECTED, message, compensated=(Step.WHMCS_CREATE,))
    return Done({"whmcs_order_id": order_id})


async def link_opportunity(run: Run, *, whmcs: WhmcsPort) -> Outcome:
    # UpdateClientProduct sets values (not appends): writing it twice leaves the same service. The
    # other direction (Opportunity.WHMCS_Service_ID__c) is a write-back command (sf_writeback).
    opportunity, plan = run.plan.opportunity_id, run.plan
    if not opportunity:
        return Skipped("the order has no OpportunityId")
    service_id = int(run.ids(Step.WHMCS_CREATE)["service_ids"][plan.service_line])
    await whmcs.update_service_custom_fields(service_id, {"OpportunityId": opportunity})
    return Done({"service_id": service_id, "opportunity_id": opportunity})


async def write_sim_fields(run: Run, *, whmcs: WhmcsPort) -> Outcome:
    # UpdateClientProduct sets values (not appends): writing them twice leaves the same service.
    sim, confirmed = _sim(run), run.ids(Step.SIM_CONFIRM)
    service_id = int(run.ids(Step.WHMCS_CREATE)["service_ids"][sim.service_line])
    values = {
        "SIM Number": confirmed.get("account", ""),
        "Serial Number": confirmed.get("serial_number", ""),
        "EID": confirmed.get("eid", "") or sim.eid,
    }
    fields = {name: str(value) for name, value in values.items() if value}
    await whmcs.update_service_custom_fields(service_id, fields)
    return Done({"service_id": service_id, "fields": sorted(fields)})


# --- step: Salesforce write-back -----------------------------------------------------------------
async def write_back_to_salesforce(run: Run, *, publisher: Publisher) -> Outcome:
    # Commands carry absolute values, so a re-sent command (crash before this step committed)
    # makes the sf-writer write the same fields again. They go out together with what the order
    # still owes Salesforce (a SIM order's card, Run.owed_updates): one produce request, each
    # record on its own key's partition, so the sf-writer tends to fetch them in one batch and
    # write the order, its lines, its Opportunity and its card in one sObject Collections call;
    # the step is done only once every one is acknowledged.
    created, plan = run.ids(Step.WHMCS_CREATE), run.plan
    updates = writeback.fulfilled(
        run.order.sf_order_id,
        plan.lines,
        int(created["whmcs_order_id"]),
        created["service_ids"],
        opportunity_id=plan.opportunity_id,
        service_line=plan.service_line,
    )
    return Done({"commands": await publisher.write_back(run, updates)})


# --- helpers -------------------------------------------------------------------------------------
def _client(run: Run) -> int:
    client_id = run.order.whmcs_client_id
    assert client_id is not None, "resolve_client runs before every WHMCS step"
    return client_id


def _sim(run: Run) -> SimSpec:
    sim = run.plan.sim
    assert sim is not None, "SIM steps run only for SIM orders"
    return sim


def _card(run: Run) -> dict[str, Any]:
    """The SIM the order registers: what sim_assign took (or the number an older release derived)."""
    assigned = run.ids(Step.SIM_ASSIGN)
    if "account" in assigned:
        return {"account": assigned["account"], "serial_number": assigned.get("serial_number", "")}
    return run.ids(Step.SIM_REGISTER)


def japan_today(now: datetime) -> date:
    """The calendar day in Japan, where MNP reservations expire."""
    return now.astimezone(JST).date()


async def _take_card(run: Run, salesforce: SalesforcePort, store: SagaStore, sim_type: str) -> SimCard | None:
    after: str | None = None
    for _ in range(SIM_CARD_PAGES):
        page = await salesforce.free_sim_cards(sim_type, after=after, limit=SIM_CARD_PAGE)
        if not page:
            return None
        unusable = [c.name for c in page if sim_type == PHYSICAL and not c.serial_number]
        if unusable:  # a physical card Freebit cannot register: someone must complete the record
            log.warning("sim_cards_without_serial", cards=unusable, sf_order_id=run.order.sf_order_id)
        candidates = [
            SimCard(c.id, c.name, c.phone_number, c.serial_number)
            for c in page
            if c.phone_number and (c.serial_number or sim_type != PHYSICAL)
        ]
        card = await store.reserve_sim_card(run.order.sf_order_id, candidates)
        if card is not None:
            return card
        after = page[-1].name
    return None


async def _submit_registration(freebit: FreebitPort, sim: SimSpec, ids: dict[str, Any]) -> None:
    mnp = MnpReservation(sim.mnp.reservation_number, sim.mnp.expiry) if sim.mnp is not None else None
    if sim.kind == "esim" and mnp is not None:  # PA05-41 addKind M; Aladin-operated only with addKind N
        await freebit.register_esim(
            ids["account"], eid=sim.eid, plan_code=sim.plan_code, kind="mnp", aladin_operated=False, mnp=mnp
        )
    elif sim.kind == "esim":
        await freebit.register_esim(ids["account"], eid=sim.eid, plan_code=sim.plan_code)
    else:
        await freebit.register_physical_sim(
            ids["account"], serial_number=ids["serial_number"], plan_code=sim.plan_code, mnp=mnp
        )


def _ours(account: FreebitAccount, sim: SimSpec, ids: dict[str, Any]) -> bool:
    """Is the Freebit account this order's SIM (and not someone else's number)?"""
    if sim.kind == "esim":
        return account.sim_kind == "esim" and account.eid == sim.eid
    return account.sim_kind == "physical" and account.serial_number == ids["serial_number"]


async def _look(run: Run, step: Step, freebit: FreebitPort, account: str) -> FreebitAccount | None:
    """PA03-02 while waiting: a look that fails transiently is a look without an answer, so the order
    keeps waiting (its deadline still runs) instead of spending the wake-up's retries on a read."""
    try:
        return await freebit.account_detail(account)
    except RetryableError as exc:
        run.note("poll_failed", step, error=exc.code, message=str(exc)[:200])
        return None


def _wait_or_time_out(run: Run, step: Step, max_wait_s: float, what: str) -> Outcome:
    rec, now = run.step(step), run.clock()
    waited = (now - (rec.started_at or now)).total_seconds()
    if waited >= max_wait_s:
        return Fail(ErrorCode.FREEBIT_TIMEOUT, f"Freebit did not complete {what} within {max_wait_s:.0f} s")
    return Wait(poll_delay(rec.attempts, max_wait_s - waited))


def _submitted_in_window(run: Run, step: Step) -> bool:
    submitted, started = run.ids(step).get("submitted_at"), run.step(step).started_at
    return bool(submitted and started and datetime.fromisoformat(submitted) >= started)


async def _existing_order(
    whmcs: WhmcsPort, client_id: int, marker: str, sf_whmcs_order_id: int | None
) -> WhmcsOrder | None:
    found = await whmcs.find_order_by_note(client_id, marker)
    if found is not None and found.status != "Cancelled":
        return found
    if sf_whmcs_order_id is None:  # Salesforce already names an order (fulfilled before the fleet ran)
        return None
    orders = await whmcs.find_orders(client_id)
    return next((o for o in orders if o.order_id == sf_whmcs_order_id and o.status != "Cancelled"), None)


async def _cancel_quietly(whmcs: WhmcsPort, order_id: int) -> None:
    try:
        await whmcs.cancel_order(order_id)  # idempotent: an already Cancelled order succeeds
    except RejectedByUpstream:
        log.warning("whmcs_order_not_cancellable", whmcs_order_id=order_id)  # e.g. Fraud: staff decide
