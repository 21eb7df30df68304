"""The WHMCS webhook receiver (``fleet run whmcs-webhooks``): aiohttp app, signature check, metrics.

``POST /webhooks/whmcs`` takes Standard Webhooks requests (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), checks them in this order and
answers with the first rule that applies:

    413  body over the limit (Content-Length, or counted while streaming: never buffered whole)
    401  signature headers missing, timestamp malformed or outside the tolerance, no valid signature
    400  not JSON, unknown event, invalid payload, webhook-id not 1-256 visible ASCII characters
         (such signed bodies go to the ingress DLQ first, so nothing a real sender signed is lost)
    200  webhook-id already done: nothing produced again
    409  webhook-id in progress in another request (Retry-After): the sender retries, and then gets 200
    503  Kafka did not acknowledge (Retry-After); nothing is marked done, so the retry produces again
    200  produced and acknowledged by all in-sync replicas

Delivery semantics: 2xx is the sender's signal to forget the webhook, so it is sent only after
Kafka acknowledged (``acks=all``). The record's CloudEvent id is derived from the webhook id
(``whmcs-webhook:<id>``), so whatever slips past the Redis marks (an ack lost after the write, Redis
forgetting a mark) is removed downstream by the per-group inbox, which dedupes on that id.
Concurrent requests share their Redis calls (``adapters.webhook_dedupe``) and their Kafka batches
(``adapters.kafka.BatchingProducer``), both gathered by the fleet's one coalescer
(``adapters.coalescer``); each one is still answered after its own claim and its own record's
acknowledgement, so sharing changes the cost per webhook, not what a 2xx promises. Under load
(``CLAIM_BUSY_RATE``) a claim call waits a few ms for more claims (``CLAIM_LINGER_S``, or until
``CLAIM_FILL`` are queued): the claims answered together then leave as one Kafka round too, so at
a few hundred webhooks per second the receiver makes one Redis call and one produce request per
several webhooks instead of one each; no timer runs per request or per loop turn. The done mark
is queued rather than awaited: it rides with the next claim (which it always precedes), so this
receiver answers a later copy ``duplicate`` as before; see ``adapters.webhook_dedupe`` for the few
ms in which another process would answer 409 instead.

Refused but signed (the 400s): ``_dead_letter`` keeps the body on ``ingress.dlq.v1`` (key and
``webhook_id`` header = the webhook-id, value = the body byte for byte, header ``ingress``, then the
provenance every dead letter carries, ``events.failure.provenance``: ``error_code`` = the 400's code,
``error_message`` its reason, ``first_failed_at``/``last_failed_at``, the source coordinates empty).
``fleet dlq list|show -g ingress`` shows them; once the cause is fixed (a schema that accepts the
body), ``fleet dlq replay -g ingress`` runs the body through ``parse_body`` and ``translate`` again
and produces the event to ``whmcs.billing.v1`` with the CloudEvent id this receiver would have used
(``workers.dlq.ingress``), audited and resumable; a body that still fails is refused there, and
nothing is sent for it.

Owns: HTTP, signature verification, the dedupe/produce order, metrics and health routes. Must not:
interpret payloads (``whmcs_webhooks.translate`` does) or read the environment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import gc
import hashlib
import hmac
import itertools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from pydantic import ValidationError
from redis.asyncio import Redis

from adapters import tracing
from adapters.coalescer import ByRate
from adapters.kafka import BatchingProducer, KafkaSecurityError, ProducerPort, start_client
from adapters.webhook_dedupe import Claim, DedupeStore, RedisDedupeStore
from events import envelope as ce
from events import failure as fh
from events.base import DomainEvent
from events.errors import DependencyUnavailable
from events.topics import Topic
from schemas.whmcs_webhook import WhmcsWebhook, parse_webhook
from workers import bootstrap
from workers.config import ConfigError, Settings
from workers.crashpoints import crash_point
from workers.ingress.whmcs_webhooks import translate
from workers.runtime import gc_policy

log = structlog.get_logger(__name__)

PATH = "/webhooks/whmcs"
#: the ``ingress`` header of this receiver's dead letters (``fleet dlq replay -g ingress`` re-ingests them)
INGRESS_NAME = b"whmcs-webhooks"
SOURCE = "/fleet/whmcs-webhooks"
H_ID, H_TIMESTAMP, H_SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"
MAX_WEBHOOK_ID = 256
WEBHOOK_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_WEBHOOK_ID}}}")
#: the webhook path waits this long for an ack, then answers 503: a slow ack means Kafka is in trouble
PRODUCE_TIMEOUT_S = 5.0
#: under load, how long a Kafka round may wait to grow to twice the one before (``BatchingProducer``);
#: Kafka's own producer lingers 5 ms by default (``linger.ms``, clients 4.0)
PRODUCE_LINGER_S = 0.002
#: while webhooks arrive at this rate or more (per second, over the last second) a claim call waits
#: up to ``CLAIM_LINGER_S`` from its oldest claim (Kafka's own ``linger.ms`` default), or until
#: ``CLAIM_FILL`` claims are queued, or as long as that many take to arrive at the current rate
#: (``ByRate``), so one Redis call and one Kafka round serve several webhooks; below it none waits.
#: On the ingress bench (short interleaved runs, 2-core VM): CPU per webhook at 2,000/s ~210-220 us
#: against ~420-460 without it, at 500/s ~400-500 against ~720-880; p50 there 4 and 5.5 ms against
#: 1.5 ms; the maximum unchanged. A fill of 8 cost more at 2,000/s (~260-270 us); a 20 ms linger
#: with a fill of 32 saved a further ~15% at 500/s for a p50 of 15 ms.
CLAIM_BUSY_RATE = 200.0
CLAIM_LINGER_S = 0.005
CLAIM_FILL = 16
#: an in-progress mark outlives the longest produce we wait for, so it cannot expire under its owner
INFLIGHT_TTL_S = 6 * PRODUCE_TIMEOUT_S
RETRY_AFTER_IN_PROGRESS_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5
REDIS_TIMEOUT_S = 1.0
DEDUPE_PREFIX = "fleet:webhook:whmcs:"
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700), see _freeze_gc
# (not the runtime's timed collections: the receiver has no poll loop to time them from)
GC_FULL_EVERY = 100  # gen-1 collections between two full ones, as the consume runtime's default


# --- signatures ------------------------------------------------------------------------------------
class SignatureError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after the ``whsec_`` prefix."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "==")
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("a webhook secret is not base64 after 'whsec_'") from exc
    if not key:
        raise ConfigError("a webhook secret is empty")
    return key


class SignatureVerifier:
    """Standard Webhooks v1 verification, equivalent to ``standardwebhooks.Webhook.verify`` plus:
    several secrets (rotation: any one valid), a configurable tolerance, an injectable clock, and
    never an exception other than ``SignatureError`` on hostile input. HMAC objects are keyed once
    and copied per request, which skips re-deriving the key pads."""

    def __init__(self, secrets: Sequence[str], *, tolerance_s: float, clock: Callable[[], float] = time.time) -> None:
        if not secrets:
            raise ConfigError("no webhook secret configured")
        self._keys = tuple(hmac.new(decode_secret(s), digestmod=hashlib.sha256) for s in secrets)
        self._tolerance_s = tolerance_s
        self._clock = clock

    def verify(self, msg_id: str | None, timestamp: str | None, signature: str | None, body: bytes) -> None:
        if not (msg_id and timestamp and signature):
            raise SignatureError(
                "missing_signature", "webhook-id, webhook-timestamp and webhook-signature are required"
            )
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 15):
            raise SignatureError("invalid_timestamp", "webhook-timestamp must be integer seconds since the epoch")
        if abs(self._clock() - int(timestamp)) > self._tolerance_s:
            raise SignatureError("stale_timestamp", f"webhook-timestamp is more than {self._tolerance_s:g} s away")
        offered = _v1_signatures(signature)
        signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogateescape")
        for key in self._keys:
            mac = key.copy()
            mac.update(signed)
            mac.update(body)
            digest = mac.digest()
            for candidate in offered:  # a loop, not any(<generator>): a generator object per request otherwise
                if hmac.compare_digest(digest, candidate):
                    return
        raise SignatureError("invalid_signature", "no v1 signature matches any active secret")


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a space-separated header; other versions and junk are skipped."""
    found = []
    for part in header.split():
        version, comma, value = part.partition(",")
        if version == "v1" and comma:
            try:  # strict: what b64decode(validate=True) refuses, and more; without its per-call regex
                found.append(binascii.a2b_base64(value, strict_mode=True))
            except (binascii.Error, ValueError):
                continue
    return found


