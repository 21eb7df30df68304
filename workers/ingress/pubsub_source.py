"""``PubSubSource``: the ``ChangeSource`` over the Salesforce Pub/Sub API (gRPC ``Subscribe``), beside CometD.

One HTTP/2 channel, one ``Subscribe`` stream per channel (Pub/Sub calls them topics; the names are
the same). What this module owns, and the delivery semantics behind each rule:

* **Flow control.** A stream asks for at most ``num_requested`` (≤ 100) events; what the server
  still owes plus what was received but not yet taken by ``receive()`` never exceeds it, so memory
  is bounded by the subscriber's pace. Events are asked for again as the subscriber takes them, a
  quarter of the window at a time (with half, a backlog waited on the request round trip: 62-73 %
  of a core busy; with a tenth, 81-83 % but more writes per event; ``bench/cdc_bench.py``), so a
  stream with a consuming subscriber never reaches "nothing requested", which Salesforce closes
  after ~70 s.
* **Positions.** Replay ids are opaque bytes: stored, compared for nothing, handed back as they
  came. A stream opens from its channel's checkpoint (``CUSTOM``: events after it) or the fallback
  preset. Within a session, a stream that must be reopened (token refresh) resumes after the last
  event it *received*: everything received is already in the subscriber's pipeline, and the
  subscriber still checkpoints only what Kafka acknowledged.
* **Errors** end a stream with a code in the ``error-code`` trailer, mapped here:
  ``replayid.corrupted``/``replayid.validation.failed`` → the stream reopens with the fallback
  preset and ``receive()`` returns a ``Subscribed(fallback=True)`` so the subscriber raises the
  alarm and resyncs the window (as CometD's rejected replay id at open); ``service.auth.error``
  (or ``UNAUTHENTICATED``) → one token refresh and the stream resumes where it was, a second in a
  row is a ``SourceError``; codes no retry can fix (allocation exhausted, permission, unknown topic,
  topic mismatch, invalid request) → ``SourceRefused`` with a long ``retry_after_s``; anything else
  (``service.unavailable``, ``subscription.internal.error``, a dropped connection) → ``SourceError``,
  and the subscriber backs off and resubscribes from its checkpoint.
* **Liveness.** Any response counts, the empty keepalive one Salesforce sends when idle
  (within ~270 s) included; the subscriber's watchdog tears down a stream silent for longer
  (a half-open stream sends nothing and never closes).

Decoding (Avro, bitmaps, the CometD shape) is ``adapters.salesforce_pubsub``'s; translation,
checkpoints and Kafka are the subscriber's. Must not read configuration.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from grpc import aio

from adapters.cdc_checkpoints import ReplayId
from adapters.salesforce.auth import AccessToken, TokenSource
from adapters.salesforce_pubsub import SchemaCache, call_metadata, error_code, open_channel, to_cometd
from events.errors import AuthenticationFailed
from schemas.salesforce_pubsub import pubsub_api_pb2 as pb
from schemas.salesforce_pubsub import pubsub_api_pb2_grpc as pb_grpc
from workers.ingress.cdc_source import Delivery, Fallback, SourceError, SourceRefused, Subscribed, only_accepted

log = structlog.get_logger()

_PRESETS: dict[Fallback, Any] = {"latest": pb.ReplayPreset.LATEST, "earliest": pb.ReplayPreset.EARLIEST}
#: the stored replay id is unusable (invalid, or past the 72 h retention): take the preset, resync
REPLAY_REJECTED = frozenset({"subscription.fetch.replayid.corrupted", "subscription.fetch.replayid.validation.failed"})
AUTH_FAILED = frozenset({"service.auth.error", "UNAUTHENTICATED"})
#: no retry fixes these soon: back off for long, alarm, stay not ready (seconds before the next try)
REFUSED: dict[str, float] = {
    "subscription.limit.exceeded": 3600.0,  # the daily event allocation is spent
    "subscription.topic.cannot.subscribe": 300.0,  # permission
    "topic.not.found": 300.0,
    "subscription.fetch.topic.mismatch": 300.0,  # a bug of ours: the same request would fail again
    "subscription.fetch.requested.events.invalid": 300.0,
    "PERMISSION_DENIED": 300.0,
}

ChannelFactory = Callable[[], aio.Channel]


@dataclass
class _Stream:
    """One topic's ``Subscribe`` call and its flow-control counts."""

    topic: str
    requested: bytes | None  # the checkpoint the session opened from (None: the preset)
    call: Any = None
    task: asyncio.Task[None] | None = None
    last_received: bytes | None = None
    owed: int = 0  # asked for, not yet received
    buffered: int = 0  # received, not yet taken by receive()
    writer: asyncio.Task[None] | None = None  # the top-up being written, if any
    auth_failures: int = 0  # auth errors since the last answer: a second in a row ends the session


