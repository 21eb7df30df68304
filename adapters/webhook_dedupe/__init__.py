"""Webhook-id deduplication for the ingress receivers, in Redis: at most one request produces a webhook id.

System: Redis >= 7.0 (``SET ... NX PX ... GET`` inside one Lua script), through redis-py's asyncio
client. Owns the in-progress and done marks of each webhook id and their expiry. Must not decide
what a receiver answers, read configuration or build its client. Same shape as every adapter:
``port`` (``DedupeStore``, ``Claim``), ``redis`` (``RedisDedupeStore``), ``fake`` (``FakeDedupeStore``).
"""

from adapters.webhook_dedupe.fake import FakeDedupeStore
from adapters.webhook_dedupe.port import DONE, INFLIGHT, Claim, DedupeStore, ErrorListener
from adapters.webhook_dedupe.redis import COMPLETE_LINGER_S, MAX_MARKS_PER_CALL, RedisDedupeStore

__all__ = [
    "COMPLETE_LINGER_S",
    "DONE",
    "INFLIGHT",
    "MAX_MARKS_PER_CALL",
    "Claim",
    "DedupeStore",
    "ErrorListener",
    "FakeDedupeStore",
    "RedisDedupeStore",
]