# --- metrics ---------------------------------------------------------------------------------------
#: upper bounds of ``fleet_whmcs_webhooks_produce_seconds``
PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: their ``le`` labels, spelled as ``Histogram`` spells them
_PRODUCE_LE = (*(floatToGoString(b) for b in PRODUCE_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class Metrics:
    """Prometheus metrics in their own registry (several receivers may live in one test process).

    The per-request ones (``received``, ``produced``, ``duplicate``, ``observe_produce``) are plain
    numbers here, exposed by a collector at scrape time with the names, types and samples
    ``Counter``/``Histogram`` would give them: prometheus_client takes a lock per update and walks
    the buckets in Python, ~1 us per accepted webhook, and this receiver updates them from one event
    loop thread only. The rare ones (rejections, dedupe errors) stay ordinary counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.received = self.produced = self.duplicate = 0
        self.produce_counts = [0] * (len(PRODUCE_BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.produce_sum = 0.0
        self.created = time.time()
        r.register(_RequestCollector(self))
        self.rejected = Counter("fleet_whmcs_webhooks_rejected", "Non-2xx answers by reason", ["reason"], registry=r)
        self.dedupe_down = Counter(
            "fleet_whmcs_webhooks_dedupe_unavailable", "Dedupe store errors (the request went on unmarked)", registry=r
        )

    def observe_produce(self, seconds: float) -> None:
        self.produce_counts[bisect.bisect_left(PRODUCE_BUCKETS, seconds)] += 1  # le: value <= bound
        self.produce_sum += seconds


class _RequestCollector(Collector):
    """``Metrics``' per-request numbers as ``Counter``/``Histogram`` would expose them."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return self._families(describe=True)

    def collect(self) -> list[Metric]:
        return self._families(describe=False)

    def _families(self, *, describe: bool) -> list[Metric]:
        m, created = self._m, self._m.created
        received = CounterMetricFamily("fleet_whmcs_webhooks_received", "Webhook requests")
        accepted = CounterMetricFamily("fleet_whmcs_webhooks_accepted", "2xx answers by outcome", labels=["outcome"])
        produce = HistogramMetricFamily(
            "fleet_whmcs_webhooks_produce_seconds", "From produce to the acks=all acknowledgement"
        )
        if describe:
            return [received, accepted, produce]
        received.add_metric([], m.received, created=created)
        accepted.add_metric(["produced"], m.produced, created=created)
        accepted.add_metric(["duplicate"], m.duplicate, created=created)
        cumulative = itertools.accumulate(m.produce_counts)
        produce.add_metric([], list(zip(_PRODUCE_LE, cumulative, strict=True)), m.produce_sum)
        produce.samples.append(Sample("fleet_whmcs_webhooks_produce_seconds_created", {}, created))
        return [received, accepted, produce]


# --- the receiver ----------------------------------------------------------------------------------
class Rejection(Exception):
    """A non-2xx answer: ``{"error": code, "reason": reason}`` (+ Retry-After when the sender should retry)."""

    def __init__(self, status: int, code: str, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.retry_after = status, code, reason, retry_after


def error_response(status: int, code: str, reason: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


class WebhookReceiver:
    """The ``POST /webhooks/whmcs`` handler and its dependencies; ``producer`` may arrive later."""

    def __init__(
        self,
        *,
        verifier: SignatureVerifier,
        dedupe: DedupeStore,
        producer: ProducerPort | None,
        max_body_bytes: int,
        topic: str = Topic.WHMCS_BILLING,
        dlq_topic: str = Topic.INGRESS_DLQ,
        metrics: Metrics | None = None,
    ) -> None:
        self.verifier, self.dedupe, self.producer = verifier, dedupe, producer
        self.max_body_bytes, self.topic, self.dlq_topic = max_body_bytes, topic, dlq_topic
        self.metrics = metrics or Metrics()
        # a generator expression would draw a uuid4 per request; the prefix is drawn once
        self._owners = map(f"{uuid.uuid4().hex[:12]}-{{}}".format, itertools.count())

    async def handle(self, request: web.Request) -> web.Response:
        self.metrics.received += 1
        webhook_id = request.headers.get(H_ID, "")
        try:
            payload = await self._admit(request, webhook_id)
            return await self._deliver(webhook_id, payload)
        except Rejection as rejection:
            return self._reject(webhook_id, rejection)

    async def _admit(self, request: web.Request, webhook_id: str) -> WhmcsWebhook:
        """413 → 401 → 400: nothing is parsed before it is authenticated."""
        body = await self._read(request)
        headers = request.headers
        try:
            self.verifier.verify(webhook_id, headers.get(H_TIMESTAMP), headers.get(H_SIGNATURE), body)
        except SignatureError as exc:
            raise Rejection(401, exc.code, exc.reason) from None
        try:
            if not WEBHOOK_ID.fullmatch(webhook_id):  # it becomes a Redis key, a CloudEvent id, a log field
                raise Rejection(
                    400, "invalid_webhook_id", f"webhook-id must be 1-{MAX_WEBHOOK_ID} visible ASCII characters"
                )
            return parse_body(body)
        except Rejection as rejection:
            raise await self._dead_letter(webhook_id, body, rejection) from None

    async def _read(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise self._too_large()
        try:  # aiohttp counts while streaming (client_max_size) and stops at the limit
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None

    def _too_large(self) -> Rejection:
        return Rejection(413, "body_too_large", f"body over {self.max_body_bytes} bytes")

    async def _deliver(self, webhook_id: str, payload: WhmcsWebhook) -> web.Response:
        # Mark before producing, so two concurrent copies of one webhook cannot both produce; mark
        # done only after the ack, so a crash in between leaves a short-lived mark, never a false "done".
        owner = next(self._owners)
        try:  # the store's future, awaited here: one frame less to resume than a helper coroutine
            claim: Claim | None = await self.dedupe.claim(webhook_id, owner)
        except DependencyUnavailable as exc:
            # Redis down: accept anyway (fail open). Kafka is the record; the deterministic CloudEvent id
            # makes a duplicate harmless downstream, while refusing would stall billing ingestion on a cache.
            self.dedupe_failed(webhook_id, exc)
            claim = None
        if claim is Claim.DUPLICATE:
            self.metrics.duplicate += 1
            return _json_ok(b'{"status":"duplicate","webhook_id":%b}' % _json_str(webhook_id))
        if claim is Claim.IN_PROGRESS:
            raise Rejection(409, "in_progress", "this webhook-id is being processed; retry", RETRY_AFTER_IN_PROGRESS_S)
        try:
            acknowledged, count = self._publish(webhook_id, payload)
            started = time.perf_counter()
            await acknowledged
            crash_point("whmcs-webhooks.produced")  # chaos runs: on Kafka, the sender not yet answered
        except BaseException as exc:
            if claim is Claim.NEW:  # let the sender's retry count as new
                await self._quietly(self.dedupe.release(webhook_id, owner))
            if isinstance(exc, DependencyUnavailable):
                raise Rejection(503, "kafka_unavailable", str(exc), RETRY_AFTER_UNAVAILABLE_S) from None
            raise
        self.metrics.observe_produce(time.perf_counter() - started)
        if claim is Claim.NEW:  # queued: rides with the next claim, so the answer waits for no Redis call
            self.dedupe.complete(webhook_id)
        self.metrics.produced += 1  # no per-webhook log line: the counters say it, rejections are logged
        return _json_ok(b'{"status":"accepted","webhook_id":%b,"events":%d}' % (_json_str(webhook_id), count))

    async def _quietly(self, call: Awaitable[None]) -> None:
        try:
            await call
        except DependencyUnavailable as exc:  # the mark expires by itself; inboxes dedupe the rest
            self.dedupe_failed(None, exc)

    def dedupe_failed(self, webhook_id: str | None, exc: DependencyUnavailable) -> None:
        self.metrics.dedupe_down.inc()
        log.warning("webhook_dedupe_unavailable", webhook_id=webhook_id, error=str(exc))

    def _publish(self, webhook_id: str, payload: WhmcsWebhook) -> tuple[asyncio.Future[Any], int]:
        """The webhook's records handed to the producer, and how many: the future settles at their
        acknowledgement. A future, not a coroutine: ``_deliver`` awaits it directly."""
        producer = self.producer
        if producer is None:
            raise DependencyUnavailable("kafka producer not started yet", upstream="kafka")
        occurred = payload.occurred_at if payload.occurred_at.tzinfo else payload.occurred_at.replace(tzinfo=UTC)
        futures = [
            producer.submit(self.topic, *encode_record(event, event_id_of(webhook_id, n), occurred))
            for n, event in enumerate(translate(payload, webhook_id=webhook_id))
        ]
        # Every hook today has one record: its own future, no gather around it. Several share a key,
        # so one partition; a failure of any one answers 503 and the retry re-sends all.
        return (futures[0] if len(futures) == 1 else asyncio.gather(*futures)), len(futures)

    async def _dead_letter(self, webhook_id: str, body: bytes, rejection: Rejection) -> Rejection:
        """Keep a signed body we cannot read (a hook file newer than this receiver, say) for replay.
        400 only once it is on the ingress DLQ; if Kafka cannot take it, 503 so the sender retries."""
        if self.producer is None:
            return Rejection(503, "kafka_unavailable", "kafka producer not started yet", RETRY_AFTER_UNAVAILABLE_S)
        key = webhook_id.encode("utf-8", "surrogateescape")
        headers = [(fh.WEBHOOK_ID, key), (fh.INGRESS, INGRESS_NAME), *dead_letter_provenance(rejection, time.time())]
        try:
            await self.producer.publish_raw(self.dlq_topic, key, body, headers)
        except DependencyUnavailable as exc:
            return Rejection(503, "kafka_unavailable", str(exc), RETRY_AFTER_UNAVAILABLE_S)
        return rejection

    def _reject(self, webhook_id: str, rejection: Rejection) -> web.Response:
        self.metrics.rejected.labels(rejection.code).inc()
        level = log.error if rejection.status >= 500 else log.warning
        level(
            "webhook_rejected",
            webhook_id=webhook_id,
            status=rejection.status,
            error=rejection.code,
            reason=rejection.reason,
        )
        response = error_response(rejection.status, rejection.code, rejection.reason, rejection.retry_after)
        if rejection.status == 413:
            response.force_close()  # do not keep reading a body we refused
        return response


def dead_letter_provenance(rejection: Rejection, now: float) -> list[tuple[str, bytes]]:
    """The provenance headers of a refused body (``events.failure.provenance``, as the runtime's
    dead letters carry): no handler ran (0 attempts), and there is no source partition, offset or
    consumer group, so those are empty. The code says which refusal it was (the class is always
    ``Rejection``); a body that fits no model failed ``validate``, anything else ``decode``."""
    stamp = fh.iso_utc(now)
    return fh.provenance(
        error_class=fh.class_of(rejection),
        error_code=rejection.code,
        error_message=rejection.reason,
        stage=fh.Stage.VALIDATE if rejection.code == "invalid_payload" else fh.Stage.DECODE,
        attempts=0,
        first_failed_at=stamp,
        last_failed_at=stamp,
    )


def encode_record(
    event: DomainEvent, event_id: str, occurred: datetime
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The Kafka record of one event: ``to_record(to_envelope(event, source=SOURCE, id=event_id))``
    with ``time = occurred``, without building the ``Envelope`` in between. That model costs two
    pydantic validations and a dict round trip per webhook, a fifth of the receiver's own work; here
    the event serialises itself once (pydantic-core) and the headers come from the same
    ``binary_headers`` as ``to_record``'s. ``test_webhook_receiver`` pins the result to the envelope
    path for every hook."""
    key = event.key()
    headers = ce.binary_headers(id=event_id, source=SOURCE, type=event.TYPE, time=occurred, subject=key)
    return key.encode(), event.model_dump_json().encode(), headers


_JSON_HEADERS = {"Content-Type": ce.JSON}


def _json_ok(body: bytes) -> web.Response:
    # the two 200 answers are formatted, not json.dumps'd: a dict and an encoder per webhook otherwise
    return web.Response(body=body, headers=_JSON_HEADERS)


def _json_str(value: str) -> bytes:
    return encode_basestring_ascii(value).encode()  # what json.dumps does for a str, without the encoder object


def event_id_of(webhook_id: str, index: int) -> str:
    """The deterministic CloudEvent id of a webhook's ``index``-th event (a re-delivery, or a replay of
    its dead letter, produces the same id: downstream inboxes drop the copy)."""
    return f"whmcs-webhook:{webhook_id}" if index == 0 else f"whmcs-webhook:{webhook_id}:{index}"


def parse_body(body: bytes) -> WhmcsWebhook:
    """The webhook body as the receiver reads it, or the ``Rejection`` it answers (also what a replay
    of an ingress dead letter runs again)."""
    # pydantic-core parses and validates the bytes in one pass (~2 µs here, faster than json.loads alone)
    try:
        return parse_webhook(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> Rejection:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return Rejection(400, "malformed_json", f"body is not JSON: {first['msg']}")
    if first["type"] == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag", "?")
        return Rejection(400, "unknown_event", f"unknown event {str(tag)[:100]!r}")
    where = ".".join(str(part) for part in first["loc"][1:]) or "body"  # loc[0] is the event name
    return Rejection(400, "invalid_payload", f"{where}: {first['msg']}")


# --- the application -------------------------------------------------------------------------------
@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """aiohttp's own errors (404, 405) and our bugs answer JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("webhook_receiver_error", path=request.path, webhook_id=request.headers.get(H_ID))
        return error_response(500, "internal_error", "unexpected error; see the receiver's logs")


def build_app(receiver: WebhookReceiver) -> web.Application:
    middlewares: list[Any] = [json_errors]
    if tracing.enabled():  # a SERVER span per request, the parent of its produce (docs/tracing.md)
        middlewares.insert(0, tracing.aiohttp_middleware([PATH]))
    app = web.Application(middlewares=middlewares, client_max_size=receiver.max_body_bytes)
    app.router.add_post(PATH, receiver.handle)
    app.router.add_get("/metrics", _metrics_handler(receiver.metrics))
    app.router.add_get("/livez", _live)
    app.router.add_get("/readyz", _ready_handler(receiver))
    return app


def _metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


async def _live(_request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


def _ready_handler(receiver: WebhookReceiver) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        if receiver.producer is None:
            return error_response(503, "not_ready", "kafka producer not started", RETRY_AFTER_UNAVAILABLE_S)
        return web.json_response({"status": "ready"})

    return handler


# --- the entrypoint --------------------------------------------------------------------------------
def make_receiver(
    settings: Settings, *, producer: ProducerPort | None, redis: Redis, **overrides: Any
) -> WebhookReceiver:
    """The receiver as ``serve`` builds it; tests and the benchmark override ``topic``/``dlq_topic``."""
    cfg = settings.whmcs
    if cfg.webhook_dedupe_ttl_s <= cfg.webhook_tolerance_s:
        raise ConfigError("FLEET_WHMCS__WEBHOOK_DEDUPE_TTL_S must exceed FLEET_WHMCS__WEBHOOK_TOLERANCE_S")
    receiver: WebhookReceiver  # a done mark that cannot be written is counted and logged like any dedupe error
    store = RedisDedupeStore(
        redis,
        prefix=DEDUPE_PREFIX,
        inflight_ttl_s=INFLIGHT_TTL_S,
        done_ttl_s=cfg.webhook_dedupe_ttl_s,
        on_error=lambda exc: receiver.dedupe_failed(None, exc),
        timeout_s=REDIS_TIMEOUT_S,
        claim_linger=ByRate(busy_s=CLAIM_LINGER_S, busy_rate=CLAIM_BUSY_RATE, fill=CLAIM_FILL),
    )
    verifier = SignatureVerifier(
        [s.get_secret_value() for s in cfg.webhook_secrets], tolerance_s=cfg.webhook_tolerance_s
    )
    receiver = WebhookReceiver(
        verifier=verifier, dedupe=store, producer=producer, max_body_bytes=cfg.webhook_max_body_bytes, **overrides
    )
    return receiver


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    producer: ProducerPort | None = None,
    redis: Redis | None = None,
    configure: Callable[[web.Application], None] | None = None,
    **overrides: Any,
) -> None:
    """Serve until ``stop`` is set; builds the Redis client and the Kafka producer unless injected.

    The HTTP side starts first and answers 503 until the producer is up (``/readyz`` says so), so
    a Kafka outage at boot is a retry for the sender, not a crash loop; Kafka refusing the
    configured credentials or certificate is not an outage, and stops the receiver with
    ``KafkaSecurityError`` (one line from the CLI) instead of retrying for ever. On stop, in-flight requests
    finish (their acks included) before the producer is flushed and closed. ``overrides`` go to
    ``WebhookReceiver`` (tests inject ``topic``/``dlq_topic``).
    """
    own_redis = redis is None
    client = redis or _redis_client(settings)
    receiver = make_receiver(settings, producer=producer, redis=client, **overrides)
    app = build_app(receiver)
    if configure is not None:  # the benchmark adds its bare route to the very same app
        configure(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.runtime.shutdown_grace_s, lingering_time=2.0)
    finished = asyncio.Event()
    frozen = False
    kafka = None if producer else asyncio.create_task(_own_producer(settings, receiver, finished))
    try:
        await runner.setup()
        host, port = settings.whmcs.webhook_listen_host, settings.whmcs.webhook_listen_port
        await web.TCPSite(runner, host, port).start()
        log.info("webhook_receiver_listening", host=host, port=port, path=PATH, topic=receiver.topic)
        frozen = _freeze_gc()
        await _until_stopped(stop, kafka)
    finally:
        await runner.cleanup()
        if frozen:
            gc_policy.unfreeze()
        await receiver.dedupe.flush()  # the done marks of the last answers, before the client closes
        finished.set()
        if kafka is not None:
            await kafka
        if own_redis:
            await client.aclose()


def _freeze_gc() -> bool:
    """The consume runtime's collector tuning (start-up heap frozen, full collections 100 gen-1 apart,
    shared per process with any worker), plus rarer young collections. Per webhook the receiver
    allocates a few hundred container objects that refcounting frees, and nearly nothing cyclic; with
    the default threshold (700) a young collection ran every ~70 webhooks and, with the requests in
    flight promoted each time, full collections of ~70 ms came every ~10,000: ~10 us per webhook at
    full load (a tenth of the receiver's CPU) and the 30-100 ms p99 of the benchmark's max runs. At
    20,000 a young collection still scans only what is in flight, ~30 times less often; the cost is
    cyclic garbage (a failure's traceback) living until the next one, a few MB at most."""
    gc_policy.freeze(GC_FULL_EVERY)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return True


def _redis_client(settings: Settings) -> Redis:
    # One attempt, short timeouts: the receiver fails open on dedupe errors, so retrying inside the
    # client would only delay the answer (a blackholed Redis would cost seconds per request). The
    # dedupe store bounds each call (``REDIS_TIMEOUT_S``), not the socket: see ``RedisDedupeStore``.
    # hiredis parses the replies: about 5% of the receiver's CPU per webhook at full load.
    return bootstrap.redis_client(settings, socket_timeout=None, connect_timeout=REDIS_TIMEOUT_S)


async def _until_stopped(stop: asyncio.Event, kafka: asyncio.Task[None] | None) -> None:
    """Until ``stop`` is set, or the producer task ended with an error (a refused credential)."""
    if kafka is None:
        await stop.wait()
        return
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([stopped, kafka], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if kafka.done() and not kafka.cancelled() and kafka.exception() is not None:
        raise kafka.exception()  # type: ignore[misc]


async def _own_producer(settings: Settings, receiver: WebhookReceiver, finished: asyncio.Event) -> None:
    """Start the producer (retrying with back-off while Kafka is away), hand it to the receiver, stop
    it at the end. A credential or certificate Kafka refuses is raised, not retried: it does not heal."""
    delay = 0.5
    connection = settings.kafka.connection()
    while not finished.is_set():
        raw = bootstrap.kafka_producer(settings, "whmcs-webhooks", request_timeout_ms=settings.kafka.request_timeout_ms)
        try:
            await start_client(raw, connection)
        except KafkaSecurityError as exc:
            await raw.stop()
            log.error("kafka_refused_connection", setting=exc.setting, error=exc.reason)
            raise
        except Exception as exc:  # aiokafka raises KafkaError or OSError subclasses; retry either way
            await raw.stop()
            log.warning("kafka_producer_start_failed", error=repr(exc), retry_in_s=delay)
            await _wait(finished, delay)
            delay = min(delay * 2, 10.0)
            continue
        # Concurrent webhooks share batches (one per partition at a time), each request still
        # answered only after the broker acknowledged the batch holding its own record.
        producer = BatchingProducer(raw, timeout_s=PRODUCE_TIMEOUT_S, linger_s=PRODUCE_LINGER_S)
        receiver.producer = bootstrap.traced(producer)
        log.info("kafka_producer_started", kafka=connection.describe())
        try:
            await finished.wait()
        finally:
            receiver.producer = None
            await producer.flush()
            await raw.stop()  # flushes what is still buffered
        return


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass


__all__ = [
    "Metrics",
    "PATH",
    "SignatureError",
    "SignatureVerifier",
    "WebhookReceiver",
    "build_app",
    "make_receiver",
    "serve",
]
