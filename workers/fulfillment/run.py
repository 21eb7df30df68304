"""One delivery's view of one order (``Run``), why it runs (``Trigger``), and how its events leave (``Publisher``).

Owns the working copy a step reads and changes and the one way it is saved (``Run.save``,
``Run.remember``). Must not decide what runs next or what an outcome means: that is ``saga.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.kafka import ProducerPort
from adapters.saga_store import HistoryEntry, InboxClaim, SagaOrder, SagaRecord, SagaStore, StepRecord
from events.base import DomainEvent, to_envelope
from events.envelope import Envelope
from events.fulfillment import UpdateSalesforceRecord
from events.salesforce import OrderSnapshot
from events.topics import Topic
from workers.fulfillment import writeback
from workers.fulfillment.model import FINISHED, ErrorCode, OrderState, Outcome, Step, seq_of, steps_for
from workers.fulfillment.plan import OrderPlan

Clock = Callable[[], datetime]
#: test-only: called after each step with phase "called" (result not yet committed) or "committed"
StepHook = Callable[[Step, str], None]
#: schedule a wake-up of the order in about ``delay_s``; returns the wake-up's event id
Schedule = Callable[[SagaOrder, float, Envelope | None], Awaitable[str]]


#: in ``sim_assign``'s ids: the card's assignment was published (``Run.owed_updates``)
CARD_SENT = "card_sent"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Trigger:
    """Why the saga runs for an order now. ``only_if`` limits it to orders in those states; a
    ``wakeup`` (scheduled by the saga itself) runs only while it is the order's latest one.
    ``snapshot``: the order and its lines as the request carried them (``validate`` may plan from
    it instead of reading Salesforce). ``status``: the Order's Status the request carried."""

    sf_order_id: str
    reason: str
    sf_account_id: str | None = None
    claim: InboxClaim | None = None
    cause: Envelope | None = None
    only_if: frozenset[OrderState] | None = None
    wakeup: bool = False
    snapshot: OrderSnapshot | None = None
    #: the Order's ``Status`` as the request saw it (None: the trigger does not say, e.g. a wake-up)
    status: str | None = None


@dataclass(frozen=True)
class SagaResult:
    sf_order_id: str
    state: str  # an OrderState, or "duplicate" / "ignored"
    step: Step | None = None
    code: ErrorCode | None = None
    retry_after: float | None = None


class Publisher:
    """Publishes the saga's commands and outcomes as children of the message that caused them.

    ``topics`` maps a catalog topic to the name actually written (default: itself); tests give
    their own names so their commands never reach the fleet's real groups on a shared broker.
    """

    def __init__(self, producer: ProducerPort, source: str, topics: Mapping[Topic, str] | None = None) -> None:
        self._producer = producer
        self._source = source
        self._topics = dict(topics or {})

    async def send(self, topic: Topic, event: DomainEvent, cause: Envelope | None) -> None:
        target = self._topics.get(topic, topic)
        await self._producer.publish(target, child_envelope(event, self._source, cause))

    async def write_back(self, run: Run, updates: Sequence[UpdateSalesforceRecord]) -> int:
        """``updates`` and the writes the order still owes Salesforce (``Run.owed_updates``) to the
        sf-writer, together: one produce request, each on its own key's partition, so the writer
        usually gathers them into one window and one sObject Collections call. Returns how many went.

        What was owed counts as sent only once every produce is acknowledged, and the mark reaches
        Postgres with the delivery's next save: a crash before that save sends it again (absolute
        values: the same fields written twice), never not at all."""
        owed = run.owed_updates()
        commands = [*updates, *owed]
        await asyncio.gather(*(self.send(Topic.SF_WRITEBACK, u, run.trigger.cause) for u in commands))
        if owed:
            run.owed_sent()
        return len(commands)


def child_envelope(event: DomainEvent, source: str, cause: Envelope | None) -> Envelope:
    """``event`` in an envelope that keeps the cause's correlation id and names it as causation."""
    correlation = (cause.correlationid or cause.id) if cause else None
    return to_envelope(event, source=source, correlationid=correlation, causationid=cause.id if cause else None)


