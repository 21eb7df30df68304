"""The one Settings tree of the fleet, built once at start-up and passed down.

The only reader of the environment (prefix ``FLEET_``, nested sections joined by ``__``, e.g.
``FLEET_KAFKA__BOOTSTRAP``) and of secret files: a file named like the variable in a secrets
directory (``FLEET_SECRETS_DIR``, else systemd's ``$CREDENTIALS_DIRECTORY`` and ``/run/secrets``)
is read as its value; the environment wins over files. ``load_settings`` turns a validation failure
into a one-line ``ConfigError`` that names the variable. The defaults are the embedded stack's and
the sandboxes' (``SANDBOX_DEFAULTS``): a staging or production process starts without them, so
whatever it needs must be given (``workers.profile`` says what is missing). Nothing runs at import.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from events.topics import ClassPolicy, TopicClass, TopicPolicy

if TYPE_CHECKING:
    from adapters.kafka.connection import KafkaConnection

ENV_PREFIX = "FLEET_"
NESTED = "__"
#: written by ``fleet stack up``; read when present so the CLI and tests find the local stack
STACK_ENV_FILE = Path(".fleet/stack.env")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:19092"
    client_id: str = "fulfillment-fleet"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    request_timeout_ms: int = Field(15_000, ge=1_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    #: PEM file of the CA that signed the brokers' certificates; unset = the system's trust store
    ssl_cafile: Path | None = None
    #: PEM client certificate and key, for brokers that authenticate clients by certificate (mTLS)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr = SecretStr("")
    ssl_check_hostname: bool = True

    def connection(self) -> KafkaConnection:
        """How every Kafka client of this process connects (``adapters.kafka.KafkaConnection``)."""
        from adapters.kafka.connection import KafkaConnection

        if not self.bootstrap:
            raise ConfigError("missing setting FLEET_KAFKA__BOOTSTRAP (the cluster's bootstrap servers)")
        return KafkaConnection(
            bootstrap=self.bootstrap,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password.get_secret_value(),
            ssl_cafile=self.ssl_cafile,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            ssl_key_password=self.ssl_key_password.get_secret_value(),
            ssl_check_hostname=self.ssl_check_hostname,
        )


class PostgresSettings(_Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:15432/fleet")
    min_pool: int = Field(1, ge=0)
    # Connections per worker process, opened as needed. It also caps the keys a worker handles at once
    # (RuntimeSettings.max_in_flight: at most max_pool - 1). Size PostgreSQL's max_connections for
    # every instance of every worker (the local stack allows 400).
    max_pool: int = Field(32, ge=2)


class RedisSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")
    invalidation_channel: str = "portal:cache:invalidated"
    #: the cache-invalidator's order-status notices (Activating / Activated / Failed) for the
    #: portal's live order view (SSE ``order.update``); docs/cache-keys.md, "The order-status notice"
    order_status_channel: str = "portal:orders:status"


class HttpSettings(_Section):
    connect_timeout_s: float = Field(3.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(50, ge=1)


class SalesforceSettings(_Section):
    instance_url: str = "http://localhost:18081"
    login_url: str = "http://localhost:18081"
    api_version: str = "60.0"
    auth: Literal["jwt", "refresh_token", "password"] = "jwt"
    client_id: str = "fleet-connected-app"
    client_secret: SecretStr = SecretStr("sandbox-client-secret")
    username: str = "integration@fleet.example"
    password: SecretStr = SecretStr("")
    refresh_token: SecretStr = SecretStr("")
    private_key_path: Path | None = None
    #: the JWT ``aud`` claim: https://login.salesforce.com, or https://test.salesforce.com for sandboxes
    jwt_audience: str = "https://login.salesforce.com"
    #: sent as ``Sforce-Call-Options: client=<id>`` on every write; CDC ``changeOrigin`` carries it back
    call_options_client: str = "fulfillment-fleet"
    channels: list[str] = [
        "/data/OrderChangeEvent",
        "/data/OrderItemChangeEvent",
        "/data/Product2ChangeEvent",
        "/data/PricebookEntryChangeEvent",
        "/event/Account_Eligibility_Update__e",
    ]
    activation_trigger_statuses: list[str] = ["Processed", "Reactivate", "Approved"]
    replay_fallback: Literal["latest", "earliest"] = "latest"
    api_budget_share_for_low_priority: float = Field(0.8, gt=0, le=1)
    #: sf-writer: a usage reading (``Sforce-Limit-Info``) older than this is unknown and admits low priority
    #: again, so a writer that only defers (nothing answered since) still learns that the budget recovered
    api_usage_max_age_s: float = Field(300.0, gt=0)
    #: sf-writer: at most this many Salesforce calls in flight per process (Salesforce allows 25
    #: concurrent long-running calls per org, shared with every other integration)
    max_concurrent_calls: int = Field(4, ge=1, le=25)
    #: CDC subscriber: silence longer than this is a stall → reconnect; None = 180 s for CometD (>
    #: Salesforce's 110 s long poll), 330 s for Pub/Sub (> the ~270 s between keepalive responses)
    cdc_watchdog_s: float | None = Field(None, gt=0)
    cdc_checkpoint_interval_s: float = Field(0.25, gt=0)
    #: CDC subscriber: changes of different records worked on at once (each record in order); see CdcOptions.lanes
    cdc_lanes: int = Field(64, ge=1)
    #: the CDC checkpoint's key (one row per subscriber and channel) and the leader lease's name: give
    #: each Salesforce org its own when several run against one database
    cdc_subscriber: str = "sf-cdc"
    #: the lease of the one active CDC subscriber (``workers.ingress.cdc_leader``): a standby tries every
    #: RETRY_S; the leader checks its lease every CHECK_INTERVAL_S, each check bounded by CHECK_TIMEOUT_S;
    #: a takeover waits TAKEOVER_GRACE_S (> interval + timeout) unless the last leader let go cleanly
    cdc_lease_retry_s: float = Field(1.0, gt=0)
    cdc_lease_check_interval_s: float = Field(1.0, gt=0)
    cdc_lease_check_timeout_s: float = Field(1.0, gt=0)
    cdc_lease_takeover_grace_s: float = Field(3.0, gt=0)
    #: where change events come from: the Streaming API (CometD, ``/cometd/<api_version>``) or the
    #: Pub/Sub API (gRPC at ``pubsub_endpoint``); the same events reach Kafka either way
    cdc_transport: Literal["cometd", "pubsub"] = "cometd"
    #: the Pub/Sub API's host:port (Salesforce: ``api.pubsub.salesforce.com:7443``)
    pubsub_endpoint: str = "localhost:18084"
    #: TLS to ``pubsub_endpoint``; None = TLS unless the host is loopback (the sandbox)
    pubsub_tls: bool | None = None
    #: events asked for per FetchRequest (the API's maximum is 100); topped up as they are consumed
    pubsub_num_requested: int = Field(100, ge=1, le=100)
    #: gRPC keepalive pings on the stream's connection (Salesforce's own examples use ~60 s)
    pubsub_keepalive_s: float = Field(60.0, gt=0)
    http: HttpSettings = HttpSettings()


class WhmcsSettings(_Section):
    api_url: str = "http://127.0.0.1:18082/includes/api.php"
    identifier: str = "fleet-api"
    secret: SecretStr = SecretStr("sandbox-whmcs-secret")
    access_key: SecretStr = SecretStr("")
    #: Standard Webhooks secrets, newest first (rotation): a JSON list, or one or more separated by commas
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = [SecretStr("whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==")]
    webhook_tolerance_s: int = Field(300, ge=1)
    webhook_max_body_bytes: int = Field(256 * 1024, ge=1024)
    webhook_listen_host: str = "127.0.0.1"
    webhook_listen_port: int = 18090
    webhook_dedupe_ttl_s: int = 86400
    http: HttpSettings = HttpSettings()

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        """A secret file or variable may hold one secret, several separated by commas, or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


