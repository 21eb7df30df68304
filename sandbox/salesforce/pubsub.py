"""The sandbox's Pub/Sub API: ``eventbus.v1.PubSub`` over gRPC (``grpc.aio``), serving the org's event bus.

Same org, same events as the CometD endpoint: live events come from ``EventBus.listen`` (so the bus's
duplicate and out-of-order tricks reach gRPC subscribers too), replays from ``EventBus.retained``;
payloads are Avro records from ``pubsub_avro``. What it imitates (Pub/Sub API Developer Guide: "Subscribe
RPC Method", "Pull Subscription and Flow Control", "Handle Errors", "Event Message Durability"):

* every call carries ``accesstoken``, ``instanceurl`` and ``tenantid`` metadata (the org id); anything
  missing, unknown, expired or another tenant ends the call UNAUTHENTICATED;
* Subscribe is pull-based: the first FetchRequest names the topic (a CometD channel name) and the replay
  start (LATEST, EARLIEST, CUSTOM = strictly after a replay id); later requests only add to
  ``num_requested`` (> 100 counts as 100; at most 100 pending); the server never sends more than asked;
* an empty FetchResponse (keepalive, the latest replay id) after ``keepalive_s`` without a send while
  events are requested; a stream with nothing requested for ``idle_close_s`` ends with status OK;
* errors end the stream with a gRPC status, ``rpcId: <id>`` appended to the details and Salesforce's
  code in the ``error-code`` trailer (``sfdc.platform.eventbus.grpc.…``).

Replay ids are the bus's integer ids as 8 bytes big-endian (Salesforce's are opaque). Only Subscribe,
GetTopic and GetSchema are served; Publish, PublishStream and ManagedSubscribe answer UNIMPLEMENTED.
Faults (``inject``, ``faults``) are driven by the control API; this module knows no HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from grpc import aio

from sandbox.salesforce.events import EventBus, InvalidReplayId
from sandbox.salesforce.oauth import ORG_ID, TokenIssuer
from sandbox.salesforce.pubsub_avro import EncodingError, SchemaRegistry, SchemaVersion
from schemas.salesforce_pubsub import pubsub_api_pb2 as pb
from schemas.salesforce_pubsub import pubsub_api_pb2_grpc as pb_grpc

log = logging.getLogger("sandbox.salesforce.pubsub")

ERROR_PREFIX = "sfdc.platform.eventbus.grpc."
MAX_REQUESTED = 100
#: what ``inject`` accepts; ``invalid_replay`` is armed for the next Subscribe, the standing ones last
#: until ``clear_faults``, ``reset`` and ``internal`` end the open streams now
FAULTS = ("reset", "internal", "invalid_replay", "allocation_exhausted", "half_open")
STANDING = frozenset({"invalid_replay", "allocation_exhausted", "half_open"})
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # clients keep the connection alive with HTTP/2 pings; never answer them GOAWAY too_many_pings
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    # a taken port must fail the bind, not be shared with whoever holds it
    ("grpc.so_reuseport", 0),
]


class PubSubError(Exception):
    """Ends an RPC: a gRPC status and Salesforce's error code (without its prefix)."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = ERROR_PREFIX + code
        self.message = message


def auth_error(message: str = "The access token is missing, invalid or expired.") -> PubSubError:
    return PubSubError(grpc.StatusCode.UNAUTHENTICATED, "service.auth.error", message)


def unavailable(message: str = "The service is unavailable. Try again later.") -> PubSubError:
    return PubSubError(grpc.StatusCode.UNAVAILABLE, "service.unavailable", message)


