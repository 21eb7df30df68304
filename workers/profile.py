"""The production profile: what a process refuses to start with, one problem per variable.

In any environment: Kafka security settings that contradict each other (SASL without a user, TLS
files that do not exist or a protocol that ignores them). In staging and production, for each
dependency the worker needs (``workers.routes.Need``): a setting that is missing (``load_settings``
drops the sandbox defaults there, so an omission shows up here), a value that is a sandbox's public
credential, a vendor URL on loopback, on a sandbox port or without TLS, a key file that cannot be
read, a webhook secret too short to be one. ``fleet config check`` prints the same list without
starting anything; ``fleet run`` refuses to start while it is not empty.
Must not: reach a server, or start anything. It reads settings and checks that files exist.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from workers.config import Settings, env_var_name, sandbox_defaults
from workers.needs import Need
from workers.routes import worker_needs

#: the sandboxes' other public credentials (sandbox/salesforce/oauth.py); refused wherever they appear
SANDBOX_ONLY_VALUES: dict[str, str] = {
    "FLEET_SALESFORCE__PASSWORD": "sandbox-password",
    "FLEET_SALESFORCE__REFRESH_TOKEN": "sandbox-refresh-token",
}
#: Standard Webhooks asks for secrets of 24 to 64 random bytes
MIN_WEBHOOK_SECRET_BYTES = 24


@dataclass(frozen=True, order=True)
class Problem:
    """One variable that stops a start; ``workers`` names who needs it (empty: every worker)."""

    variable: str
    reason: str
    workers: tuple[str, ...] = ()

    def line(self) -> str:
        who = f" (needed by {', '.join(self.workers)})" if self.workers else ""
        return f"{self.variable}: {self.reason}{who}"


def problems(settings: Settings, workers: Iterable[str] | None = None) -> list[Problem]:
    """What stops ``workers`` (default: every worker) from starting with ``settings``; one entry per
    variable, the workers that need it merged."""
    needs = worker_needs()
    chosen = list(needs) if workers is None else list(workers)
    unknown = [w for w in chosen if w not in needs]
    if unknown:
        raise KeyError(f"no such worker: {', '.join(unknown)} (see `fleet run --list`)")
    # one problem per variable: the first reason found (contradictions, then sandbox values, then
    # what a worker needs), with every worker that needs the variable
    reasons: dict[str, str] = {}
    needed_by: dict[str, set[str]] = {}
    for variable, reason in _consistency(settings):
        reasons.setdefault(variable, reason)
    if settings.production_like:
        if settings.testing.crash_points:
            reasons["FLEET_TESTING__CRASH_POINTS"] = "crash points are for chaos runs; never in staging or production"
        for variable, reason in _sandbox_values(settings):
            reasons.setdefault(variable, reason)
        for worker in chosen:
            for need in sorted(needs[worker]):
                for variable, reason in _CHECKS[need](settings):
                    reasons.setdefault(variable, reason)
                    needed_by.setdefault(variable, set()).add(worker)
    return sorted(Problem(v, r, tuple(sorted(needed_by.get(v, ())))) for v, r in reasons.items())


#: the shortest console token accepted outside FLEET_ENV=local
MIN_CONSOLE_TOKEN_CHARS = 24
#: tokens that documentation and examples show; refused as a console secret
KNOWN_CONSOLE_TOKENS = frozenset({"changeme", "change-me", "secret", "token", "admin", "password"})


def console_problems(settings: Settings) -> list[Problem]:
    """What stops ``fleet console`` from starting: the Kafka contradictions every process checks, and
    outside ``FLEET_ENV=local`` a missing, known or short token (the console's only secret when no
    SSO proxy is set) or a user header without the proxies it is trusted from."""
    found = list(_consistency(settings))
    if settings.env != "local":
        console = settings.console
        token = console.token.get_secret_value()
        variable = _var("console", "token")
        if not token and not console.proxy_user_header:
            found.append((variable, "missing (outside FLEET_ENV=local the console requires authentication)"))
        elif token and (token.lower() in KNOWN_CONSOLE_TOKENS or len(token) < MIN_CONSOLE_TOKEN_CHARS):
            found.append(
                (variable, f"a default or short token; use at least {MIN_CONSOLE_TOKEN_CHARS} random characters")
            )
        if console.proxy_user_header and not console.trusted_proxies:
            found.append((_var("console", "trusted_proxies"), "missing: the user header would be believed from anyone"))
    return sorted(Problem(v, r) for v, r in dict(found).items())


def warnings(settings: Settings, workers: Iterable[str] | None = None) -> list[str]:
    """What is allowed but worth a line at start-up (and in ``fleet config check``)."""
    chosen = list(worker_needs()) if workers is None else list(workers)
    if not settings.production_like or not chosen:
        return []
    if settings.kafka.security_protocol == "PLAINTEXT":
        return ["FLEET_KAFKA__SECURITY_PROTOCOL is PLAINTEXT: Kafka traffic is neither encrypted nor authenticated"]
    return []


Finding = tuple[str, str]


def _var(section: str, name: str) -> str:
    return env_var_name((section, name))


def _consistency(settings: Settings) -> list[Finding]:
    kafka = settings.kafka
    found: list[Finding] = []
    sasl = kafka.security_protocol.startswith("SASL_")
    tls = kafka.security_protocol.endswith("SSL")
    if sasl:
        if not kafka.sasl_username:
            found.append((_var("kafka", "sasl_username"), f"missing (required by {kafka.security_protocol})"))
        if not kafka.sasl_password.get_secret_value():
            found.append((_var("kafka", "sasl_password"), f"missing (required by {kafka.security_protocol})"))
    elif kafka.sasl_username or kafka.sasl_password.get_secret_value():
        found.append(
            (_var("kafka", "security_protocol"), f"{kafka.security_protocol} ignores the SASL credentials that are set")
        )
    tls_files = {"ssl_cafile": kafka.ssl_cafile, "ssl_certfile": kafka.ssl_certfile, "ssl_keyfile": kafka.ssl_keyfile}
    for name, path in tls_files.items():
        if path is None:
            continue
        if not tls:
            found.append((_var("kafka", name), f"set, but {kafka.security_protocol} does not use TLS"))
        elif not _readable(path):
            found.append((_var("kafka", name), f"{path} is not a readable file"))
    if kafka.ssl_keyfile is not None and kafka.ssl_certfile is None:
        found.append((_var("kafka", "ssl_certfile"), "missing (a client key needs its certificate)"))
    return found


def _sandbox_values(settings: Settings) -> list[Finding]:
    """A sandbox default that survived into staging/production was set on purpose, which is worse."""
    found = []
    current = _values(settings)
    for variable, default in {**sandbox_defaults(), **SANDBOX_ONLY_VALUES}.items():
        value = current.get(variable)
        defaults = default if isinstance(default, list) else [default]
        values = value if isinstance(value, list) else [value]
        if any(v and v in defaults for v in values):
            found.append((variable, "is a sandbox's public default; set the real value"))
    return found


def _kafka(settings: Settings) -> list[Finding]:
    return _required(settings, ("kafka", "bootstrap"))


def _postgres(settings: Settings) -> list[Finding]:
    return _required(settings, ("postgres", "dsn"))


def _redis(settings: Settings) -> list[Finding]:
    return _required(settings, ("redis", "url"))


def _salesforce(settings: Settings) -> list[Finding]:
    sf = settings.salesforce
    found = _vendor_urls(settings, ("salesforce", "login_url"), ("salesforce", "instance_url"))
    found += _required(settings, ("salesforce", "client_id"))
    if sf.auth == "jwt":
        found += _required(settings, ("salesforce", "username"))
        if sf.private_key_path is None:
            found.append((_var("salesforce", "private_key_path"), "missing (the JWT bearer flow signs with it)"))
        elif not _readable(sf.private_key_path):
            found.append((_var("salesforce", "private_key_path"), f"{sf.private_key_path} is not a readable file"))
    elif sf.auth == "refresh_token":
        found += _required(settings, ("salesforce", "client_secret"), ("salesforce", "refresh_token"))
    else:
        found += _required(
            settings, ("salesforce", "client_secret"), ("salesforce", "username"), ("salesforce", "password")
        )
    if sf.cdc_transport == "pubsub":
        found += _pubsub_endpoint(settings)
    return found


def _pubsub_endpoint(settings: Settings) -> list[Finding]:
    """The Pub/Sub API's host:port (no scheme): required, TLS, not a loopback sandbox."""
    sf, variable = settings.salesforce, _var("salesforce", "pubsub_endpoint")
    if not sf.pubsub_endpoint:
        return [(variable, "missing (the CDC transport is pubsub; Salesforce: api.pubsub.salesforce.com:7443)")]
    host = sf.pubsub_endpoint.rsplit(":", 1)[0].strip("[]")
    found = []
    if sf.pubsub_tls is False:
        found.append((_var("salesforce", "pubsub_tls"), "false (the token would travel in clear)"))
    if _is_loopback(host):
        found.append((variable, f"{sf.pubsub_endpoint} points at loopback (a sandbox?), not Salesforce"))
    return found