class FreebitSettings(_Section):
    base_url: str = "http://127.0.0.1:18083/emptool/api"
    oem_id: str = "PASI"
    oem_key: SecretStr = SecretStr("sandbox-oem-key")
    confirm_max_wait_s: int = Field(900, ge=1)
    http: HttpSettings = HttpSettings()


class FulfillmentSettings(_Section):
    """The fulfillment saga's durable timers (``workers.fulfillment.timers``): scheduled activations,
    the re-checks of orders parked for a missing pay method, and the stuck-order sweeper."""

    #: seconds before each re-check (WHMCS GetPayMethods) of an order parked for a missing pay method,
    #: one per re-check, the last repeating: production WHMCS sends no hook when a bank account or a
    #: remote token is added, so the order must not wait for one
    payment_recheck_s: list[float] = [600, 1800, 3600, 10800, 21600, 43200, 86400]
    #: how often a worker looks for due timers, and how many it takes at most per look
    timer_interval_s: float = Field(1.0, gt=0)
    timer_batch: int = Field(100, ge=1, le=10_000)
    #: a taken timer falls due again after this long unless the saga re-arms or clears it first
    timer_lease_s: float = Field(120.0, gt=0)
    #: how long an order may stay in a state before the sweeper reports it stuck (metric
    #: ``fleet_fulfillment_orders_stuck``, ``fleet orders list --stuck``), in seconds. ``parked``
    #: and ``scheduled`` count from when the wait began; ``scheduled``, from its due time
    stuck_after_s: dict[str, float] = {"running": 1800.0, "waiting": 3600.0, "parked": 259200.0, "scheduled": 600.0}
    stuck_check_interval_s: float = Field(60.0, gt=0)


