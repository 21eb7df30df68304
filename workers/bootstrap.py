"""The composition root: build every adapter from Settings once, unless the caller passes its own.

    async with bootstrap(settings) as deps:            # real adapters on the configured endpoints
    async with bootstrap(settings, whmcs=FakeWhmcs()) as deps:   # any port can be overridden

The one place a worker process's clients are built from Settings: the consumers get them through
``bootstrap``; the two ingress processes, whose lifecycles differ (the webhook receiver answers 503
while its producer retries a Kafka that is away at boot; the CDC subscriber's Salesforce client also
authenticates its CometD session), build theirs with the same named builders (``kafka_producer``,
``open_producer``, ``open_pool``, ``redis_client``, ``open_salesforce``, ``change_source``,
``open_offsets_reader``). A test checks that no other
module of ``workers/`` builds a client. (The runtime's consumer and failure producer are the
runtime's own, ``workers.runtime.serve``; the ops commands open short-lived connections of their own.)

Owns the lifecycle of clients, pools and producers (opened here, closed on exit, in reverse order).
Given a worker's ``needs`` (``workers.needs.Need``), it opens only those: a cache invalidator
holds no vendor credentials and builds no vendor client (its ports are ``Unconfigured``, which fail
loudly if a handler reaches for them). Must not hold business rules or bind handlers:
``workers.routes`` turns ``Deps`` into routes. Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import httpx
import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters import tracing
from adapters.db import create_pool
from adapters.freebit import FreebitPort, HttpFreebit
from adapters.http import build_client
from adapters.kafka import AiokafkaProducer, ProducerPort, durable_producer, start_client
from adapters.leader_lease import PgAdvisoryLease
from adapters.salesforce import (
    HttpSalesforce,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SalesforcePort,
    TokenSource,
)
from adapters.salesforce_stream import FleetAuthenticator
from adapters.whmcs import HttpWhmcs, WhmcsPort
from workers.config import ConfigError, HttpSettings, SalesforceSettings, Settings
from workers.ingress.cdc_source import ChangeSource, CometdSource
from workers.ingress.pubsub_source import PubSubSource
from workers.needs import Need

log = structlog.get_logger(__name__)


@dataclass
class Deps:
    """Everything a worker's handlers may be bound to."""

    settings: Settings
    producer: ProducerPort
    pool: asyncpg.Pool
    redis: aioredis.Redis
    salesforce: SalesforcePort
    whmcs: WhmcsPort
    freebit: FreebitPort
    salesforce_tokens: TokenSource | None = None

    def lease(self, name: str) -> PgAdvisoryLease:
        """A Postgres leader lease named ``name`` for this process (its connection opens on ``try_acquire``)."""
        return leader_lease(self.settings, name, socket.gethostname())


class Unconfigured:
    """Stands in for a port the worker did not declare a need for: any use is a wiring bug, and says so."""

    def __init__(self, port: str, need: Need) -> None:
        self._port, self._need = port, need

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(
            f"{self._port}.{name} used by a worker that does not declare Need.{self._need.name} (workers/routes.py)"
        )


def _client(http: HttpSettings, upstream: str, **kwargs: Any) -> httpx.AsyncClient:
    client = build_client(http.connect_timeout_s, http.read_timeout_s, http.max_connections, **kwargs)
    if tracing.enabled():  # a span per vendor call (opentelemetry-instrumentation-httpx)
        tracing.instrument_http(client, upstream)
    return client


def start_tracing(settings: Settings, service: str) -> Callable[[], None] | None:
    """Turn tracing on for this process when the ``OTEL_*`` variables say so (``TracingSettings``);
    returns the shutdown that flushes the queued spans, or None when tracing stays off. Called once
    per process, before anything below builds a client (``fleet run``, the demo's workers)."""
    exporting = settings.tracing.exporting(service)
    if exporting is None or tracing.enabled():
        return None
    shutdown = tracing.configure(exporting)
    log.info("tracing_on", service=exporting.service_name, exporter=exporting.exporter, endpoint=exporting.endpoint)
    return shutdown


def traced(producer: ProducerPort) -> ProducerPort:
    """``producer`` with a span per record and ``traceparent`` headers when tracing is on; as is when off."""
    return tracing.TracingProducer(producer) if tracing.enabled() else producer