class PubSubSource:
    """``ChangeSource`` over the Pub/Sub API; see the module docstring for its rules."""

    def __init__(
        self,
        tokens: TokenSource,
        channels: Sequence[str],
        *,
        endpoint: str,
        tls: bool | None = None,
        fallback: Fallback = "latest",
        num_requested: int = 100,
        keepalive_s: float = 60.0,
        call_timeout_s: float = 10.0,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        if not 1 <= num_requested <= 100:
            raise ValueError("num_requested must be 1..100 (the Pub/Sub API's maximum)")
        self._tokens = tokens
        self._channels = list(channels)
        self._preset = _PRESETS[fallback]
        self._window = num_requested
        self._top_up = max(1, num_requested // 4)  # the request size (module docstring: flow control)
        self._call_timeout_s = call_timeout_s
        self._channel_factory = channel_factory or (lambda: open_channel(endpoint, tls=tls, keepalive_s=keepalive_s))
        self._channel: aio.Channel | None = None
        self._stub: Any = None
        self._token: AccessToken | None = None
        self._schemas: SchemaCache | None = None
        self._streams: dict[str, _Stream] = {}
        self._queue: asyncio.Queue[Delivery | Subscribed | BaseException] = asyncio.Queue()
        self._held: BaseException | None = None  # an error ``ready`` reached: ``receive`` raises it next
        self._last_alive = time.monotonic()
        self._refresh_next_open = False

    @property
    def last_alive(self) -> float:
        return self._last_alive

    def accepts(self, replay_id: ReplayId) -> bool:
        """Pub/Sub resumes only from its own (bytes) replay ids, never from a CometD integer."""
        return isinstance(replay_id, bytes)

    # --- open / close -------------------------------------------------------------------------
    async def open(self, positions: Mapping[str, ReplayId]) -> list[Subscribed]:
        accepted = only_accepted(self, positions)
        try:
            self._token = await (
                self._tokens.refresh(self._token.access_token if self._token else None)
                if self._refresh_next_open
                else self._tokens.token()
            )
            self._refresh_next_open = False
            self._channel = self._channel_factory()
            stub_class: Any = pb_grpc.PubSubStub  # generated, unannotated
            self._stub = stub_class(self._channel)
            self._schemas = SchemaCache(self._get_schema)
            self._queue, self._held = asyncio.Queue(), None
            for topic in self._channels:
                # GetTopic first: a missing permission or topic, or a refused token, fails here,
                # before any stream, and the topic's current schema is cached for its first event
                info = await self._stub.GetTopic(
                    pb.TopicRequest(topic_name=topic), metadata=self._metadata(), timeout=self._call_timeout_s
                )
                if not info.can_subscribe:
                    raise SourceRefused(
                        f"Salesforce does not let this user subscribe to {topic}",
                        code="subscription.topic.cannot.subscribe",
                        retry_after_s=REFUSED["subscription.topic.cannot.subscribe"],
                    )
                await self._schemas.get(info.schema_id)
            self._last_alive = time.monotonic()
            outcomes = []
            for topic in self._channels:
                position = accepted.get(topic)
                requested = position if isinstance(position, bytes) else None
                stream = self._streams[topic] = _Stream(topic, requested)
                self._start(stream, requested)
                outcomes.append(Subscribed(topic, requested))
            return outcomes
        except (SourceError, AuthenticationFailed):
            await self.close()
            raise
        except Exception as exc:  # gRPC, decoding and timeout errors alike: close what opened
            await self.close()
            raise self._mapped(exc, "opening the Pub/Sub stream failed") from exc

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        assert self._token is not None
        return call_metadata(self._token)

    async def _get_schema(self, schema_id: str) -> pb.SchemaInfo:
        info: pb.SchemaInfo = await self._stub.GetSchema(
            pb.SchemaRequest(schema_id=schema_id), metadata=self._metadata(), timeout=self._call_timeout_s
        )
        return info

    def _start(self, stream: _Stream, after: bytes | None) -> None:
        """Open ``stream``'s call: CUSTOM after ``after``, else the fallback preset."""
        stream.call = self._stub.Subscribe(metadata=self._metadata())
        # a reopened stream's earlier events may still wait in the queue: they stay counted, so
        # the new call asks only for what the window has room for (at least one: the API's minimum)
        stream.owed = max(1, self._window - stream.buffered)
        first = pb.FetchRequest(topic_name=stream.topic, num_requested=stream.owed)
        if after is None:
            first.replay_preset = self._preset
        else:
            first.replay_preset, first.replay_id = pb.ReplayPreset.CUSTOM, after
        # the reader writes the first request: until it has, no top-up may (one write at a time);
        # a top-up still writing belongs to the old call, which is over
        stream.task = stream.writer = asyncio.ensure_future(self._read(stream, stream.call, first))

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            if stream.call is not None:
                stream.call.cancel()
            for task in (stream.task, stream.writer):
                if task is not None:
                    task.cancel()
        tasks = {t for s in streams for t in (s.task, s.writer) if t is not None}
        await asyncio.gather(*tasks, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await asyncio.wait_for(channel.close(), 5.0)
            except Exception as exc:  # closing a broken channel may fail; the next open starts clean
                log.info("sf_cdc_source_close_failed", error=repr(exc))

    # --- receiving ----------------------------------------------------------------------------
    async def receive(self) -> Delivery | Subscribed:
        if self._channel is None:
            raise SourceError("the Pub/Sub stream is not open", upstream="salesforce")
        item: Delivery | Subscribed | BaseException
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self._taken(item)
        return item

    def ready(self, limit: int) -> list[Delivery | Subscribed]:
        """What the readers already decoded, up to ``limit``: a whole ``FetchResponse`` reaches the
        subscriber in one event-loop turn instead of one ``receive`` (a task and a wait) per event,
        and its activations ask for their re-reads in that same turn, so they share one query."""
        items: list[Delivery | Subscribed] = []
        while len(items) < limit and self._held is None and self._channel is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._held = item  # the next receive() raises it, as it would have
            else:
                self._taken(item)
                items.append(item)
        return items

    def _taken(self, item: Delivery | Subscribed) -> None:
        if isinstance(item, Delivery):
            stream = self._streams.get(item.channel)
            if stream is not None:
                stream.buffered -= 1
                self._request_more(stream)

    def _request_more(self, stream: _Stream) -> None:
        """Ask for the window's free room when it reaches a top-up. The request is written by a
        task of its own: ``receive()`` never waits for a gRPC write (awaited here, every top-up
        held the subscriber's next event for the write's round trip through gRPC's thread, and a
        backlog ran 10-20 % below CometD's). One write at a time per call, as gRPC requires; the
        room freed meanwhile is asked for when it ends."""
        if stream.writer is not None or stream.call is None:
            return
        free = self._window - stream.owed - stream.buffered
        if free < self._top_up:
            return
        stream.owed += free
        stream.writer = asyncio.ensure_future(self._write_top_up(stream, stream.call, free))

    async def _write_top_up(self, stream: _Stream, call: Any, count: int) -> None:
        try:
            await call.write(pb.FetchRequest(topic_name=stream.topic, num_requested=count))
        except Exception as exc:  # the stream ended: its reader reports why
            log.debug("sf_cdc_pubsub_top_up_failed", topic=stream.topic, error=repr(exc))
            return
        if stream.call is call:  # not reopened meanwhile (a reopened call counts afresh)
            stream.writer = None
            self._request_more(stream)

    async def _read(self, stream: _Stream, call: Any, first: pb.FetchRequest) -> None:
        try:
            await call.write(first)
            if stream.call is call:
                stream.writer = None
                self._request_more(stream)  # events taken from an earlier call meanwhile
            while True:
                response = await call.read()
                if response is aio.EOF:
                    raise SourceError(f"the Pub/Sub stream of {stream.topic} ended", upstream="salesforce")
                self._last_alive = time.monotonic()
                stream.auth_failures = 0
                # counted here, not read from pending_num_requested: a response written before the
                # server saw our latest top-up would report too little, and we would over-ask
                stream.owed = max(0, stream.owed - len(response.events))
                for consumer_event in response.events:
                    delivery = await self._delivery(stream.topic, consumer_event)
                    stream.last_received = consumer_event.replay_id
                    stream.buffered += 1
                    self._queue.put_nowait(delivery)
        except asyncio.CancelledError:
            raise
        except SourceError as exc:
            self._queue.put_nowait(exc)
        except Exception as exc:
            code = error_code(exc)
            if code in REPLAY_REJECTED and stream.last_received is None and stream.requested is not None:
                await self._fall_back(stream, exc, code)
            elif code in AUTH_FAILED and stream.auth_failures == 0:
                stream.auth_failures += 1
                await self._reauthenticate(stream)
            else:
                if code in AUTH_FAILED:
                    self._refresh_next_open = True
                self._queue.put_nowait(self._mapped(exc, f"the Pub/Sub stream of {stream.topic} failed"))

    async def _delivery(self, topic: str, consumer_event: Any) -> Delivery:
        replay_id = bytes(consumer_event.replay_id)
        event = consumer_event.event
        assert self._schemas is not None
        try:
            schema = await self._schemas.get(event.schema_id)
            message = to_cometd(topic, schema, schema.decode(event.payload), replay_id=replay_id, event_id=event.id)
        except aio.AioRpcError:
            raise  # GetSchema failed: the stream's error path handles it
        except Exception as exc:  # undecodable: the subscriber dead-letters it with what arrived
            message = {
                "channel": topic,
                "data": {
                    "schema": event.schema_id,
                    "undecodable": f"{type(exc).__name__}: {exc}",
                    "payload_avro_base64": base64.b64encode(event.payload).decode(),
                    "event": {"replayId": replay_id, "EventUuid": event.id or None},
                },
            }
        return Delivery(topic, message, replay_id)

    async def _fall_back(self, stream: _Stream, exc: BaseException, code: str) -> None:
        """The stored replay id was rejected: reopen from the preset and tell the subscriber."""
        log.warning("sf_cdc_pubsub_replay_rejected", topic=stream.topic, code=code)
        requested, stream.requested = stream.requested, None
        self._start(stream, None)
        detail = exc.details() if isinstance(exc, aio.AioRpcError) else str(exc)
        self._queue.put_nowait(Subscribed(stream.topic, requested, fallback=True, error=f"{code}: {detail}"))

    async def _reauthenticate(self, stream: _Stream) -> None:
        """One refresh of the token, then the stream resumes after what it received."""
        stale = self._token.access_token if self._token else None
        try:
            self._token = await self._tokens.refresh(stale)
        except Exception as refresh_error:
            self._queue.put_nowait(self._mapped(refresh_error, "refreshing the Salesforce token failed"))
            return
        log.info("sf_cdc_pubsub_token_refreshed", topic=stream.topic)
        self._start(stream, stream.last_received if stream.last_received is not None else stream.requested)

    @staticmethod
    def _mapped(exc: BaseException, what: str) -> SourceError:
        if isinstance(exc, SourceError):
            return exc
        code = error_code(exc)
        retry_after = REFUSED.get(code)
        detail = exc.details() if isinstance(exc, aio.AioRpcError) else repr(exc)
        if retry_after is not None:
            return SourceRefused(f"{what}: {code}: {detail}", code=code, retry_after_s=retry_after)
        return SourceError(f"{what}: {code}: {detail}", upstream="salesforce")