class BreakerSettings(_Section):
    """The batch circuit breaker (``workers.runtime.breaker``): when most recent outcomes fail with one
    error class, the worker pauses every partition and holds the failing records instead of moving them."""

    window: int = Field(20, ge=1)  # outcomes remembered
    min_outcomes: int = Field(10, ge=1)  # never judge on fewer
    threshold: float = Field(0.8, gt=0, le=1)  # share of the window failing with one error class
    cooldown_s: float = Field(30.0, gt=0)  # open → half-open
    max_cooldown_s: float = Field(300.0, gt=0)  # doubling cap after failed trials
    enabled: bool = True


class RuntimeSettings(_Section):
    """The consume runtime (``workers.runtime``): delivery policy, concurrency, and the loop's knobs.

    One object for what an operator sets and for the engineering constants behind it (the loop knobs
    below ``max_replays``, each with the measurement that chose it): tests and benchmarks shrink those
    with ``RuntimeSettings(commit_interval_s=0.01)`` or ``model_copy(update=...)``. The worker reads
    every value once, when it is built: nothing here is read per record.
    """

    in_place_attempts: int = Field(3, ge=1)
    backoff_initial_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    retry_tier_delays_ms: list[int] = [5_000, 30_000]
    # Keys handled at once per partition (records of one key always one after another, in offset
    # order; commits stay contiguous): workers.runtime.dispatch. Unset: the route's own value
    # (workers/routes.py; fulfillment 16), else 1. Set, it wins over every route (1 = one record at a
    # time per partition, the runtime before key concurrency).
    max_in_flight_per_partition: int | None = Field(None, ge=1)
    # Keys handled at once by one worker process over all its partitions (Parallel Consumer's
    # maxConcurrency). A worker with a Postgres pool caps it at the pool's size - 1: a handler may hold
    # one connection while it waits and take a second briefly (the saga's lock and its writes), so
    # more handlers than connections would all wait for each other.
    max_in_flight: int = Field(64, ge=1)
    shutdown_grace_s: float = Field(20.0, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int = Field(0, ge=0, le=65535)  # 0 = pick a free port
    inbox_retention_days: int = Field(14, ge=1)
    max_replays: int = Field(3, ge=1)
    # --- the loop's knobs: production defaults that tests and benchmarks shrink ---
    # how long one getmany waits for data (also the stop-signal latency)
    poll_timeout_ms: int = Field(100, ge=1)
    # Shallow on purpose: a record is decoded and handled soon after aiokafka built it, while it is
    # still in the CPU cache (with 4,000 buffered per partition and 10,000 per getmany the same loop
    # cost ~0.7 us more per record in bench/runtime_bench.py). Deep buffers used to hide a fetch
    # stall (polling.FetchPacing, which fixes it instead). A partition's buffer may overshoot
    # buffer_per_partition by up to max_records.
    max_records: int = Field(500, ge=1)
    buffer_per_partition: int = Field(500, ge=1)  # pause fetching above this, resume below half
    commit_interval_s: float = Field(0.2, gt=0)  # commit done offsets at least this often...
    commit_every: int = Field(5_000, ge=1)  # ...or after this many done records
    # wait for in-flight records of revoked partitions; unset: half the consumer's rebalance timeout
    # under serve() (workers.runtime.consumer.revoke_grace_s), else min(shutdown_grace_s, 5)
    revoke_grace_s: float | None = Field(None, gt=0)
    liveness_timeout_s: float = Field(60.0, gt=0)  # /livez fails when the loop or a handler is stuck longer
    purge_interval_s: float = Field(3_600.0, gt=0)  # inbox purge period (with a pool)
    # how often the group's dead-letter depth and oldest age are read from Kafka (three ListOffsets
    # requests, by the one instance that owns the group's first partition; workers.runtime.dead_letters)
    dead_letter_check_interval_s: float = Field(30.0, gt=0)
    purge_batch: int = Field(1_000, ge=1)
    purge_max_batches: int = Field(100, ge=1)
    yield_every: int = Field(64, ge=1)  # records a partition task handles before letting other tasks run
    freeze_gc: bool = True  # see workers.runtime.gc_policy.freeze
    # Young collections every this many seconds from the poll loop instead of CPython's allocation
    # counter (unset: the counter), see workers.runtime.gc_policy
    gc_interval_s: float | None = Field(0.1, gt=0)
    # gen-1 (or timed) collections between two full ones (CPython's threshold2, default 10), see gc_policy
    gc_full_every: int = Field(100, ge=1)
    breaker: BreakerSettings = BreakerSettings()


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


#: the standard OpenTelemetry variables the fleet reads (``TracingSettings``), field → variable
OTEL_VARS = {
    "sdk_disabled": "OTEL_SDK_DISABLED",
    "traces_exporter": "OTEL_TRACES_EXPORTER",
    "exporter_otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "exporter_otlp_traces_endpoint": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "exporter_otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
    "exporter_otlp_headers": "OTEL_EXPORTER_OTLP_HEADERS",
    "service_name": "OTEL_SERVICE_NAME",
    "resource_attributes": "OTEL_RESOURCE_ATTRIBUTES",
    "traces_sampler": "OTEL_TRACES_SAMPLER",
    "traces_sampler_arg": "OTEL_TRACES_SAMPLER_ARG",
}


class TracingSettings(_Section):
    """Tracing (docs/tracing.md), off by default. Read from the standard ``OTEL_*`` variables, not
    ``FLEET_*`` ones: every OpenTelemetry-aware platform (an operator, a collector's sidecar injector)
    sets those names. The exception to "only this module reads the environment": the SDK itself also
    reads its own tuning variables (``OTEL_BSP_*`` batch sizes, ``OTEL_EXPORTER_OTLP_TIMEOUT``,
    ``_CERTIFICATE``, ``_COMPRESSION``, ``OTEL_ATTRIBUTE_*`` limits) when tracing is on; the ones
    that decide whether and where spans go are read here and handed to it as values.

    On when ``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or when it is unset and an OTLP
    endpoint is set; off when unset without an endpoint, ``none``, or ``OTEL_SDK_DISABLED=true``.
    (The specification's default exporter is ``otlp``: the fleet's is none, so an unconfigured
    process sends nothing anywhere.)"""

    sdk_disabled: bool = False
    traces_exporter: str = ""
    exporter_otlp_endpoint: str = ""
    exporter_otlp_traces_endpoint: str = ""
    exporter_otlp_protocol: Literal["", "http/protobuf"] = ""
    exporter_otlp_headers: SecretStr = SecretStr("")
    service_name: str = ""
    resource_attributes: str = ""
    traces_sampler: Literal["", "always_on", "parentbased_always_on", "traceidratio", "parentbased_traceidratio"] = ""
    traces_sampler_arg: float = Field(1.0, ge=0.0, le=1.0)

    @property
    def exporter(self) -> str | None:
        """``otlp``, ``console`` or None (off)."""
        if self.sdk_disabled:
            return None
        names = [n.strip() for n in self.traces_exporter.split(",") if n.strip()]
        if not names:
            return "otlp" if (self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint) else None
        for name in names:
            if name not in ("otlp", "console", "none"):
                raise ConfigError(f"invalid setting OTEL_TRACES_EXPORTER: {name!r} (otlp, console or none)")
        return "otlp" if "otlp" in names else "console" if "console" in names else None

    def exporting(self, service: str) -> Any:
        """What ``adapters.tracing.configure`` builds from (an ``Exporting``), or None when off.
        ``service``: this process's ``service.name`` unless ``OTEL_SERVICE_NAME`` is set."""
        exporter = self.exporter
        if exporter is None:
            return None
        from adapters.tracing import Exporting

        endpoint = self.exporter_otlp_traces_endpoint or None
        if endpoint is None and self.exporter_otlp_endpoint:
            endpoint = self.exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        ratio = self.traces_sampler_arg if self.traces_sampler.endswith("traceidratio") else 1.0
        return Exporting(
            service_name=self.service_name or service,
            exporter=exporter,
            endpoint=endpoint,
            headers=_pairs(self.exporter_otlp_headers.get_secret_value(), "OTEL_EXPORTER_OTLP_HEADERS"),
            sampler_ratio=ratio,
            resource=_pairs(self.resource_attributes, "OTEL_RESOURCE_ATTRIBUTES"),
        )


def _pairs(text: str, var: str) -> dict[str, str]:
    """``k=v,k2=v2`` (W3C baggage form, values URL-encoded) as a dict."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"invalid setting {var}: {item.strip()!r} is not name=value")
        out[name.strip()] = unquote(value.strip())
    return out


def otel_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``OTEL_*`` variables ``TracingSettings`` reads, by field (blank = unset)."""
    return {field: environ[var] for field, var in OTEL_VARS.items() if environ.get(var, "").strip()}


#: the trace link of an order on the console: Jaeger's search by the span attribute the tracing sets
DEFAULT_TRACE_URL = 'http://localhost:16686/search?service=fleet&tags={"fleet.order.id":"{order_id}"}'


class ConsoleSettings(_Section):
    """``fleet console``, the ops web app (docs/console.md). Outside ``FLEET_ENV=local`` every request
    must authenticate: a bearer token or HTTP basic auth (any user name, the token as password), or a
    user header set by an SSO proxy connecting from one of ``trusted_proxies``."""

    host: str = "127.0.0.1"
    port: int = Field(18500, ge=0, le=65535)  # 0 = pick a free port (tests)
    #: the bearer token / basic-auth password; required outside FLEET_ENV=local (at least 24 characters)
    token: SecretStr = SecretStr("")
    #: signs the per-session CSRF tokens; unset = a random key per process (sessions end on restart)
    session_secret: SecretStr = SecretStr("")
    #: header an SSO proxy (oauth2-proxy: X-Auth-Request-User / X-Forwarded-User) puts the user name in
    proxy_user_header: str = ""
    #: addresses the SSO proxy connects from, comma separated; the header is believed from these only
    trusted_proxies: Annotated[list[str], NoDecode] = []
    #: the public origin (scheme://host[:port]) when behind a proxy that rewrites Host; unset = the request's
    public_origin: str = ""
    #: an order's trace link; ``{order_id}`` is replaced by the Salesforce Order Id (URL-encoded)
    trace_url: str = DEFAULT_TRACE_URL
    #: worker health pages as name=http://host:port, comma separated (``/readyz`` and ``/metrics`` are read)
    health_urls: Annotated[list[str], NoDecode] = []
    #: the replay rate the console's form proposes (records per second)
    default_rate: float = Field(20.0, gt=0)

    @field_validator("trusted_proxies", "health_urls", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """A JSON list, or values separated by commas."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class SandboxSettings(_Section):
    host: str = "127.0.0.1"
    salesforce_port: int = Field(18081, ge=1, le=65535)
    whmcs_port: int = Field(18082, ge=1, le=65535)
    freebit_port: int = Field(18083, ge=1, le=65535)
    #: the Salesforce sandbox's Pub/Sub API (gRPC), beside its HTTP port
    salesforce_pubsub_port: int = Field(18084, ge=1, le=65535)
    #: where the WHMCS sandbox POSTs its signed webhooks (signed with ``whmcs.webhook_secrets[0]``)
    whmcs_webhook_url: str | None = None


class StackSettings(_Section):
    """The embedded local stack (``fleet stack``): real servers on loopback, state in ``dir``."""

    dir: Path = Path(".fleet/stack")
    kafka_port: int = Field(19092, ge=1, le=65535)
    kafka_controller_port: int = Field(19093, ge=1, le=65535)
    redis_port: int = Field(16379, ge=1, le=65535)
    postgres_port: int = Field(15432, ge=1, le=65535)
    # Kafka's own default (kafka-server-start.sh: -Xmx1G). At 512m a stack that has served a few test
    # runs (thousands of partitions) kept ~400 MB live: G1 then collected every second and ran
    # concurrent cycles back to back, and its pauses took both cores from the workers (e2e p99 tails).
    # Per JVM. With brokers > 1 and this left unset, each node gets devtools.stack.kafka.MULTI_BROKER_HEAP.
    kafka_heap: str = "1g"
    # Kafka nodes (KRaft, each broker+controller): 1 for `make run`/`make test`; 3 (`fleet stack up
    # --brokers 3`) for failover tests: node i on kafka_port+2i / kafka_controller_port+2i, RF 3, min ISR 2.
    # Left unset, `up`, `status` and `down` take the count the state directory was formatted with.
    brokers: int = Field(1, ge=1, le=5)


class TestingSettings(_Section):
    """Fault injection for chaos runs (``make chaos``) and tests; refused in staging and production."""

    #: crash points (``workers.crashpoints``): ``name=probability`` pairs, comma-separated, e.g.
    #: ``fulfillment.whmcs_create.called=0.02``; the process exits as ``kill -9`` would (status 137)
    crash_points: str = ""


class TopicClassSettings(_Section):
    """One topic class (domain, retry, dead_letter, parked); unset keeps the catalog's value."""

    partitions: int | None = Field(None, ge=1)
    retention_ms: int | None = Field(None, ge=-1)  # -1: keep forever


class TopicsSettings(_Section):
    """How ``fleet topics ensure`` provisions the catalog. Unset replication: 3 replicas with min ISR
    2 in staging/production (a write survives one broker's loss), 1/1 locally (one broker)."""

    replication_factor: int | None = Field(None, ge=1)
    min_insync_replicas: int | None = Field(None, ge=1)
    domain: TopicClassSettings = TopicClassSettings()
    retry: TopicClassSettings = TopicClassSettings()
    dead_letter: TopicClassSettings = TopicClassSettings()
    parked: TopicClassSettings = TopicClassSettings()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        # deploy/env.example lists every variable, optional ones blank (``FLEET_X=``): a blank value
        # means "not set" (the default), not an empty string that fails an int or a path
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    env: Literal["local", "test", "staging", "production"] = "local"
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicsSettings = TopicsSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    salesforce: SalesforceSettings = SalesforceSettings()
    whmcs: WhmcsSettings = WhmcsSettings()
    freebit: FreebitSettings = FreebitSettings()
    fulfillment: FulfillmentSettings = FulfillmentSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    log: LogSettings = LogSettings()
    #: from the ``OTEL_*`` variables (``load_settings``), never ``FLEET_TRACING__*``
    tracing: TracingSettings = TracingSettings()
    console: ConsoleSettings = ConsoleSettings()
    sandbox: SandboxSettings = SandboxSettings()
    stack: StackSettings = StackSettings()
    testing: TestingSettings = TestingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then secret files, then the stack's env file. pydantic-settings' own
        secrets source reads top-level fields only (a file ``kafka`` holding JSON); ours reads files
        named like the nested variables (``FLEET_KAFKA__SASL_PASSWORD``), as Docker, Kubernetes and
        systemd credentials mount them."""
        dirs = getattr(file_secret_settings, "secrets_dir", None) or ()
        return init_settings, env_settings, SecretFilesSource(settings_cls, dirs), dotenv_settings

    @property
    def production_like(self) -> bool:
        return self.env in ("staging", "production")

    def topic_policy(self) -> TopicPolicy:
        """The catalog's provisioning on this environment's cluster (``events.topics.catalog``)."""
        topics = self.topics
        replicas = topics.replication_factor or (3 if self.production_like else 1)
        # 3 replicas with min ISR 2: an acks=all write survives one broker's loss and still has a copy
        min_isr = topics.min_insync_replicas or max(1, min(2, replicas - 1))
        classes = {
            TopicClass.DOMAIN: topics.domain,
            TopicClass.RETRY: topics.retry,
            TopicClass.DEAD_LETTER: topics.dead_letter,
            TopicClass.PARKED: topics.parked,
        }
        try:
            return TopicPolicy(
                replicas,
                min_isr,
                {name: ClassPolicy(c.partitions, c.retention_ms) for name, c in classes.items()},
            )
        except ValueError as exc:
            raise ConfigError(f"invalid setting FLEET_TOPICS__MIN_INSYNC_REPLICAS: {exc}") from None

    def secrets(self) -> list[str]:
        """Every non-empty secret value, for the log redaction processor."""
        found: list[str] = []

        def walk(model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, SecretStr) and item.get_secret_value():
                        found.append(item.get_secret_value())
                    elif isinstance(item, BaseModel):
                        walk(item)

        walk(self)
        return found


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


def env_var_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + NESTED.join(p.upper() for p in parts)


class SecretFilesSource(EnvSettingsSource):
    """Values from files named like the variables (``FLEET_WHMCS__SECRET``) in the secrets directories,
    parsed exactly as the environment is (nested sections, JSON lists). One trailing newline is
    dropped, as ``echo secret > file`` and Kubernetes secret files leave one."""

    def __init__(self, settings_cls: type[BaseSettings], dirs: Sequence[Path] | Path | str) -> None:
        self._dirs = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        found: dict[str, str | None] = {}
        for directory in self._dirs:
            for path in sorted(directory.iterdir()):
                if path.name.upper().startswith(ENV_PREFIX) and path.is_file():
                    found[path.name.lower()] = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        return found


#: a colon-separated list of directories holding secret files (read by ``load_settings`` only)
SECRETS_DIR_VAR = "FLEET_SECRETS_DIR"
#: where secrets are looked for when ``FLEET_SECRETS_DIR`` is unset: systemd's ``LoadCredential=``
#: directory, then Docker's and Kubernetes' usual mount point, each only when it exists
DEFAULT_SECRETS_DIRS = ("$CREDENTIALS_DIRECTORY", "/run/secrets")


def secrets_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The secrets directories of this process; a directory named in ``FLEET_SECRETS_DIR`` must exist."""
    environ = os.environ if environ is None else environ
    named = environ.get(SECRETS_DIR_VAR, "").strip()
    if named:
        dirs = [Path(part) for part in named.split(":") if part]
        for directory in dirs:
            if not directory.is_dir():
                raise ConfigError(f"invalid setting {SECRETS_DIR_VAR}: {directory} is not a directory")
        return dirs
    candidates = [os.path.expandvars(d) for d in DEFAULT_SECRETS_DIRS]
    return [Path(d) for d in candidates if not d.startswith("$") and Path(d).is_dir()]


#: fields whose defaults are the embedded stack's endpoints or the sandboxes' public credentials:
#: right for ``local`` and ``test``, and blanked in staging/production unless set explicitly, so a
#: production process can never run on them by omission (``workers.profile`` then names what is missing)
SANDBOX_DEFAULT_FIELDS: tuple[tuple[str, str], ...] = (
    ("kafka", "bootstrap"),
    ("postgres", "dsn"),
    ("redis", "url"),
    ("salesforce", "instance_url"),
    ("salesforce", "login_url"),
    ("salesforce", "client_id"),
    ("salesforce", "client_secret"),
    ("salesforce", "username"),
    ("salesforce", "pubsub_endpoint"),
    ("whmcs", "api_url"),
    ("whmcs", "identifier"),
    ("whmcs", "secret"),
    ("whmcs", "webhook_secrets"),
    ("freebit", "base_url"),
    ("freebit", "oem_key"),
)


def sandbox_defaults() -> dict[str, Any]:
    """Variable name -> the default a staging/production process refuses (plain values, secrets revealed)."""
    found: dict[str, Any] = {}
    for section, name in SANDBOX_DEFAULT_FIELDS:
        default = Settings.model_fields[section].get_default(call_default_factory=True)
        found[env_var_name((section, name))] = _plain(getattr(default, name))
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _without_sandbox_defaults(settings: Settings) -> Settings:
    """Staging/production: every sandbox default that was not set explicitly becomes empty."""
    updates: dict[str, dict[str, Any]] = {}
    for section, name in SANDBOX_DEFAULT_FIELDS:
        model = getattr(settings, section)
        if name in model.model_fields_set:
            continue
        current = getattr(model, name)
        empty: Any = [] if isinstance(current, list) else SecretStr("") if isinstance(current, SecretStr) else ""
        updates.setdefault(section, {})[name] = empty
    return settings.model_copy(
        update={section: getattr(settings, section).model_copy(update=fields) for section, fields in updates.items()}
    )


def load_settings(
    env_file: Path | None = STACK_ENV_FILE,
    *,
    env: str | None = None,
) -> Settings:
    """Build the Settings once: environment variables, then secret files, then the stack's env file.
    ``env`` overrides ``FLEET_ENV`` (``fleet config check --env production``). In staging and
    production the stack's env file is not read and the sandbox defaults are dropped."""
    dirs = secrets_dirs()
    init: dict[str, Any] = {"_secrets_dir": dirs or None, "tracing": otel_settings(os.environ)}
    if env is not None:
        init["env"] = env
    try:
        settings = _build(init, env_file)
        if settings.production_like:
            if env_file is not None and env_file.exists():  # the local stack's endpoints are no default there
                settings = _build(init, None)
            settings = _without_sandbox_defaults(settings)
        return settings
    except ValidationError as exc:
        first = exc.errors()[0]
        name = env_var_name(tuple(first["loc"]))
        shown = "" if _SECRETISH.search(name) else f" (got {first.get('input')!r})"
        raise ConfigError(f"invalid setting {name}: {first['msg']}{shown}") from None
    except SettingsError as exc:  # a value that is not even parseable (e.g. bad JSON for a list)
        match = re.search(r'field "([^"]+)"', str(exc))
        name = ENV_PREFIX + (match.group(1).upper() if match else "?")
        raise ConfigError(f"invalid setting {name}: cannot parse the value ({exc.__cause__ or exc})") from None


def _build(init: dict[str, Any], env_file: Path | None) -> Settings:
    if env_file is not None and env_file.exists():
        return Settings(_env_file=env_file, _env_file_encoding="utf-8", **init)
    return Settings(**init)


_SECRETISH = re.compile(r"SECRET|KEY|PASSWORD|TOKEN|DSN|URL", re.IGNORECASE)


def env_example() -> str:
    """Render ``deploy/env.example``: every variable Settings reads, with its default.

    Generated (and checked by a unit test) so the documented contract cannot drift from the code.
    """
    lines = [
        "# Every variable the fleet reads (generated by `fleet config env-example`; do not edit by hand).",
        "# Prefix FLEET_, nested sections joined by __. Values shown are the defaults (secrets blanked).",
        "# Any of them may instead be a file of that name in a secrets directory (the environment wins).",
        "# FLEET_ENV=staging|production drops the local stack's and the sandboxes' defaults: set what the",
        "# worker needs (`fleet config check --env production` lists it).",
        "",
        f"# directories of secret files, colon-separated; unset: $CREDENTIALS_DIRECTORY and {DEFAULT_SECRETS_DIRS[1]}",
        f"{SECRETS_DIR_VAR}=",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            var = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if annotation is TracingSettings:
                continue  # the OTEL_* variables, listed at the end
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                lines.append(f"# --- {var} ---")
                walk(annotation, var + NESTED)
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr) or (
                isinstance(default, list) and default and isinstance(default[0], SecretStr)
            ):
                shown = ""
            elif isinstance(default, list) and all(isinstance(v, int | float) for v in default):
                shown = json.dumps(default)  # numbers stay numbers
            elif isinstance(default, list):
                shown = "[" + ",".join(f'"{v}"' for v in default) + "]"
            elif isinstance(default, dict):
                shown = json.dumps(default)
            elif default is None:
                shown = ""
            elif isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = str(default)
            doc = f"  # {info.description}" if info.description else ""
            lines.append(f"{var}={shown}{doc}")

    walk(Settings, ENV_PREFIX)
    lines += [
        "# --- tracing: the standard OpenTelemetry variables (docs/tracing.md); all unset = off ---",
        "# OTEL_TRACES_EXPORTER=otlp|console|none; unset: otlp when an endpoint is set, else off",
        "# OTEL_EXPORTER_OTLP_ENDPOINT: base URL (/v1/traces appended), e.g. http://127.0.0.1:4318",
        "# the SDK also reads its own tuning variables (OTEL_BSP_*, OTEL_EXPORTER_OTLP_TIMEOUT, ...)",
    ]
    lines += [f"{var}=" for var in OTEL_VARS.values()]
    return "\n".join(lines) + "\n"


def known_env_vars() -> set[str]:
    """Every variable name the fleet reads (``deploy/`` manifests may set only these)."""
    names = {SECRETS_DIR_VAR, *OTEL_VARS.values()}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            var = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if annotation is TracingSettings:
                continue
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, var + NESTED)
            else:
                names.add(var)

    walk(Settings, ENV_PREFIX)
    return names