class Run:
    """One delivery's working copy of one order; everything it changes is saved through it."""

    def __init__(self, record: SagaRecord, trigger: Trigger, store: SagaStore, clock: Clock) -> None:
        self.record = record
        self.trigger = trigger
        self.store = store
        self.clock = clock
        self.was = (OrderState(record.order.state), record.order.error_code)
        self._history: list[HistoryEntry] = []
        #: steps completed in memory whose records the next ``save`` writes (saga rule 3), and other
        #: step records changed in memory (reopened on resume) that it writes too
        self.unsaved: list[Step] = []
        self.pending: list[Step] = []
        #: a new order's ``OrderActivationStarted`` while Kafka has not acknowledged it (``announce``)
        self._announcing: asyncio.Future[None] | None = None

    @property
    def order(self) -> SagaOrder:
        return self.record.order

    @property
    def plan(self) -> OrderPlan:
        """The validated order; steps after ``validate`` may rely on it."""
        return OrderPlan.model_validate(self.order.plan)

    def step(self, step: Step) -> StepRecord:
        return self.record.steps.setdefault(step, StepRecord(step=step, seq=seq_of(step)))

    def ids(self, step: Step) -> dict[str, Any]:
        return self.step(step).external_ids

    def next_step(self) -> Step | None:
        plan = steps_for(self.order.order_type)
        return next((s for s in plan if self.step(s).status not in FINISHED), None)

    def note(self, kind: str, step: Step | None = None, **detail: Any) -> None:
        self._history.append(HistoryEntry(kind, step, detail, self.clock()))

    async def remember(self, step: Step, **ids: Any) -> None:
        """Commit external ids the moment they are known, before the step finishes."""
        self.ids(step).update(ids)
        self.note("ids_recorded", step, **ids)
        await self.save(step)

    def owed_updates(self) -> list[UpdateSalesforceRecord]:
        """Salesforce writes a finished step left for the order's next ones: the assignment of the
        inventory card ``sim_assign`` took, until it is published (``card_sent``). It waits for the
        write-back (or whatever ends the delivery first: a wait, a park, a failure, an error), so a
        SIM order's card and its Activated travel in one writer call instead of two."""
        taken = self.record.steps.get(Step.SIM_ASSIGN)  # .get: no step record made for other orders
        ids = taken.external_ids if taken is not None else {}
        if not ids.get("card_id") or ids.get(CARD_SENT):
            return []
        order = self.order
        return [writeback.sim_card_assigned(ids["card_id"], order.sf_order_id, order.sf_account_id, ids["sim_type"])]

    def owed_sent(self) -> None:
        """The owed writes are acknowledged by Kafka; the next ``save`` records it."""
        self.ids(Step.SIM_ASSIGN)[CARD_SENT] = True
        self.pending.append(Step.SIM_ASSIGN)

    def announce(self, sending: Awaitable[None]) -> None:
        """Publish a new order's ``OrderActivationStarted`` while the delivery goes on (``save``
        says what may be stored before Kafka acknowledges it)."""
        self._announcing = asyncio.ensure_future(sending)

    async def announced(self) -> None:
        """Wait until the announcement (if any) is acknowledged; raises if its produce failed."""
        sending, self._announcing = self._announcing, None
        if sending is not None:
            await sending

    async def save(self, *steps: Step, claim: InboxClaim | None = None, early: bool = False) -> bool:
        """One transaction: the order, ``steps`` and the steps completed since the last save, the
        history noted meanwhile, and the inbox row of ``claim``.

        ``early`` (a step's attempt, saga rule 2): the save need not wait for a new order's
        ``OrderActivationStarted``. Until Kafka acknowledged it, such a save stores the order as
        ``received``, not running, so a crash then makes the redelivery announce again (at least
        once; it may arrive twice, as after a crash before the first save). Every other save (a
        delivery's end, an error) waits for the acknowledgement first: no save stores the order
        in a state that ends the announcing (``saga._announce``) before it is out."""
        order = self.order
        if self._announcing is not None:
            if early and not self._announcing.done():
                order = dataclasses.replace(order, state=OrderState.RECEIVED)
            else:
                await self.announced()
        self.order.updated_at = order.updated_at = self.clock()
        history, self._history = self._history, []
        names = list(dict.fromkeys([*self.pending, *self.unsaved, *steps]))
        saved = await self.store.save(order, [self.step(s) for s in names], history, claim)
        self.unsaved.clear()
        self.pending.clear()
        return saved


StepFn = Callable[[Run], Awaitable[Outcome]]