def replay_corrupted(message: str = "The Replay ID validation failed.") -> PubSubError:
    return PubSubError(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.replayid.corrupted", message)


def encode_replay_id(replay_id: int) -> bytes:
    return replay_id.to_bytes(8, "big")


def decode_replay_id(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


@dataclass(eq=False)
class Stream:
    """One open Subscribe call: its topic, what the client still asked for and what waits to go out."""

    id: int
    topic: str
    token: str
    rpc_id: str
    peer: str
    pending: int
    last_sent: float
    backlog: deque[dict[str, Any]] = field(default_factory=deque)
    delivered: int = 0
    latest_replay_id: int = 0
    idle_since: float | None = None
    ended: PubSubError | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, error: PubSubError) -> None:
        if self.ended is None:
            self.ended = error
        self.wake.set()

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "topic": self.topic, "rpc_id": self.rpc_id, "peer": self.peer,
                "pending_num_requested": self.pending, "queued": len(self.backlog), "delivered": self.delivered,
                "latest_replay_id": self.latest_replay_id}  # fmt: skip


class PubSubServer(pb_grpc.PubSubServicer):  # type: ignore[misc]
    """``start(host, port) -> bound port``, ``stop()``; the servicer methods are the RPCs."""

    def __init__(self, bus: EventBus, tokens: TokenIssuer, *, schemas: SchemaRegistry | None = None,
                 keepalive_s: float = 270.0, idle_close_s: float = 70.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.bus = bus
        self.tokens = tokens
        self.schemas = schemas or SchemaRegistry()
        self.keepalive_s = keepalive_s
        self.idle_close_s = idle_close_s
        self.clock = clock
        self.streams: dict[int, Stream] = {}
        self.faults: set[str] = set()
        self.host: str | None = None
        self.port: int | None = None
        self._server: aio.Server | None = None
        self._ids = itertools.count(1)
        self._stored: OrderedDict[int, Any] = OrderedDict()  # replay id -> ConsumerEvent, encoded at publish
        bus.listen(self._deliver)

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The gRPC target (``host:port``, no scheme) once serving."""
        return None if self.port is None else f"{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 = any free port); raises ``RuntimeError`` when the port is taken."""
        if self._server is not None:
            raise RuntimeError(f"already serving on {self.url}")
        server = aio.server(options=_OPTIONS)
        pb_grpc.add_PubSubServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        bound = int(server.add_insecure_port(f"{host}:{port}"))
        if not bound:
            raise RuntimeError(f"cannot bind {host}:{port}")
        await server.start()
        self._server, self.host, self.port = server, host, bound
        return bound

    async def stop(self, grace_s: float = 1.0) -> None:
        """End every stream UNAVAILABLE (as a server going away would), then stop serving."""
        server, self._server, self.port = self._server, None, None
        if server is None:
            return
        self.end_streams(unavailable("The server is shutting down."))
        await server.stop(grace_s)

    # --- control ------------------------------------------------------------------------------
    def inject(self, kind: str) -> int:
        """Apply a fault (``FAULTS``); returns how many open streams it touches."""
        if kind == "reset":
            return self.end_streams(unavailable())
        if kind == "internal":
            internal = PubSubError(grpc.StatusCode.INTERNAL, "subscription.internal.error", "Internal error.")
            return self.end_streams(internal)
        if kind not in STANDING:
            raise ValueError(f"kind must be one of {', '.join(FAULTS)}")
        self.faults.add(kind)
        return len(self.streams)

    def clear_faults(self) -> list[str]:
        cleared = sorted(self.faults)
        self.faults.clear()
        for stream in self.streams.values():
            stream.wake.set()  # half-open streams send what piled up
        return cleared

    def end_streams(self, error: PubSubError, streams: Iterable[Stream] | None = None) -> int:
        ending = list(self.streams.values() if streams is None else streams)
        for stream in ending:
            stream.end(error)
        return len(ending)

    def expire_auth(self) -> int:
        """End the streams whose token no longer checks (after ``TokenIssuer.expire_all``)."""
        dead = [s for s in self.streams.values() if self.tokens.check(f"Bearer {s.token}")[0] is None]
        return self.end_streams(auth_error("The session expired."), dead)

    def add_field(self, topic: str, name: str, kind: str = "string") -> SchemaVersion:
        """Schema evolution: ``topic`` gets field ``name``; retained events keep their old schema id."""
        published = [int(m["data"]["event"]["replayId"]) for m in self.bus.retained(topic)]
        return self.schemas.add_field(topic, name, kind, published=published)

    def summary(self) -> dict[str, Any]:
        current = {t: v.schema_id for t in self.schemas.topics if (v := self.schemas.current(t))}
        return {"serving": self.port is not None, "url": self.url, "keepalive_s": self.keepalive_s,
                "idle_close_s": self.idle_close_s, "faults": sorted(self.faults),
                "streams": [s.summary() for s in self.streams.values()], "schemas": current}  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "streams": len(self.streams), "faults": sorted(self.faults)}

    # --- unary RPCs ---------------------------------------------------------------------------
    async def GetTopic(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802 (gRPC names)
        rpc_id = str(uuid.uuid4())
        try:
            self._authenticate(context)
            version = self._topic(request.topic_name)
        except PubSubError as error:
            await _abort(context, error, rpc_id)
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid=ORG_ID, can_publish=False,
                            can_subscribe=True, schema_id=version.schema_id, rpc_id=rpc_id)  # fmt: skip

    async def GetSchema(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        rpc_id = str(uuid.uuid4())
        try:
            self._authenticate(context)
            version = self.schemas.get(request.schema_id)
            if version is None:
                raise PubSubError(grpc.StatusCode.NOT_FOUND, "schema.not.found",
                                  f"Schema {request.schema_id!r} not found.")  # fmt: skip
        except PubSubError as error:
            await _abort(context, error, rpc_id)
        return pb.SchemaInfo(schema_json=version.schema_json, schema_id=version.schema_id, rpc_id=rpc_id)

    async def Publish(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "The sandbox does not implement Publish.")

    async def PublishStream(self, request_iterator: Any, context: aio.ServicerContext) -> None:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "The sandbox does not implement PublishStream.")

    async def ManagedSubscribe(self, request_iterator: Any, context: aio.ServicerContext) -> None:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "The sandbox does not implement ManagedSubscribe.")

    # --- Subscribe ----------------------------------------------------------------------------
    async def Subscribe(self, request_iterator: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        rpc_id = str(uuid.uuid4())
        requests = request_iterator.__aiter__()
        stream: Stream | None = None
        try:
            token = self._authenticate(context)
            first = await anext(requests, None)
            if first is None:
                return
            stream = self._open(first, token, rpc_id, context.peer())
            reader = asyncio.create_task(self._read(requests, stream))
            try:
                while (response := await self._next_response(stream)) is not None:
                    yield response
            finally:
                reader.cancel()
        except PubSubError as error:
            await _abort(context, error, rpc_id)
        finally:
            if stream is not None:
                self.streams.pop(stream.id, None)

    def _open(self, first: Any, token: str, rpc_id: str, peer: str) -> Stream:
        """Validate the first FetchRequest and register the stream with its replay backlog (no await
        between reading the retained events and registering: nothing published in between is lost)."""
        if "allocation_exhausted" in self.faults:
            raise PubSubError(grpc.StatusCode.RESOURCE_EXHAUSTED, "subscription.limit.exceeded",
                              "The event delivery allocation is exhausted.")  # fmt: skip
        self._topic(first.topic_name)
        requested = _requested(first.num_requested)
        if "invalid_replay" in self.faults:
            self.faults.discard("invalid_replay")
            raise replay_corrupted()
        cursor = self._cursor(first)
        stream = Stream(next(self._ids), first.topic_name, token, rpc_id, peer, requested, self.clock())
        stream.latest_replay_id = cursor
        stream.backlog.extend(self.bus.retained(first.topic_name, after=cursor))
        self.streams[stream.id] = stream
        return stream

    def _cursor(self, first: Any) -> int:
        """Deliver events with replay id > the returned cursor."""
        if first.replay_preset == pb.LATEST:
            return self.bus.last_replay_id
        if first.replay_preset == pb.EARLIEST:
            return self.bus.cursor(first.topic_name, -2)
        if first.replay_preset != pb.CUSTOM:
            raise PubSubError(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.replayid.validation.failed",
                              f"Unknown replay preset {first.replay_preset}.")  # fmt: skip
        replay_id = decode_replay_id(first.replay_id)
        if replay_id is None or replay_id < 1:
            raise replay_corrupted()
        try:
            return self.bus.cursor(first.topic_name, replay_id)
        except InvalidReplayId as exc:
            raise replay_corrupted() from exc

    async def _read(self, requests: AsyncIterator[Any], stream: Stream) -> None:
        """Later FetchRequests: more events, maybe a refreshed token; replay settings are ignored."""
        try:
            async for request in requests:
                self._more(stream, request)
        except PubSubError as error:
            stream.end(error)
        except (grpc.RpcError, aio.UsageError) as exc:  # the client went away mid-read
            log.debug("stream %s: reading stopped: %s", stream.id, exc)

    def _more(self, stream: Stream, request: Any) -> None:
        if request.topic_name and request.topic_name != stream.topic:
            raise PubSubError(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.topic.mismatch",
                              f"The topic {request.topic_name!r} does not match {stream.topic!r}.")  # fmt: skip
        if request.auth_refresh:
            if self.tokens.check(f"Bearer {request.auth_refresh}")[0] is None:
                raise PubSubError(grpc.StatusCode.UNAUTHENTICATED, "service.auth.refresh.invalid",
                                  "The refreshed access token is invalid.")  # fmt: skip
            stream.token = request.auth_refresh
            if request.num_requested == 0:
                return
        stream.pending = min(MAX_REQUESTED, stream.pending + _requested(request.num_requested))
        stream.idle_since = None
        stream.wake.set()

    async def _next_response(self, stream: Stream) -> Any | None:
        """The next FetchResponse (events or a keepalive); None when the idle stream should close."""
        while True:
            if stream.ended is not None:
                raise stream.ended
            token_left = self._token_left(stream)
            now = self.clock()
            if "half_open" not in self.faults:
                if stream.pending and stream.backlog:
                    return self._batch(stream, now)
                if stream.pending and now - stream.last_sent >= self.keepalive_s:
                    return self._keepalive(stream, now)
                if self._idle_deadline(stream) <= now:
                    return None
            stream.wake.clear()
            try:  # asyncio.timeout, not wait_for: no task per wait (a backlog waits once per response)
                async with asyncio.timeout(self._wait_s(stream, now, token_left)):
                    await stream.wake.wait()
            except TimeoutError:
                pass

    def _idle_deadline(self, stream: Stream) -> float:
        """When a stream with nothing requested closes (never while something is requested)."""
        if stream.pending or stream.idle_since is None:
            return float("inf")
        return stream.idle_since + self.idle_close_s

    def _wait_s(self, stream: Stream, now: float, token_left: float) -> float:
        deadlines = [token_left]
        if "half_open" not in self.faults:
            keepalive = stream.last_sent + self.keepalive_s if stream.pending else float("inf")
            deadlines.append(min(keepalive, self._idle_deadline(stream)) - now)
        return max(0.0, min(deadlines))

    def _token_left(self, stream: Stream) -> float:
        issued, _ = self.tokens.check(f"Bearer {stream.token}")
        if issued is None:
            raise auth_error("The session expired.")
        return issued.expires_at - self.tokens.clock()

    def _batch(self, stream: Stream, now: float) -> Any:
        count = min(stream.pending, len(stream.backlog))
        messages = [stream.backlog.popleft() for _ in range(count)]
        events = [self._consumer_event(m) for m in messages]
        stream.pending -= count
        stream.delivered += count
        stream.latest_replay_id = int(messages[-1]["data"]["event"]["replayId"])
        stream.last_sent = now
        if not stream.pending:
            stream.idle_since = now
        return pb.FetchResponse(events=events, latest_replay_id=encode_replay_id(stream.latest_replay_id),
                                rpc_id=stream.rpc_id, pending_num_requested=stream.pending)  # fmt: skip

    def _keepalive(self, stream: Stream, now: float) -> Any:
        # nothing is queued for this stream: report the bus's position (Salesforce may report a
        # position beyond the last event delivered, the event bus being shared)
        stream.latest_replay_id = max(stream.latest_replay_id, self.bus.last_replay_id)
        stream.last_sent = now
        return pb.FetchResponse(latest_replay_id=encode_replay_id(stream.latest_replay_id), rpc_id=stream.rpc_id,
                                pending_num_requested=stream.pending)  # fmt: skip

    def _consumer_event(self, message: dict[str, Any]) -> Any:
        stored = self._stored.get(int(message["data"]["event"]["replayId"]))
        return stored if stored is not None else self._encode(message)

    def _encode(self, message: dict[str, Any]) -> Any:
        try:
            schema_id, payload = self.schemas.encode(message)
        except EncodingError as exc:
            log.error("cannot encode replay id %s: %s", message["data"]["event"]["replayId"], exc)
            raise PubSubError(grpc.StatusCode.INTERNAL, "subscription.internal.error", str(exc)) from exc
        event = pb.ProducerEvent(id=str(message["data"]["event"]["EventUuid"]), schema_id=schema_id, payload=payload)
        return pb.ConsumerEvent(event=event, replay_id=encode_replay_id(int(message["data"]["event"]["replayId"])))

    def _store(self, message: dict[str, Any]) -> None:
        """Encode an event once, as it is published, and keep it (Salesforce's bus stores events
        serialized; a delivery or a replay sends the stored bytes, in the schema of its time).
        Kept for as many events as the bus retains; older ones are encoded again if replayed."""
        replay_id = int(message["data"]["event"]["replayId"])
        if replay_id in self._stored:
            return  # a duplicate delivery of a stored event
        try:
            self._stored[replay_id] = self._encode(message)
        except PubSubError:
            return  # the delivery path reports it to the subscriber
        while len(self._stored) > self.bus.retention * len(self.bus.channels):
            self._stored.popitem(last=False)

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        if self._server is not None:  # nobody can subscribe before the server serves: no cost to CometD
            self._store(message)
        for stream in self.streams.values():
            if stream.topic == channel:
                stream.backlog.append(message)
                stream.wake.set()

    # --- checks -------------------------------------------------------------------------------
    def _authenticate(self, context: aio.ServicerContext) -> str:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        token = str(metadata.get("accesstoken", ""))
        if not token or self.tokens.check(f"Bearer {token}")[0] is None or not metadata.get("instanceurl"):
            raise auth_error()
        if metadata.get("tenantid") != ORG_ID:
            raise auth_error("The tenant id does not match the access token's org.")
        return token

    def _topic(self, name: str) -> SchemaVersion:
        version = self.schemas.current(name)
        if version is None:
            raise PubSubError(grpc.StatusCode.NOT_FOUND, "topic.not.found", f"The topic {name!r} was not found.")
        return version


def _requested(num_requested: int) -> int:
    if num_requested < 1:
        raise PubSubError(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.requested.events.invalid",
                          f"num_requested must be greater than 0, got {num_requested}.")  # fmt: skip
    return min(num_requested, MAX_REQUESTED)


async def _abort(context: aio.ServicerContext, error: PubSubError, rpc_id: str) -> NoReturn:
    trailers = (("error-code", error.code), ("rpc-id", rpc_id))
    await context.abort(error.status, f"{error.message} rpcId: {rpc_id}", trailing_metadata=trailers)
    raise AssertionError("abort returned")  # pragma: no cover (abort always raises)