def _whmcs_api(settings: Settings) -> list[Finding]:
    found = _vendor_urls(settings, ("whmcs", "api_url"))
    return found + _required(settings, ("whmcs", "identifier"), ("whmcs", "secret"))


def _freebit(settings: Settings) -> list[Finding]:
    found = _vendor_urls(settings, ("freebit", "base_url"))
    return found + _required(settings, ("freebit", "oem_id"), ("freebit", "oem_key"))


def _webhook_secrets(settings: Settings) -> list[Finding]:
    variable = _var("whmcs", "webhook_secrets")
    secrets = [s.get_secret_value() for s in settings.whmcs.webhook_secrets]
    if not secrets:
        return [(variable, "missing (without a secret every webhook would be refused)")]
    for position, secret in enumerate(secrets, 1):
        size = _secret_bytes(secret)
        if size is None:
            return [(variable, f"secret {position} is not a Standard Webhooks secret (whsec_ + base64)")]
        if size < MIN_WEBHOOK_SECRET_BYTES:
            return [(variable, f"secret {position} has {size} bytes; at least {MIN_WEBHOOK_SECRET_BYTES} are needed")]
    return []


_CHECKS: dict[Need, Callable[[Settings], list[Finding]]] = {
    Need.KAFKA: _kafka,
    Need.POSTGRES: _postgres,
    Need.REDIS: _redis,
    Need.SALESFORCE: _salesforce,
    Need.WHMCS_API: _whmcs_api,
    Need.FREEBIT: _freebit,
    Need.WEBHOOK_SECRETS: _webhook_secrets,
}


