"""The one Settings tree of the fleet, built once at start-up and passed down.

The only reader of the environment (prefix ``FLEET_``, nested sections joined by ``__``, e.g.
``FLEET_KAFKA__BOOTSTRAP``). ``load_settings`` turns a validation failure into a one-line
``ConfigError`` that names the variable. Nothing here runs at import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

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


class PostgresSettings(_Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:15432/fleet")
    min_pool: int = Field(1, ge=0)
    max_pool: int = Field(10, ge=1)


class RedisSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")
    invalidation_channel: str = "portal:cache:invalidated"


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
    #: CDC subscriber: silence longer than this (> Salesforce's 110 s long poll) is a stall → reconnect
    cdc_watchdog_s: float = Field(180.0, gt=0)
    cdc_checkpoint_interval_s: float = Field(0.25, gt=0)
    cdc_lanes: int = Field(8, ge=1)
    http: HttpSettings = HttpSettings()


class WhmcsSettings(_Section):
    api_url: str = "http://127.0.0.1:18082/includes/api.php"
    identifier: str = "fleet-api"
    secret: SecretStr = SecretStr("sandbox-whmcs-secret")
    access_key: SecretStr = SecretStr("")
    webhook_secrets: list[SecretStr] = [SecretStr("whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==")]
    webhook_tolerance_s: int = Field(300, ge=1)
    webhook_max_body_bytes: int = Field(256 * 1024, ge=1024)
    webhook_listen_host: str = "127.0.0.1"
    webhook_listen_port: int = 18090
    webhook_dedupe_ttl_s: int = 86400
    http: HttpSettings = HttpSettings()


class FreebitSettings(_Section):
    base_url: str = "http://127.0.0.1:18083/emptool/api"
    oem_id: str = "PASI"
    oem_key: SecretStr = SecretStr("sandbox-oem-key")
    confirm_max_wait_s: int = Field(900, ge=1)
    http: HttpSettings = HttpSettings()


class RuntimeSettings(_Section):
    in_place_attempts: int = Field(3, ge=1)
    backoff_initial_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    retry_tier_delays_ms: list[int] = [5_000, 30_000]
    max_in_flight_per_partition: int = Field(1, ge=1)
    shutdown_grace_s: float = Field(20.0, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int = Field(0, ge=0, le=65535)  # 0 = pick a free port
    inbox_retention_days: int = Field(14, ge=1)
    max_replays: int = Field(3, ge=1)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class SandboxSettings(_Section):
    host: str = "127.0.0.1"
    salesforce_port: int = Field(18081, ge=1, le=65535)
    whmcs_port: int = Field(18082, ge=1, le=65535)
    freebit_port: int = Field(18083, ge=1, le=65535)
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
    kafka_heap: str = "1g"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        extra="ignore",
        frozen=True,
    )

    env: Literal["local", "test", "staging", "production"] = "local"
    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    salesforce: SalesforceSettings = SalesforceSettings()
    whmcs: WhmcsSettings = WhmcsSettings()
    freebit: FreebitSettings = FreebitSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    log: LogSettings = LogSettings()
    sandbox: SandboxSettings = SandboxSettings()
    stack: StackSettings = StackSettings()

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


def load_settings(env_file: Path | None = STACK_ENV_FILE) -> Settings:
    """Build the Settings once; environment variables win over the stack's env file."""
    try:
        if env_file is not None and env_file.exists():
            return Settings(_env_file=env_file, _env_file_encoding="utf-8")  # type: ignore[call-arg]
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = env_var_name(tuple(first["loc"]))
        shown = "" if _SECRETISH.search(name) else f" (got {first.get('input')!r})"
        raise ConfigError(f"invalid setting {name}: {first['msg']}{shown}") from None
    except SettingsError as exc:  # a value that is not even parseable (e.g. bad JSON for a list)
        match = re.search(r'field "([^"]+)"', str(exc))
        name = ENV_PREFIX + (match.group(1).upper() if match else "?")
        raise ConfigError(f"invalid setting {name}: cannot parse the value ({exc.__cause__ or exc})") from None


_SECRETISH = re.compile(r"SECRET|KEY|PASSWORD|TOKEN|DSN|URL", re.IGNORECASE)


def env_example() -> str:
    """Render ``deploy/env.example``: every variable Settings reads, with its default.

    Generated (and checked by a unit test) so the documented contract cannot drift from the code.
    """
    lines = [
        "# Every variable the fleet reads (generated by `fleet config env-example`; do not edit by hand).",
        "# Prefix FLEET_, nested sections joined by __. Values shown are the defaults (secrets blanked).",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            var = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                lines.append(f"# --- {var} ---")
                walk(annotation, var + NESTED)
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr) or (
                isinstance(default, list) and default and isinstance(default[0], SecretStr)
            ):
                shown = ""
            elif isinstance(default, list):
                shown = "[" + ",".join(f'"{v}"' for v in default) + "]"
            elif default is None:
                shown = ""
            elif isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = str(default)
            doc = f"  # {info.description}" if info.description else ""
            lines.append(f"{var}={shown}{doc}")

    walk(Settings, ENV_PREFIX)
    return "\n".join(lines) + "\n"
