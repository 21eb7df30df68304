"""Where Salesforce change events come from: the ``ChangeSource`` port, CometD and a fake.

The port hides the transport so a Pub/Sub API (gRPC) source can replace CometD without touching
translation or checkpoints: say which kind of replay id it resumes from (``accepts``: CometD's are
integers, the Pub/Sub API's opaque bytes), open from per-channel replay ids (reporting any id the
platform rejected and the preset used instead), hand out deliveries one at a time (and a rejection
the platform reports only after the open, as gRPC does), say when the stream last showed a sign of
life (the subscriber's watchdog reads it), close. Sources never store positions durably: the
subscriber checkpoints only what Kafka acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import structlog
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.client import Client, ReplayMarkerStoragePolicy
from aiosfstream_ng.exceptions import AiosfstreamException, ServerError
from aiosfstream_ng.replay import ReplayMarker, ReplayMarkerStorage, ReplayOption

from adapters.cdc_checkpoints import ReplayId
from adapters.salesforce_stream import FleetStreamingClient
from events.errors import UpstreamUnavailable

log = structlog.get_logger()

Fallback = Literal["latest", "earliest"]
#: Bayeux error code Salesforce answers a /meta/subscribe with when the replay id is invalid or
#: older than the retention window ("400::The replayId {N} you provided was invalid...")
INVALID_REPLAY = 400
_PRESETS: dict[Fallback, int] = {"latest": ReplayOption.NEW_EVENTS, "earliest": ReplayOption.ALL_EVENTS}
_ALIVE_CHANNELS = frozenset({"/meta/connect", "/meta/handshake"})


class SourceError(UpstreamUnavailable):
    """The stream failed (transport, server or authentication); the subscriber reconnects."""


class SourceRefused(SourceError):
    """The platform refused in a way no quick retry fixes (a spent allocation, a missing permission,
    an unknown topic): the subscriber alarms and waits ``retry_after_s`` before the next try."""

    def __init__(self, message: str, *, code: str, retry_after_s: float) -> None:
        super().__init__(message, upstream="salesforce")
        self.code = code
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Delivery:
    """One message as received; ``replay_id`` when it could be read (even if the rest is bad).

    ``message`` has CometD's shape whatever the transport (``schemas.salesforce_cdc``); a Pub/Sub
    API source puts its bytes replay id at ``data.event.replayId`` as it is."""

    channel: str
    message: Any
    replay_id: ReplayId | None


@dataclass(frozen=True)
class Subscribed:
    """How a channel was subscribed: ``requested`` replay id (None = the fallback preset), and
    whether the platform rejected it so the preset was used instead (``fallback``, with the
    platform's ``error``). ``open`` returns one per channel; ``receive`` returns one when the
    platform reports the outcome only later (gRPC)."""

    channel: str
    requested: ReplayId | None
    fallback: bool = False
    error: str | None = None


class ChangeSource(Protocol):
    def accepts(self, replay_id: ReplayId) -> bool:
        """Whether this source can resume from ``replay_id``: a transport has one kind of position
        (CometD: int, Pub/Sub API: bytes). A stored id of the other kind was written by the other
        transport; the subscriber never passes it to ``open``. Pure: no I/O."""
        ...

    async def open(self, positions: Mapping[str, ReplayId]) -> list[Subscribed]:
        """Authenticate, connect and subscribe every channel, each from its replay id in
        ``positions`` (absent: the fallback preset; present: a kind ``accepts`` took). A replay id
        rejected in the answer to the subscription is retried with the preset and reported with
        ``fallback=True``. Raises ``SourceError``."""
        ...

    async def receive(self) -> Delivery | Subscribed:
        """The next delivery, in the platform's order per channel; or a late outcome of a
        subscription: a ``Subscribed`` with ``fallback=True`` when the platform rejected a channel's
        replay id only after ``open`` returned (gRPC reports ``...replayid.corrupted`` on the
        stream) and the channel now continues from the preset. The session goes on either way.
        Raises ``SourceError``."""
        ...

    def ready(self, limit: int) -> list[Delivery | Subscribed]:
        """At most ``limit`` items that ``receive`` would return next without waiting, in the same
        order; ``[]`` when none is at hand, or when the transport cannot tell (CometD: its library
        hands out one message per call). Stops before an error: the next ``receive`` raises it.
        Lets the subscriber take a whole arrival (a gRPC ``FetchResponse``) in one event-loop turn."""
        ...

    async def close(self) -> None:
        """Disconnect; never raises. ``open`` may be called again afterwards."""
        ...

    @property
    def last_alive(self) -> float:
        """``time.monotonic()`` of the last successful connect/handshake answer or delivery."""
        ...


def replay_id_of(message: Any) -> ReplayId | None:
    """``data.event.replayId`` when present and a replay id (an integer, or the Pub/Sub API's
    bytes), whatever else the message holds."""
    try:
        value = message["data"]["event"]["replayId"]
    except (KeyError, TypeError, IndexError):
        return None
    return value if isinstance(value, bytes) or _is_int(value) else None


def _is_int(replay_id: ReplayId) -> bool:
    return isinstance(replay_id, int) and not isinstance(replay_id, bool)


def only_accepted(source: ChangeSource, positions: Mapping[str, ReplayId]) -> dict[str, ReplayId]:
    """``positions`` as they are, or ``TypeError`` for one the source does not accept: subscribing
    that channel from the preset instead would lose its window without an alarm."""
    refused = sorted(channel for channel, replay_id in positions.items() if not source.accepts(replay_id))
    if refused:
        raise TypeError(f"replay ids of another transport's kind for {refused}: the caller must not pass them")
    return dict(positions)


class _Positions(ReplayMarkerStorage):
    """The replay id each /meta/subscribe carries: the checkpoint at open, then the last delivery
    received in this session. The transport re-handshakes and resubscribes on its own (expired
    session, ``403::Unknown client``); resuming from the last *received* id then is safe because
    everything received is already in the subscriber's pipeline. Also the liveness probe."""

    def __init__(self, positions: Mapping[str, int], preset: int, on_alive: Callable[[], None]) -> None:
        super().__init__()
        self.positions: dict[str, int] = dict(positions)
        self._preset = preset
        self._on_alive = on_alive

    async def incoming(self, payload: Any, headers: Any = None) -> None:
        for message in payload:
            if isinstance(message, dict) and message.get("channel") in _ALIVE_CHANNELS and message.get("successful"):
                self._on_alive()

    async def get_replay_id(self, subscription: str) -> int:
        return self.positions.get(subscription, self._preset)

    async def get_replay_marker(self, subscription: str) -> ReplayMarker | None:
        replay_id = self.positions.get(subscription)
        return None if replay_id is None else ReplayMarker("", replay_id)

    async def set_replay_marker(self, subscription: str, replay_marker: ReplayMarker) -> None:
        self.positions[subscription] = replay_marker.replay_id


ClientFactory = Callable[..., Client]


class CometdSource:
    """``ChangeSource`` over the Streaming API (CometD) with aiosfstream-ng: integer replay ids,
    rejections answered at subscribe (``receive`` never returns a ``Subscribed``).

    ``reauthenticate`` runs before every open after the first (watchdog or error teardown), so a
    silently revoked session is replaced rather than reused.
    """

    def __init__(
        self,
        authenticator: AuthenticatorBase,
        channels: Sequence[str],
        *,
        fallback: Fallback = "latest",
        api_version: str = "60.0",
        connection_timeout: float = 10.0,
        max_pending: int = 100,
        reauthenticate: Callable[[], Awaitable[None]] | None = None,
        client_factory: ClientFactory = FleetStreamingClient,
    ) -> None:
        self._authenticator = authenticator
        self._channels = list(channels)
        self._preset = _PRESETS[fallback]
        self._api_version = api_version
        self._connection_timeout = connection_timeout
        self._max_pending = max_pending
        self._reauthenticate = reauthenticate
        self._client_factory = client_factory
        self._client: Client | None = None
        self._storage: _Positions | None = None
        self._opened_before = False
        self._last_alive = time.monotonic()

    @property
    def last_alive(self) -> float:
        return self._last_alive

    def _alive(self) -> None:
        self._last_alive = time.monotonic()

    def accepts(self, replay_id: ReplayId) -> bool:
        return _is_int(replay_id)

    async def open(self, positions: Mapping[str, ReplayId]) -> list[Subscribed]:
        accepted = only_accepted(self, positions)
        if self._opened_before and self._reauthenticate is not None:
            await self._reauthenticate()
        self._opened_before = True
        ints = {channel: replay_id for channel, replay_id in accepted.items() if isinstance(replay_id, int)}
        self._storage = _Positions(ints, self._preset, self._alive)
        self._client = self._client_factory(
            self._authenticator,
            api_version=self._api_version,
            replay=self._storage,
            replay_storage_policy=ReplayMarkerStoragePolicy.MANUAL,
            connection_timeout=self._connection_timeout,
            max_pending_count=self._max_pending,
        )
        try:
            await self._client.open()
            self._alive()
            return [await self._subscribe(channel) for channel in self._channels]
        except Exception as exc:  # aiosfstream, aiohttp and timeout errors alike: close what opened
            await self.close()
            raise SourceError(f"opening the CometD stream failed: {exc!r}", upstream="salesforce") from exc

    async def _subscribe(self, channel: str) -> Subscribed:
        assert self._client is not None and self._storage is not None
        requested = self._storage.positions.get(channel)
        try:
            await self._client.subscribe(channel)
            return Subscribed(channel, requested)
        except ServerError as exc:
            if requested is None or exc.error_code != INVALID_REPLAY:
                raise
            # the stored position is unusable (invalid, or older than retention): take the preset
            # and report it, so the subscriber raises the alarm and resyncs the missing window
            self._storage.positions.pop(channel, None)
            await self._client.subscribe(channel)
            return Subscribed(channel, requested, fallback=True, error=exc.error or str(exc))

    async def receive(self) -> Delivery:
        if self._client is None or self._storage is None:
            raise SourceError("the CometD stream is not open", upstream="salesforce")
        try:
            message = await self._client.receive()
        except (AiosfstreamException, aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"the CometD stream failed: {exc!r}", upstream="salesforce") from exc
        self._alive()
        channel = str(message.get("channel", "")) if isinstance(message, dict) else ""
        replay_id = replay_id_of(message)
        if isinstance(replay_id, int) and channel:
            self._storage.positions[channel] = replay_id
        return Delivery(channel, message, replay_id)

    def ready(self, limit: int) -> list[Delivery | Subscribed]:
        return []  # aiosfstream hands out one message per ``receive``; its queue is private

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), 5.0)
        except Exception as exc:  # closing a broken connection may fail; the next open starts clean
            log.info("sf_cdc_source_close_failed", error=repr(exc))


