"""One batch of the cache-invalidator: every record's stale keys gone and its notices published.

Shape: one ``BatchHandler`` for every event type (``workers.runtime.batch``), so a batch runs on
across types. Per batch: one ``id_mappings`` query per id kind (``Directory``), one ``SMEMBERS``
pipeline when some event names a dependency SET, and one pipeline of every event's ``UNLINK``s, its
invalidation notice and, for a fulfillment outcome, its order-status notice (``status``;
``CachePort.invalidate``). What an event makes stale is decided per event by a pure
planner (``plan.PLANNERS``), so the rules read one event at a time; a call with one record
(in-place retries, tests) is a batch of one. Must not decide retries: it returns one outcome per
record and the runtime retries or dead-letters each.

Delivery semantics: at least once. Deleting a key twice is harmless and a repeated notice costs a
portal instance one extra read, so no inbox ledger is kept: a redelivered event simply runs again.
Keys are deleted before the notices are published (one pipeline, which Redis runs in order), so an
instance reacting to either notice re-reads Redis and misses. The runtime commits a record only after
its outcome here is ``None``. Redis or Postgres down → ``DependencyUnavailable`` for every record of
the batch, and the runtime retries each (as a batch of one), then dead-letters; an invalidation is
never dropped silently. A record-specific refusal (an id that cannot be a key segment, a dependency
SET of the wrong type) fails that record alone, never its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from adapters.cache import CachePort, Invalidation, InvalidationNotice
from adapters.mappings import IdMappingsPort
from events.errors import FleetError, InvalidPayload
from workers import cache_keys as ck
from workers.cache_invalidation.directory import Directory
from workers.cache_invalidation.metrics import BustedKeys
from workers.cache_invalidation.plan import PLANNERS, Bust
from workers.cache_invalidation.status import order_status
from workers.runtime.batch import Outcome
from workers.runtime.message import Message

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CacheDeps:
    cache: CachePort
    mappings: IdMappingsPort
    busted: BustedKeys = field(default_factory=BustedKeys)


async def invalidate_batch(msgs: Sequence[Message], *, deps: CacheDeps) -> list[Outcome]:
    """Every record's keys gone and its notice published, in three round trips at most; one outcome
    per record (``None`` = done). A failure of a shared step fails every record still open."""
    outcomes: list[Outcome] = [None] * len(msgs)
    try:
        who = await Directory.load(deps.mappings, [m.event for m in msgs])
        busts = _plan(msgs, who, outcomes)
        members = await _members(deps.cache, busts, outcomes)
        items = _invalidations(msgs, busts, members, outcomes)
        results = await deps.cache.invalidate([item for _, item in items]) if items else []
    except FleetError as exc:  # Postgres or Redis unavailable: nothing of the batch is done
        return [exc if outcome is None else outcome for outcome in outcomes]
    _settle(msgs, items, results, outcomes, deps.busted)
    return outcomes


def _settle(
    msgs: Sequence[Message],
    items: Sequence[tuple[int, Invalidation]],
    results: Sequence[int | FleetError],
    outcomes: list[Outcome],
    busted_keys: BustedKeys,
) -> None:
    """Each pipelined item's result becomes its record's outcome (a refused command fails it alone)."""
    busted = deleted = statuses = 0
    for (i, item), result in zip(items, results, strict=True):
        if isinstance(result, FleetError):
            outcomes[i] = result
            continue
        statuses += item.status is not None
        if item.notice is None:  # an order-status notice alone: nothing was stale
            continue
        busted, deleted = busted + 1, deleted + result
        busted_keys.add(msgs[i].event_type, result)
        notice = item.notice
        log.debug("cache_event_invalidated", event_id=notice.event_id, offset=msgs[i].offset, keys=len(notice.keys),
                  deleted=result, reason=notice.reason)  # fmt: skip
    # One line per batch (under the batch's log context: topic, partition, first offset): at
    # thousands of events a second a line per event cost a fifth of the worker's CPU. Per-event
    # lines are DEBUG; a failed record is logged by the runtime under its own context.
    log.info("cache_invalidated", events=len(msgs), busted=busted, deleted=deleted, statuses=statuses,
             failed=sum(o is not None for o in outcomes))  # fmt: skip


def _plan(msgs: Sequence[Message], who: Directory, outcomes: list[Outcome]) -> dict[int, Bust]:
    busts: dict[int, Bust] = {}
    for i, msg in enumerate(msgs):
        try:
            busts[i] = PLANNERS[type(msg.event)](msg.event, who)
        except ck.InvalidKeyPart as exc:  # a bad payload: dead-letter it, retrying cannot help
            outcomes[i] = InvalidPayload(f"{msg.event_type}: {exc}")
    return busts


async def _members(cache: CachePort, busts: Mapping[int, Bust], outcomes: list[Outcome]) -> dict[str, frozenset[str]]:
    """The members of every dependency SET the batch names, in one round trip. A refused SET (a
    permanent error: wrong type) is then read per event, so it fails only the events naming it."""
    indexes = list(dict.fromkeys(ix for bust in busts.values() for ix in bust.indexes))
    if not indexes:
        return {}
    try:
        return await cache.dependents(*indexes)
    except FleetError as exc:
        if exc.retriable:
            raise
    members: dict[str, frozenset[str]] = {}  # rare: some SET was refused; find whose
    for i, bust in busts.items():
        try:
            members.update(await cache.dependents(*bust.indexes) if bust.indexes else {})
        except FleetError as exc:
            if exc.retriable:
                raise
            outcomes[i] = exc
    return members


def _invalidations(
    msgs: Sequence[Message],
    busts: Mapping[int, Bust],
    members: Mapping[str, frozenset[str]],
    outcomes: list[Outcome],
) -> list[tuple[int, Invalidation]]:
    """Each still-open event's stale keys (its own, then its SETs' members) with its notice, and its
    order-status notice; an event with neither is done (no notice: nothing was stale). An outcome
    that made nothing stale (Activating; an account without cached keys) still gets its status out."""
    items: list[tuple[int, Invalidation]] = []
    for i, bust in busts.items():
        if outcomes[i] is not None:
            continue
        msg = msgs[i]
        found = {ix: members.get(ix, frozenset()) for ix in bust.indexes}
        stale = tuple(dict.fromkeys([*bust.keys, *sorted(m for s in found.values() for m in s)]))
        status = order_status(msg)
        if not stale:
            log.debug("cache_nothing_to_invalidate", event_id=msg.event_id, offset=msg.offset, reason=bust.reason)
            if status is not None:
                items.append((i, Invalidation(None, status=status)))
            continue
        notice = InvalidationNotice(msg.event_id, msg.event_type, stale, bust.reason)
        items.append((i, Invalidation(notice, {ix: sorted(m) for ix, m in found.items() if m}, status)))
    return items
