"""The sf-writer route: ``UpdateSalesforceRecord`` commands → coalesced sObject Collections writes.

Owns the wiring of the writer (this package) into the runtime's batch-handler mode, the translation
of the writer's outcomes into the runtime's (a budget deferral becomes ``Defer``), the dispatch table
(in ``bind_sf_writer``) and ``bind(deps)``, which ``workers.routes`` imports. Must not call
Salesforce for anything but these writes, nor decide retries: per-record errors are the writer's
outcomes, and the runtime retries or dead-letters each record on its own. Must not import
``workers.routes`` or ``workers.bootstrap`` (they import this module).

Delivery semantics: at least once. A record is committed only after its write succeeded (or its
retry / dead-letter copy was acknowledged), so a crash rewrites the same values: field writes are
idempotent. Commands of one record share a partition (keyed by record id) and are written in
offset order; a retried older command never overwrites a field a newer one already wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from adapters.salesforce.port import COLLECTION_LIMIT, SalesforcePort
from events.base import DomainEvent
from events.errors import FleetError
from events.fulfillment import UpdateSalesforceRecord
from workers.config import Settings
from workers.runtime.batch import BatchHandler, Defer, Outcome
from workers.runtime.message import Message
from workers.runtime.route import Handler
from workers.sf_writer.governor import DEFERRED_CODE, BudgetGovernor
from workers.sf_writer.metrics import SfWriterCollector
from workers.sf_writer.window import BatchWindow
from workers.sf_writer.writer import Pending, SalesforceWriter

if TYPE_CHECKING:
    from workers.bootstrap import Deps


async def write_salesforce_updates(msgs: Sequence[Message], *, window: BatchWindow) -> list[Outcome]:
    # the source position orders commands of one record, also when one comes back from a retry tier
    pending = [Pending(m.event, (m.source_partition, m.source_offset)) for m in msgs]
    outcomes = await window.write(pending)
    return [_for_runtime(outcome) for outcome in outcomes]


def _for_runtime(outcome: BaseException | None) -> Outcome:
    if isinstance(outcome, FleetError) and outcome.code == DEFERRED_CODE:
        return Defer(outcome)  # not a failure: on to the next tier now, breaker untouched
    return outcome


def build_sf_writer(
    *,
    salesforce: SalesforcePort,
    settings: Settings,
    usage: Callable[[], tuple[int, int] | None] | None = None,
    linger_s: float = 0.005,
) -> BatchWindow:
    """The writer behind the handler (exposed so the composition root can export its stats).

    ``usage`` defaults to ``salesforce.api_usage``; pass a shared tracker when several adapters of
    one process spend the same org's budget. The deferral asks for a delay just above the
    runtime's in-place back-off cap, so a deferred record leaves the partition at once. Which
    command is low priority is decided where it is built (``workers.fulfillment.writeback``)."""
    sf = settings.salesforce
    governor = BudgetGovernor(
        low_priority_share=sf.api_budget_share_for_low_priority,
        usage=usage or salesforce.api_usage,
        defer_s=settings.runtime.backoff_max_s + 1.0,
        max_age_s=sf.api_usage_max_age_s,
    )
    writer = SalesforceWriter(salesforce, governor, max_concurrent_calls=sf.max_concurrent_calls)
    return BatchWindow(writer, linger_s=linger_s)


class SfWriterHandler(BatchHandler):
    """The route's handler; carries its ``window`` and the ``collector`` of the writer's metrics."""

    def __init__(self, window: BatchWindow, *, max_batch: int = COLLECTION_LIMIT) -> None:
        async def write(msgs: Sequence[Message]) -> list[Outcome]:
            return await write_salesforce_updates(msgs, window=window)

        super().__init__(write, max_batch=max_batch)
        self.window = window
        self.collector = SfWriterCollector(window.writer)


def bind_sf_writer(
    *,
    salesforce: SalesforcePort,
    settings: Settings,
    usage: Callable[[], tuple[int, int] | None] | None = None,
    window: BatchWindow | None = None,
    max_batch: int = COLLECTION_LIMIT,
) -> dict[type[DomainEvent], Handler]:
    """The sf-writer's dispatch table, for ``Route(handlers=...)`` on ``Topic.SF_WRITEBACK``. The
    handler's ``collector`` (API usage, deferrals by priority, calls in flight) is served by the
    worker that runs the route (``Worker`` registers a handler's collector on its /metrics)."""
    window = window or build_sf_writer(salesforce=salesforce, settings=settings, usage=usage)
    return {UpdateSalesforceRecord: SfWriterHandler(window, max_batch=max_batch)}


def bind(deps: Deps) -> dict[type[DomainEvent], Handler]:
    """The route's handlers (``workers.routes`` imports this): the writer over the root's
    ``HttpSalesforce`` (which tags every write with ``SalesforceSettings.call_options_client``)."""
    return bind_sf_writer(salesforce=deps.salesforce, settings=deps.settings)