@dataclass
class FakeSource:
    """A scripted ``ChangeSource`` for unit tests.

    ``push`` queues a delivery (or an exception to raise from ``receive``); ``push_subscribed``
    queues a late subscription outcome (a replay id rejected after the open, as gRPC reports it);
    ``reject`` makes the named channels' replay ids invalid at the next open; ``opens`` records the
    positions of every open; ``stall()`` freezes ``last_alive`` so the watchdog fires.
    ``position_kind`` is the kind of replay id it resumes from: ``int`` (CometD, the default) or
    ``bytes`` (the Pub/Sub API).
    """

    channels: Sequence[str]
    position_kind: type[int] | type[bytes] = int
    opens: list[dict[str, ReplayId]] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    fail_next_open: Exception | None = None
    closes: int = 0
    stalled: bool = False
    _queue: asyncio.Queue[Delivery | Subscribed | Exception] = field(default_factory=asyncio.Queue)
    _last_alive: float = field(default_factory=time.monotonic)
    _held: Exception | None = None  # an error ``ready`` reached: ``receive`` raises it next

    @property
    def last_alive(self) -> float:
        return self._last_alive

    def accepts(self, replay_id: ReplayId) -> bool:
        return isinstance(replay_id, bytes) if self.position_kind is bytes else _is_int(replay_id)

    def push(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(Delivery(str(message.get("channel", "")), message, replay_id_of(message)))

    def push_error(self, exc: Exception) -> None:
        self._queue.put_nowait(exc)

    def push_subscribed(
        self,
        channel: str,
        requested: ReplayId | None,
        error: str = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
    ) -> None:
        """Queue a late fallback: ``channel``'s replay id ``requested`` was rejected after the open."""
        self._queue.put_nowait(Subscribed(channel, requested, fallback=True, error=error))

    def reject(self, *channels: str) -> None:
        self.rejected.update(channels)

    def stall(self) -> None:
        self.stalled = True

    async def open(self, positions: Mapping[str, ReplayId]) -> list[Subscribed]:
        if self.fail_next_open is not None:
            exc, self.fail_next_open = self.fail_next_open, None
            raise exc
        self.opens.append(only_accepted(self, positions))
        self.stalled = False
        self._last_alive = time.monotonic()
        outcomes = []
        for channel in self.channels:
            requested = positions.get(channel)
            rejected = requested is not None and channel in self.rejected
            outcomes.append(Subscribed(channel, requested, rejected, "400::invalid replay id" if rejected else None))
        self.rejected.clear()
        return outcomes

    async def receive(self) -> Delivery | Subscribed:
        item: Delivery | Subscribed | BaseException
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        if not self.stalled:
            self._last_alive = time.monotonic()
        return item

    def ready(self, limit: int) -> list[Delivery | Subscribed]:
        items: list[Delivery | Subscribed] = []
        while len(items) < limit and self._held is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Exception):
                self._held = item  # the next receive() raises it
            else:
                items.append(item)
        if items and not self.stalled:
            self._last_alive = time.monotonic()
        return items

    async def close(self) -> None:
        self.closes += 1
