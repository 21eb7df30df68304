"""The per-order state machine: run the first unfinished step, record what happened, repeat.

Owns the order of persistence around every step (running → outcome committed), the per-order
lock, resuming parked and failed orders, wake-ups and the outcome events. Steps are injected
(``steps``, bound in ``route``); what an error means comes from ``policy``. Must not call a
vendor itself, and must not sleep: a step that has to wait returns ``Wait``, the saga schedules a
wake-up (``wakeup.py``) and the delivery ends (see ``docs/fulfillment.md``, "Waiting for Freebit").

Durability rules, in the order they happen for one delivery:
1. the order's lock is held for the whole delivery (``SagaStore.locked``);
2. before a step runs, its attempt is committed (status ``running``, attempts + 1), so a crash
   shows which step was in flight and the next delivery knows to look before creating;
3. a step's result (its external ids) commits right after it returns, in the same transaction as
   the next step's attempt (rule 2) or the delivery's last write (rule 4): nothing external happens
   between the two, so one commit is as safe as two and costs one round of writes less per step;
   a step that learns an id before it is finished commits it at once (``Run.remember``);
4. a delivery's last write (fulfilled / parked / failed / waiting, plus its inbox row) is one
   transaction, committed only after the outcome events (or the wake-up) are published, so a
   crash re-publishes them (at least once) rather than losing them.

A request for an order the ledger already calls fulfilled runs no step: its snapshot is compared
with the ledger (``policy.check_ledger``), a lost write-back is sent again from the recorded ids,
and a Salesforce order the ledger did not fulfil gets ``LEDGER_MISMATCH`` (never a second order).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from adapters import tracing
from adapters.saga_store import InboxClaim, SagaOrder, SagaRecord, SagaStore
from events.fulfillment import (
    OrderActivationStarted,
    OrderFulfilled,
    OrderFulfillmentFailed,
    OrderParked,
    UpdateSalesforceRecord,
)
from events.topics import Topic
from workers.fulfillment import writeback
from workers.fulfillment.metrics import STEP_VENDOR, step_duration
from workers.fulfillment.model import (
    REOPENED,
    TIMER_REASON,
    Done,
    ErrorCode,
    Fail,
    LedgerVerdict,
    OrderState,
    Outcome,
    Park,
    Skipped,
    Step,
    StepStatus,
    TimerReason,
    Wait,
    WaitUntil,
)
from workers.fulfillment.policy import (
    QUIET_PARKING_CODES,
    LedgerCheck,
    check_ledger,
    mismatch_message,
    payment_recheck_delay,
    rejection_code,
    reverts_status,
    same_record,
)
from workers.fulfillment.run import (
    Clock,
    Publisher,
    Run,
    SagaResult,
    Schedule,
    StepFn,
    StepHook,
    Trigger,
    utcnow,
)

log = structlog.get_logger()


class Saga:
    """Runs orders: ``handle(trigger)`` advances one order as far as it can go now."""

    def __init__(
        self,
        *,
        store: SagaStore,
        steps: Mapping[Step, StepFn],
        publisher: Publisher,
        schedule: Schedule,
        clock: Clock = utcnow,
        hook: StepHook | None = None,
        lock_wait_s: float = 30.0,
        payment_recheck_s: Sequence[float],
    ) -> None:
        self._store = store
        self._payment_recheck_s = list(payment_recheck_s)
        self._steps = steps
        self._publisher = publisher
        self._schedule = schedule
        self._clock = clock
        self._hook = hook
        self._lock_wait_s = lock_wait_s
        #: requests for orders the ledger calls fulfilled, by what their snapshot showed
        #: (``LedgerVerdict``); unregistered: the worker running the route serves it (``collector``)
        self.ledger_checks = Counter(
            "fleet_fulfillment_ledger_checks",
            "Activation requests for orders the ledger calls fulfilled, by verdict (repair = write-back re-sent)",
            ["verdict"],
            registry=None,
        )
        #: each step attempt's latency by step and vendor (``metrics``); served like ``ledger_checks``
        self.step_duration = step_duration()

    async def handle(self, trigger: Trigger) -> SagaResult:
        """Advance one order as far as it can go now. Safe to call any number of times."""
        with tracing.span("saga", {tracing.ORDER_ID: trigger.sf_order_id, "fleet.saga.reason": trigger.reason}):
            result = await self._handle(trigger)
            tracing.set_attributes({"fleet.saga.state": str(result.state), "fleet.saga.step": result.step})
            return result

    async def _handle(self, trigger: Trigger) -> SagaResult:
        async with self._store.locked(trigger.sf_order_id, self._lock_wait_s):
            if trigger.claim is not None and await self._store.processed(trigger.claim):
                return SagaResult(trigger.sf_order_id, "duplicate")
            run = await self._open(trigger)
            if run is None:
                if trigger.reason == TIMER_REASON:  # the order moved on without clearing it: stop it firing
                    await self._store.clear_timer(trigger.sf_order_id)
                return SagaResult(trigger.sf_order_id, "ignored")
            if run.order.state == OrderState.FULFILLED:
                return await self._revisit(run)
            await self._announce(run)
            try:
                return await self._advance(run)
            finally:  # a delivery cut short (only an end's save waits for it): the notice still goes out
                with contextlib.suppress(Exception):
                    await run.announced()

    # --- opening and resuming -------------------------------------------------------------------
    async def _open(self, trigger: Trigger) -> Run | None:
        record = await self._store.get(trigger.sf_order_id)
        if not _wanted(record, trigger):
            return None
        now = self._clock()
        record = record or SagaRecord(SagaOrder(trigger.sf_order_id, sf_account_id=trigger.sf_account_id))
        run = Run(record, trigger, self._store, self._clock)
        event_id = trigger.cause.id if trigger.cause else None
        if trigger.wakeup:
            run.note("woke_up", run.next_step(), event_id=event_id)
        else:
            run.order.requests += 1
            run.note("requested", reason=trigger.reason, event_id=event_id)
        reopened = self._reopen(run) if run.order.state in (OrderState.PARKED, OrderState.FAILED) else []
        run.order.created_at = run.order.created_at or now
        # written by the delivery's first save (the first attempt, or its end): nothing external
        # happens before it, so a crash in between loses only what the redelivery redoes
        run.pending.extend(reopened)
        return run

    def _reopen(self, run: Run) -> list[Step]:
        """Resume from the first unfinished step; the reopened steps get a fresh attempt window."""
        reopened = [r for r in run.record.steps.values() if r.status in REOPENED]
        for rec in reopened:
            rec.status, rec.started_at, rec.finished_at = StepStatus.PENDING, None, None
        run.note("resumed", run.next_step(), after=run.order.error_code, from_state=run.order.state)
        run.order.state, run.order.error_code, run.order.error_message = OrderState.RUNNING, None, None
        run.order.finished_at = None
        return [Step(r.step) for r in reopened]

    async def _announce(self, run: Run) -> None:
        """``OrderActivationStarted`` (the portal's Activating) when this request starts work on an order
        that was not running: a new one, or a parked or failed one it resumes. Not on a wake-up, nor
        when the order is already running or waiting. Acknowledged before any save stores the order
        as running (for a resume: before the first save; for a new order the first steps go on
        meanwhile, see below): a crash before such a save publishes it again on the redelivery, so it
        may arrive twice; a crash after it finds the order running and announces nothing."""
        if run.trigger.wakeup or run.trigger.reason == TIMER_REASON or run.was[0] not in _NOT_RUNNING:
            return  # a timer's re-check of a parked order is no new start for the portal
        ids, shown = _outcome_ids(run.order), run.trigger.snapshot  # a new order: validate has not run yet
        if shown is not None:
            ids["sf_account_id"] = ids["sf_account_id"] or shown.sf_account_id
        order_type = run.order.order_type or (shown.order_type if shown else None)
        started = OrderActivationStarted(**ids, order_type=order_type)
        sending = self._publisher.send(Topic.FULFILLMENT_OUTCOME, started, run.trigger.cause)
        if run.was[0] != OrderState.RECEIVED:
            await sending  # a resume: acknowledged before the first save, which stores it running
            return
        # A new order: its first steps (and their attempts' saves) do not wait for Kafka's answer.
        # Safe, because the decision to announce reads only the stored state, and until the
        # acknowledgement every save stores the order as received (Run.save, early): a crash then
        # leaves it received and the redelivery announces again; the first save that stores it as
        # running, waiting, parked, failed or fulfilled waits for the acknowledgement. So the notice
        # is never lost, and it arrives twice only after a crash, as before.
        run.announce(sending)

    # --- a request for a fulfilled order ----------------------------------------------------------
    async def _revisit(self, run: Run) -> SagaResult:
        """Nothing runs again. The request's snapshot is compared with the ledger: a lost write-back
        is sent again, a Salesforce order the ledger did not fulfil is reported, the rest is noted.
        Each ends with the request's inbox row, so a redelivery is a duplicate."""
        check = _ledger_check(run)
        self.ledger_checks.labels(verdict=check.verdict.value).inc()
        if check.verdict == LedgerVerdict.MISMATCH:
            return await self._mismatch(run, check)
        if check.verdict == LedgerVerdict.REPAIR:
            await self._repair(run, check)
        else:
            run.note("already_fulfilled", verdict=check.verdict.value, reason=check.reason)
        await run.save(claim=run.trigger.claim)
        return SagaResult(run.order.sf_order_id, OrderState.FULFILLED)

    async def _repair(self, run: Run, check: LedgerCheck) -> None:
        """The write-back step's own commands again, from the recorded WHMCS ids (absolute values:
        a repair that was not needed writes the same fields), and ``OrderFulfilled`` again, since
        the write-back alone changes no field the portal's caches follow."""
        order, created = run.order, run.ids(Step.WHMCS_CREATE)
        await self._steps[Step.SF_WRITEBACK](run)
        await self._publisher.send(Topic.FULFILLMENT_OUTCOME, _fulfilled(run), run.trigger.cause)
        ids: dict[str, Any] = {"whmcs_order_id": order.whmcs_order_id, "service_ids": created.get("service_ids", [])}
        run.note("writeback_repaired", Step.SF_WRITEBACK, reason=check.reason, **ids)
        log.warning("fulfillment_writeback_repaired", sf_order_id=order.sf_order_id, reason=check.reason, **ids)

    async def _mismatch(self, run: Run, check: LedgerCheck) -> SagaResult:
        """Salesforce shows an order the ledger did not fulfil: the code and both sides go to the
        order, the log and the timeline. Nothing is created and ``Status`` stays as it is:
        re-triggering cannot settle which record is right, a human must."""
        order, code, shown = run.order, ErrorCode.LEDGER_MISMATCH, run.trigger.snapshot
        assert shown is not None, "only a snapshot can disagree with the ledger"
        message = mismatch_message(order.whmcs_order_id, order.whmcs_client_id, check)
        await self._publisher.write_back(
            run, [writeback.errored(order.sf_order_id, code, message, revert_status=False)]
        )
        ids = _outcome_ids(order)
        if shown.sf_account_id and not same_record(shown.sf_account_id, order.sf_account_id or ""):
            ids.update(sf_account_id=shown.sf_account_id, whmcs_client_id=None)  # the account the portal shows
        failed = OrderFulfillmentFailed(**ids, error_code=code, error_message=message)
        await self._publisher.send(Topic.FULFILLMENT_OUTCOME, failed, run.trigger.cause)
        sides: dict[str, Any] = {
            "whmcs_order_id": order.whmcs_order_id,
            "sf_whmcs_order_id": shown.whmcs_order_id,
            "differences": list(check.differences),
        }
        run.note("ledger_mismatch", code=code, message=message, **sides)
        await run.save(claim=run.trigger.claim)
        accounts = {"sf_account_id": shown.sf_account_id, "ledger_sf_account_id": order.sf_account_id}
        log.error("fulfillment_ledger_mismatch", sf_order_id=order.sf_order_id, code=code, **sides, **accounts)
        return SagaResult(order.sf_order_id, OrderState.FULFILLED, code=code)

    # --- the loop -------------------------------------------------------------------------------
    async def _advance(self, run: Run) -> SagaResult:
        while (step := run.next_step()) is not None:
            outcome = await self._attempt(run, step)
            if isinstance(outcome, Done | Skipped):
                await self._complete(run, step, outcome)
            elif isinstance(outcome, Wait):
                return await self._wait(run, step, outcome)
            elif isinstance(outcome, WaitUntil):
                return await self._wait_until(run, step, outcome)
            elif isinstance(outcome, Park):
                return await self._park(run, step, outcome)
            else:
                return await self._fail(run, step, outcome)
        return await self._finish(run)

    async def _attempt(self, run: Run, step: Step) -> Outcome:
        now, rec = self._clock(), run.step(step)
        rec.status, rec.attempts, rec.last_attempt_at = StepStatus.RUNNING, rec.attempts + 1, now
        rec.started_at = rec.started_at or now
        run.order.current_step, run.order.state = step, OrderState.RUNNING
        await self._save(run, step, early=True)  # with the previous step's result (rule 3)
        started = time.perf_counter()
        try:
            with tracing.span(f"saga step {step}", _step_tags(run, step, rec.attempts)):
                outcome = await self._steps[step](run)
                if tracing.enabled():
                    tracing.set_attributes(_outcome_tags(outcome))
        except Exception as exc:
            self._observe(step, started)
            code = rejection_code(step, exc)
            if code is None:
                await self._errored(run, step, exc)
                raise
            outcome = Fail(code, str(exc))
        else:
            self._observe(step, started)
        self._call_hook(step, "called")
        return outcome

    def _observe(self, step: Step, started: float) -> None:
        took = time.perf_counter() - started
        self.step_duration.labels(step=step.value, vendor=STEP_VENDOR.get(step, "none")).observe(took)

    async def _errored(self, run: Run, step: Step, exc: Exception) -> None:
        """A retryable (or unclassified) error: record it on the step and let the runtime retry."""
        rec = run.step(step)
        rec.last_error_code = getattr(exc, "code", None) or type(exc).__name__
        rec.last_error_message = str(exc)[:1000]
        run.note("step_error", step, error=rec.last_error_code, message=rec.last_error_message)
        await self._publisher.write_back(run, [])  # what the order owes Salesforce goes before the retry
        await run.save(step)
        log.warning("fulfillment_step_error", sf_order_id=run.order.sf_order_id, step=step, error=str(exc))

    async def _complete(self, run: Run, step: Step, outcome: Done | Skipped) -> None:
        rec, now = run.step(step), self._clock()
        rec.status = StepStatus.DONE if isinstance(outcome, Done) else StepStatus.SKIPPED
        rec.finished_at = now
        if isinstance(outcome, Done):
            rec.external_ids.update(outcome.ids)
            run.note("step_done", step, ids=outcome.ids, duration_s=_seconds(rec.started_at, now))
        else:
            run.note("step_skipped", step, reason=outcome.reason)
        run.unsaved.append(step)  # committed with the next step's attempt or the delivery's end (rule 3)

    async def _wait(self, run: Run, step: Step, outcome: Wait) -> SagaResult:
        await self._timers(run)
        rec = run.step(step)
        rec.status = StepStatus.WAITING
        rec.external_ids.update(outcome.ids)
        run.order.state = OrderState.WAITING
        # only the newest wake-up counts (_wanted), so duplicate deliveries never grow parallel chains
        rec.external_ids["wakeup_id"] = await self._schedule(run.order, outcome.retry_after, run.trigger.cause)
        await self._publisher.write_back(run, [])  # e.g. a SIM's card: not left for after the wait
        run.note("step_waiting", step, retry_after_s=outcome.retry_after)
        await run.save(step, claim=run.trigger.claim)
        self._call_hook(step, "committed")
        return SagaResult(run.order.sf_order_id, OrderState.WAITING, step, retry_after=outcome.retry_after)

    async def _wait_until(self, run: Run, step: Step, outcome: WaitUntil) -> SagaResult:
        """A scheduled activation: the order waits on a durable timer (``fulfillment_timers``), which
        the timer loop turns into a resume request when it falls due (``timers.py``)."""
        rec = run.step(step)
        rec.status = StepStatus.WAITING
        run.order.state = OrderState.SCHEDULED
        await self._store.set_timer(run.order.sf_order_id, TimerReason.SCHEDULED, outcome.until)
        await self._publisher.write_back(run, [])
        run.note("scheduled", step, until=outcome.until.isoformat())
        await run.save(step, claim=run.trigger.claim)
        log.info("order_scheduled", sf_order_id=run.order.sf_order_id, until=outcome.until.isoformat())
        return SagaResult(run.order.sf_order_id, OrderState.SCHEDULED, step)

    async def _timers(self, run: Run, code: ErrorCode | None = None) -> None:
        """At a delivery's end: an order parked for a missing pay method is re-checked on a back-off
        (production WHMCS sends no hook for a bank account or a remote token); an order that left a
        timed wait (or was woken by a timer) has its timer cleared."""
        sf_order_id = run.order.sf_order_id
        if code == ErrorCode.PAYMENT_METHOD_MISSING:
            timer = await self._store.timer(sf_order_id)
            fired = timer.fired if timer is not None and timer.reason == TimerReason.PAYMENT_RECHECK else 0
            delay = payment_recheck_delay(fired, self._payment_recheck_s)
            due = self._clock() + timedelta(seconds=delay)
            await self._store.set_timer(sf_order_id, TimerReason.PAYMENT_RECHECK, due)
        elif run.was[0] in _TIMED or run.trigger.reason == TIMER_REASON:
            await self._store.clear_timer(sf_order_id)

    # --- endings ---------------------------------------------------------------------------------
    async def _park(self, run: Run, step: Step, outcome: Park) -> SagaResult:
        self._stop(run, step, StepStatus.PARKED, OrderState.PARKED, outcome.code, outcome.message)
        await self._timers(run, outcome.code)
        order, quiet = run.order, outcome.code in QUIET_PARKING_CODES
        again = run.was == (OrderState.PARKED, outcome.code)
        updates: list[UpdateSalesforceRecord] = []
        if not again and not quiet:  # parked again for the same reason: Salesforce is told once
            updates.append(writeback.errored(order.sf_order_id, outcome.code, outcome.message, revert_status=False))
        await self._publisher.write_back(run, updates)  # with what the order owes Salesforce (its card)
        # parked again: this delivery resumed the order and announced Activating (``_announce``), so the
        # portal hears where it stopped again; a quiet park (a wait, no notice) stays said once
        if not (again and quiet):
            parked = OrderParked(
                **_outcome_ids(order), error_code=outcome.code, error_message=outcome.message, step=step
            )
            await self._publisher.send(Topic.FULFILLMENT_OUTCOME, parked, run.trigger.cause)
        return await self._end(run, step, outcome.code)

    async def _fail(self, run: Run, step: Step, outcome: Fail) -> SagaResult:
        self._stop(run, step, StepStatus.FAILED, OrderState.FAILED, outcome.code, outcome.message)
        await self._timers(run)
        for undone in outcome.compensated:
            run.step(undone).status = StepStatus.COMPENSATED
            run.note("compensated", undone, by=step)
        order = run.order
        revert = reverts_status(order.order_type)
        update = writeback.errored(order.sf_order_id, outcome.code, outcome.message, revert_status=revert)
        await self._publisher.write_back(run, [update])  # with what the order owes Salesforce (its card)
        failed = OrderFulfillmentFailed(
            **_outcome_ids(order), error_code=outcome.code, error_message=outcome.message, step=step
        )
        await self._publisher.send(Topic.FULFILLMENT_OUTCOME, failed, run.trigger.cause)
        return await self._end(run, step, outcome.code, *outcome.compensated)

    async def _finish(self, run: Run) -> SagaResult:
        await self._timers(run)
        order = run.order
        order.state, order.current_step, order.finished_at = OrderState.FULFILLED, None, self._clock()
        order.error_code = order.error_message = None
        await self._publisher.send(Topic.FULFILLMENT_OUTCOME, _fulfilled(run), run.trigger.cause)
        run.note("fulfilled", whmcs_order_id=order.whmcs_order_id, duration_s=_seconds(order.created_at, self._clock()))
        await self._save(run, claim=run.trigger.claim)
        log.info("order_fulfilled", sf_order_id=order.sf_order_id, whmcs_order_id=order.whmcs_order_id)
        return SagaResult(order.sf_order_id, OrderState.FULFILLED)

    def _stop(self, run: Run, step: Step, status: StepStatus, state: OrderState, code: ErrorCode, msg: str) -> None:
        rec = run.step(step)
        rec.status, rec.finished_at = status, self._clock()
        rec.last_error_code, rec.last_error_message = code, msg
        run.order.state, run.order.error_code, run.order.error_message = state, code, msg
        run.note(state.value, step, code=code, message=msg)

    async def _end(self, run: Run, step: Step, code: ErrorCode, *also: Step) -> SagaResult:
        await run.save(step, *also, claim=run.trigger.claim)
        log.info(f"order_{run.order.state}", sf_order_id=run.order.sf_order_id, step=step, code=code)
        return SagaResult(run.order.sf_order_id, run.order.state, step, code)

    async def _save(self, run: Run, *steps: Step, claim: InboxClaim | None = None, early: bool = False) -> None:
        """``run.save`` (which also writes the steps completed since the last save), then the test
        hook's ``committed`` point for each of those completed steps."""
        completed = list(run.unsaved)
        await run.save(*steps, claim=claim, early=early)
        for step in completed:
            self._call_hook(step, "committed")

    def _call_hook(self, step: Step, phase: str) -> None:
        if self._hook is not None:
            self._hook(step, phase)


#: an order in one of these states is not being worked on: a request that runs it starts work (``_announce``)
_NOT_RUNNING = frozenset({OrderState.RECEIVED, OrderState.PARKED, OrderState.FAILED})
#: states whose order may hold a timer (``_timers``)
_TIMED = frozenset({OrderState.PARKED, OrderState.SCHEDULED})


def _step_tags(run: Run, step: Step, attempt: int) -> dict[str, Any] | None:
    """A step span's attributes: the Order Id (the console's trace search), the step, the attempt and
    the WHMCS ids known so far; None (nothing computed) when tracing is off."""
    if not tracing.enabled():
        return None
    order = run.order
    return {
        tracing.ORDER_ID: order.sf_order_id,
        "fleet.saga.step": str(step),
        "fleet.step.attempt": attempt,
        "fleet.whmcs.client_id": order.whmcs_client_id,
        "fleet.whmcs.order_id": order.whmcs_order_id,
    }


def _outcome_tags(outcome: Outcome) -> dict[str, Any]:
    """A step span's outcome attributes: its kind, and the ids a finished step created."""
    tags: dict[str, Any] = {"fleet.step.outcome": type(outcome).__name__}
    if isinstance(outcome, Done):
        tags.update({f"fleet.step.{k}": _scalar(v) for k, v in outcome.ids.items()})
    return tags


def _scalar(value: Any) -> Any:
    """A span attribute value: str/bool/int/float, or a list of one of them; anything else as text."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | bool | int | float) for v in value):
        return list(value)
    return str(value)


def _wanted(record: SagaRecord | None, trigger: Trigger) -> bool:
    """Should this trigger run the order? Resume-only triggers need a matching state; a wake-up is
    stale unless the order is still running, or waiting on exactly this wake-up."""
    state = record.order.state if record else None
    if trigger.only_if is not None and state not in trigger.only_if:
        return False
    if not trigger.wakeup or state == OrderState.RUNNING:
        return True
    if record is None or state != OrderState.WAITING or record.order.current_step is None:
        return False
    waiting = record.steps.get(record.order.current_step)
    return (
        waiting is not None and trigger.cause is not None and waiting.external_ids.get("wakeup_id") == trigger.cause.id
    )


def _fulfilled(run: Run) -> OrderFulfilled:
    services = [int(s) for s in run.ids(Step.WHMCS_CREATE).get("service_ids", [])]
    order = run.order
    return OrderFulfilled(**_outcome_ids(order), whmcs_order_id=order.whmcs_order_id or 0, whmcs_service_ids=services)


def _ledger_check(run: Run) -> LedgerCheck:
    order = run.order
    try:
        plan = run.plan
    except ValidationError:  # none recorded, or written by a release whose plan had other fields
        return LedgerCheck(LedgerVerdict.NO_EVIDENCE, "the ledger's plan cannot be read")
    return check_ledger(plan, order.whmcs_order_id, order.finished_at, run.trigger.snapshot)


def _outcome_ids(order: SagaOrder) -> dict[str, Any]:
    return {
        "sf_order_id": order.sf_order_id,
        "sf_account_id": order.sf_account_id,
        "whmcs_client_id": order.whmcs_client_id,
    }


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return round((end - start).total_seconds(), 3) if start else None
