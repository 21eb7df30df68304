"""The cache-invalidator route: its dispatch table and ``bind(deps)``, which ``workers.routes`` imports.

Owns the binding of the batch (``batch.invalidate_batch``) to its ports and the batch size. Must
not decide what is stale (``plan``) nor import ``workers.routes`` or ``workers.bootstrap`` (they
import this module).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from adapters.cache import CachePort, RedisCache
from adapters.mappings import IdMappingsPort, PgIdMappings
from events.base import DomainEvent
from workers.cache_invalidation.batch import CacheDeps, invalidate_batch
from workers.cache_invalidation.plan import PLANNERS
from workers.runtime.batch import BatchHandler
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.bootstrap import Deps

#: records per batch call: at most this many ids in one ``= ANY`` query and a few hundred commands
#: in one pipeline (~1 ms each side); larger batches add latency to the batch's first record
MAX_BATCH = 200


def bind_cache_invalidator(
    *, cache: CachePort, mappings: IdMappingsPort, max_batch: int = MAX_BATCH
) -> dict[type[DomainEvent], Handler]:
    """The cache-invalidator's dispatch table, for ``Route(handlers=...)``: every type of ``PLANNERS``
    → one shared ``BatchHandler`` (one object, so a batch is not cut where the event type changes)."""
    deps = CacheDeps(cache, mappings)
    handler = BatchHandler(partial(invalidate_batch, deps=deps), max_batch=max_batch)
    handler.collector = deps.busted  # type: ignore[attr-defined]  # the worker serves it on /metrics
    return dict.fromkeys(PLANNERS, handler)


def bind(deps: Deps) -> dict[type[DomainEvent], Handler]:
    """The route's handlers (``workers.routes`` imports this): the real adapters over the root's
    Redis client (notices on ``RedisSettings.invalidation_channel``, order-status notices on
    ``RedisSettings.order_status_channel``) and PostgreSQL pool."""
    redis = deps.settings.redis
    cache = RedisCache(deps.redis, channel=redis.invalidation_channel, status_channel=redis.order_status_channel)
    return bind_cache_invalidator(cache=cache, mappings=PgIdMappings(deps.pool))