def salesforce_private_key(sf: SalesforceSettings, env: str) -> str:
    """The JWT signing key: the configured file, or (local/test only) a throwaway key the sandbox accepts."""
    if sf.private_key_path is not None:
        try:
            return sf.private_key_path.read_text()
        except OSError as exc:
            raise ConfigError(f"invalid setting FLEET_SALESFORCE__PRIVATE_KEY_PATH: {exc}") from None
    if env not in ("local", "test"):
        raise ConfigError("missing setting FLEET_SALESFORCE__PRIVATE_KEY_PATH (required for JWT bearer auth)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


def salesforce_token_source(sf: SalesforceSettings, env: str, client: httpx.AsyncClient) -> TokenSource:
    if sf.auth == "jwt":
        return JwtBearerAuth(
            client, sf.login_url, sf.client_id, sf.username, salesforce_private_key(sf, env), audience=sf.jwt_audience
        )
    if sf.auth == "refresh_token":
        return RefreshTokenAuth(
            client, sf.login_url, sf.client_id, sf.client_secret.get_secret_value(), sf.refresh_token.get_secret_value()
        )
    return PasswordAuth(
        client,
        sf.login_url,
        sf.client_id,
        sf.client_secret.get_secret_value(),
        sf.username,
        sf.password.get_secret_value(),
    )


@contextlib.asynccontextmanager
async def bootstrap(
    settings: Settings,
    *,
    producer: ProducerPort | None = None,
    pool: asyncpg.Pool | None = None,
    redis: aioredis.Redis | None = None,
    salesforce: SalesforcePort | None = None,
    whmcs: WhmcsPort | None = None,
    freebit: FreebitPort | None = None,
    needs: Collection[Need] | None = None,
) -> AsyncIterator[Deps]:
    """Open what was not passed in (and is needed: ``needs`` None means everything); close exactly
    what was opened here."""
    wanted = set(Need) if needs is None else set(needs)
    async with contextlib.AsyncExitStack() as stack:
        tokens: TokenSource | None = None
        if producer is None:
            producer = await open_producer(stack, settings)
        if pool is None:
            pool = await open_pool(stack, settings)
        if redis is None and Need.REDIS not in wanted:
            redis = cast(aioredis.Redis, Unconfigured("redis", Need.REDIS))
        if redis is None:
            # no client-side retries: redis-py's default (3 tries with back-off) would hold a partition
            # for seconds per record; the runtime's retry policy decides instead
            redis = redis_client(settings, socket_timeout=2.0, connect_timeout=2.0)
            stack.push_async_callback(redis.aclose)
        if salesforce is None and Need.SALESFORCE not in wanted:
            salesforce = cast(SalesforcePort, Unconfigured("salesforce", Need.SALESFORCE))
        if salesforce is None:
            salesforce, tokens = await open_salesforce(stack, settings)
        if whmcs is None and Need.WHMCS_API not in wanted:
            whmcs = cast(WhmcsPort, Unconfigured("whmcs", Need.WHMCS_API))
        if whmcs is None:
            wh = settings.whmcs
            client = await stack.enter_async_context(_client(wh.http, "whmcs"))
            whmcs = HttpWhmcs(
                client, wh.api_url, wh.identifier, wh.secret.get_secret_value(), wh.access_key.get_secret_value()
            )
        if freebit is None and Need.FREEBIT not in wanted:
            freebit = cast(FreebitPort, Unconfigured("freebit", Need.FREEBIT))
        if freebit is None:
            fb = settings.freebit
            client = await stack.enter_async_context(_client(fb.http, "freebit"))
            freebit = HttpFreebit(client, fb.base_url, fb.oem_id, fb.oem_key.get_secret_value())
        yield Deps(settings, producer, pool, redis, salesforce, whmcs, freebit, tokens)


def kafka_producer(settings: Settings, role: str | None = None, **options: Any) -> AIOKafkaProducer:
    """An unstarted durable producer (acks=all, idempotent) on the configured connection; ``role``
    suffixes the client id (``fleet-sf-cdc``) so the broker's logs and quotas tell processes apart."""
    client_id = settings.kafka.client_id if role is None else f"{settings.kafka.client_id}-{role}"
    return durable_producer(settings.kafka.connection(), client_id, **options)


async def open_producer(stack: contextlib.AsyncExitStack, settings: Settings, role: str | None = None) -> ProducerPort:
    """A started producer, stopped when ``stack`` closes. A credential or certificate Kafka refuses
    raises ``KafkaSecurityError`` here (one line from the CLI), before anything else connects."""
    raw = kafka_producer(settings, role)
    stack.push_async_callback(raw.stop)  # also after a failed start: it closes what start opened
    await start_client(raw, settings.kafka.connection())
    return traced(AiokafkaProducer(raw))


async def open_pool(
    stack: contextlib.AsyncExitStack, settings: Settings, min_size: int | None = None, max_size: int | None = None
) -> asyncpg.Pool:
    """A Postgres pool (the configured size unless given), closed when ``stack`` closes."""
    pg = settings.postgres
    pool = await create_pool(
        pg.dsn.get_secret_value(),
        pg.min_pool if min_size is None else min_size,
        pg.max_pool if max_size is None else max_size,
    )
    stack.push_async_callback(pool.close)
    return pool


async def open_offsets_reader(stack: contextlib.AsyncExitStack, settings: Settings, role: str) -> AIOKafkaConsumer:
    """A started consumer of no group that is assigned nothing, stopped when ``stack`` closes: it only
    answers ListOffsets (``beginning_offsets``, ``end_offsets``, ``offsets_for_times``) for the
    dead-letter gauges of a process that consumes nothing (sf-cdc's ``ingress.dlq.v1``); it never
    fetches, commits or joins a group."""
    kafka = settings.kafka
    consumer = AIOKafkaConsumer(
        **kafka.connection().options(),
        client_id=f"{kafka.client_id}-{role}",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # the end offset a consumer of the topic would see
        request_timeout_ms=kafka.request_timeout_ms,
    )
    stack.push_async_callback(consumer.stop)  # also after a failed start: it closes what start opened
    await start_client(consumer, kafka.connection())
    return consumer


def leader_lease(settings: Settings, name: str, holder: str) -> PgAdvisoryLease:
    """A Postgres leader lease named ``name`` (its own connection, opened by ``try_acquire``)."""
    return PgAdvisoryLease(settings.postgres.dsn.get_secret_value(), name, application_name=f"{name} {holder}")


def redis_client(settings: Settings, *, socket_timeout: float | None, connect_timeout: float) -> aioredis.Redis:
    """A Redis client that tries once: whoever calls it owns the retry policy (the runtime's tiers, or
    the webhook receiver's fail-open dedupe). redis-py parses replies with hiredis when installed
    (``redis[hiredis]`` in pyproject). The caller closes it."""
    return aioredis.from_url(
        settings.redis.url.get_secret_value(),
        retry=Retry(NoBackoff(), 0),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
    )


def change_source(settings: Settings, tokens: TokenSource, *, connection_timeout_s: float = 10.0) -> ChangeSource:
    """The CDC subscriber's source on ``FLEET_SALESFORCE__CDC_TRANSPORT``: CometD (the Streaming API)
    or the Pub/Sub API, both authenticated by ``tokens`` (the REST client's). It connects at its
    first ``open``, not here."""
    sf = settings.salesforce
    if sf.cdc_transport == "pubsub":
        return PubSubSource(
            tokens,
            sf.channels,
            endpoint=sf.pubsub_endpoint,
            tls=sf.pubsub_tls,
            fallback=sf.replay_fallback,
            num_requested=sf.pubsub_num_requested,
            keepalive_s=sf.pubsub_keepalive_s,
            call_timeout_s=connection_timeout_s,
        )
    return CometdSource(
        FleetAuthenticator(tokens),
        sf.channels,
        fallback=sf.replay_fallback,
        api_version=sf.api_version,
        connection_timeout=connection_timeout_s,
        reauthenticate=_forcing_refresh(tokens),
    )


def _forcing_refresh(tokens: TokenSource) -> Callable[[], Awaitable[None]]:
    """Replace the current token before a CometD reopen: a session the watchdog tore down may have
    been revoked silently, and reusing its token would fail the handshake again."""

    async def reauthenticate() -> None:
        current = await tokens.token()
        await tokens.refresh(current.access_token)

    return reauthenticate


async def open_salesforce(stack: contextlib.AsyncExitStack, settings: Settings) -> tuple[HttpSalesforce, TokenSource]:
    """The Salesforce REST client and its token source (the CDC subscriber's CometD session
    authenticates with the same tokens); the HTTP client closes with ``stack``."""
    sf = settings.salesforce
    client = await stack.enter_async_context(_client(sf.http, "salesforce"))
    tokens = salesforce_token_source(sf, settings.env, client)
    return HttpSalesforce(client, tokens, sf.api_version, sf.call_options_client), tokens
