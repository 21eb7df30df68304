"""How every Kafka client of the fleet connects: bootstrap servers, TLS and SASL, in one value.

``KafkaConnection`` is built once from the settings by the composition root (or the CLI) and
handed to whatever opens a client: producers, consumers, admin clients, the dead-letter tools, the
benchmarks. ``options()`` is the only place that turns it into aiokafka keyword arguments.
``start_client`` starts a client and, when aiokafka could not bootstrap, asks the first broker
directly what went wrong, so a wrong password or an untrusted certificate ends in one
``KafkaSecurityError`` naming the setting instead of aiokafka's "Unable to bootstrap" (it logs each
cause and keeps none). Must not read configuration or retry: a bad credential does not heal.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: how long the diagnosis of a failed start may take: one connection, one handshake, one request
DIAGNOSE_TIMEOUT_S = 10.0


class KafkaSecurityError(Exception):
    """Kafka refused, or could not be reached with, the configured connection settings.

    Not retryable: the process stops with one line. ``setting`` is the ``KafkaSettings`` field to
    look at (``sasl_password``, ``ssl_cafile``, ...); the caller turns it into the variable's name.
    """

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting
        self.reason = reason


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to talk to them; secrets are plain strings kept out of ``repr``."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: str = field(default="", repr=False)
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def options(self) -> dict[str, Any]:
        """The aiokafka keyword arguments (``bootstrap_servers`` and security) of every client."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """One context per connection value (certificate files are read once), hostname checks on
        unless ``ssl_check_hostname`` is off; the system's trust store when no CA file is given."""
        return _ssl_context(self)

    def describe(self) -> str:
        """For logs: where and how, never a secret."""
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"{self.bootstrap} over {self.security_protocol}{who}"


KafkaTarget = KafkaConnection | str


def as_connection(target: KafkaTarget) -> KafkaConnection:
    """A bare ``host:port`` string is a PLAINTEXT connection (the embedded stack, tests, benches)."""
    return target if isinstance(target, KafkaConnection) else KafkaConnection(target)


@functools.lru_cache(maxsize=16)
def _ssl_context(connection: KafkaConnection) -> ssl.SSLContext:
    for setting in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(connection, setting)
        if path is not None and not Path(path).is_file():
            raise KafkaSecurityError(setting, f"kafka: {setting} {path} is not a readable file")
    if connection.ssl_keyfile is not None and connection.ssl_certfile is None:
        raise KafkaSecurityError("ssl_certfile", "kafka: a client key was given without its certificate")
    # What aiokafka's ``create_ssl_context`` does, in two steps so a bad file names its own setting.
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=connection.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            "ssl_cafile", f"kafka: cannot load the CA file {connection.ssl_cafile}: {exc}"
        ) from None
    if connection.ssl_certfile is not None:
        try:
            context.load_cert_chain(
                connection.ssl_certfile, connection.ssl_keyfile, connection.ssl_key_password or None
            )
        except (ssl.SSLError, OSError) as exc:
            setting = "ssl_keyfile" if "key" in str(exc).lower() else "ssl_certfile"
            raise KafkaSecurityError(setting, f"kafka: cannot load the client certificate or key: {exc}") from None
    context.check_hostname = connection.ssl_check_hostname
    return context


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Startable, target: KafkaTarget) -> None:
    """``await client.start()``; a failed bootstrap is diagnosed once and raised as
    ``KafkaSecurityError`` when the cause is the connection settings (else aiokafka's own error).
    The caller still owns ``stop()``/``close()`` of a client whose start failed."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        problem = await diagnose(as_connection(target))
        if problem is not None:
            raise problem from exc
        raise


async def diagnose(connection: KafkaConnection) -> KafkaSecurityError | None:
    """Talk to the first bootstrap server the way a client's bootstrap does (connect, handshake,
    authenticate, one metadata request) and say which setting is wrong, or None when the cause is
    not the settings (a broker that is down, say)."""
    host, port = _first_server(connection.bootstrap)
    conn = None
    try:
        async with asyncio.timeout(DIAGNOSE_TIMEOUT_S):
            conn = await create_conn(
                host, port, request_timeout_ms=int(DIAGNOSE_TIMEOUT_S * 1000), **_conn_options(connection)
            )
            await conn.send(MetadataRequest([]))
    except KafkaSecurityError as exc:
        return exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure is classified: a settings problem, or None
        return _classify(connection, exc)
    finally:
        if conn is not None:
            conn.close()
    return None


def _conn_options(connection: KafkaConnection) -> dict[str, Any]:
    options = connection.options()
    options.pop("bootstrap_servers")
    return options


def _first_server(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or first, int(port or 9092)


def _classify(connection: KafkaConnection, exc: BaseException) -> KafkaSecurityError | None:
    cause = _root(exc)
    where = connection.describe()
    text = str(cause).lower()
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == 62 or "hostname" in text or "ip address mismatch" in text:
            reason = f"the broker's certificate does not name the host it was reached at ({where})"
            return KafkaSecurityError("ssl_check_hostname", f"kafka: {reason}: {cause.verify_message}")
        reason = f"the broker's certificate is not trusted ({where})"
        return KafkaSecurityError("ssl_cafile", f"kafka: {reason}: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        if "wrong version number" in text or "record layer failure" in text or "packet length" in text:
            return KafkaSecurityError("security_protocol", f"kafka: the listener does not speak TLS ({where})")
        return KafkaSecurityError("ssl_certfile", f"kafka: TLS handshake failed ({where}): {cause}")
    if isinstance(cause, SaslAuthenticationFailed) or "authentication failed" in text:
        return KafkaSecurityError(
            "sasl_password", f"kafka: SASL authentication failed ({where}): wrong user or password"
        )
    if isinstance(cause, UnsupportedSaslMechanismError) or "does not support" in text:
        return KafkaSecurityError("sasl_mechanism", f"kafka: the broker does not offer {connection.sasl_mechanism}")
    if isinstance(cause, ConnectionResetError) and connection.uses_tls:
        return KafkaSecurityError("security_protocol", f"kafka: the listener does not speak TLS ({where})")
    if isinstance(cause, TimeoutError):
        expectation = "a TLS handshake" if connection.uses_tls else "an answer"
        return KafkaSecurityError(
            "security_protocol",
            f"kafka: no {expectation} within {DIAGNOSE_TIMEOUT_S:g} s ({where}); does the listener speak it?",
        )
    if _closed(exc):
        # The broker hung up on a request it could not read or did not allow: a plaintext request on
        # a TLS listener, or a request without SASL on a SASL listener. (A bad SCRAM or PLAIN
        # password is answered with SaslAuthenticationFailed above, not a hang-up.)
        if connection.uses_sasl:
            expects = f"{connection.security_protocol} at all"
        else:
            expects = "SASL (SASL_SSL or SASL_PLAINTEXT)" if connection.uses_tls else "TLS or SASL"
        return KafkaSecurityError(
            "security_protocol",
            f"kafka: the broker closed the connection ({where}); does the listener expect {expects}?",
        )
    return None  # refused, unreachable, or a broker error: not a settings problem, the caller's error stands


def _closed(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) and "closed" in str(exc)


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return exc