def _required(settings: Settings, *fields: tuple[str, str]) -> list[Finding]:
    found = []
    for section, name in fields:
        value = getattr(getattr(settings, section), name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not value:
            found.append((_var(section, name), "missing"))
    return found


def _vendor_urls(settings: Settings, *fields: tuple[str, str]) -> list[Finding]:
    sandbox_ports = {settings.sandbox.salesforce_port, settings.sandbox.whmcs_port, settings.sandbox.freebit_port}
    found = []
    for section, name in fields:
        url = getattr(getattr(settings, section), name)
        variable = _var(section, name)
        if not url:
            found.append((variable, "missing"))
            continue
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "https":
            found.append((variable, f"{url} is not https (credentials would travel in clear)"))
        elif _is_loopback(parts.hostname or ""):
            found.append((variable, f"{url} points at loopback (a sandbox?), not the vendor"))
        elif port in sandbox_ports:
            found.append((variable, f"{url} uses a sandbox port ({port})"))
    return found


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _secret_bytes(secret: str) -> int | None:
    encoded = secret.removeprefix("whsec_")
    try:
        return len(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return None


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def _values(settings: Settings) -> dict[str, object]:
    """Variable name -> plain value, for the sections that hold credentials and endpoints."""
    values: dict[str, object] = {}
    for section in ("kafka", "postgres", "redis", "salesforce", "whmcs", "freebit"):
        model = getattr(settings, section)
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
            values[_var(section, name)] = value
    return values
