"""The production profile fails closed: a staging/production process refuses sandbox defaults, missing
secrets, loopback or sandbox vendor URLs and contradictory Kafka security settings, one line per
variable; a complete configuration given as secret files starts every worker."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from sandbox.freebit import FreebitSandbox
from sandbox.salesforce.oauth import TokenIssuer
from sandbox.whmcs.app import DEFAULT_WEBHOOK_SECRET, WhmcsSandbox
from workers.config import load_settings, sandbox_defaults
from workers.profile import problems, warnings
from workers.routes import worker_needs

REAL_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def write_secrets(directory: Path, values: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n")


@pytest.fixture
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A complete production configuration: plain settings in the environment, secrets as files."""
    key = tmp_path / "sf-jwt.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot checked here\n-----END PRIVATE KEY-----\n")
    ca = tmp_path / "kafka-ca.pem"
    ca.write_text("CA\n")
    environment = {
        "FLEET_ENV": "production",
        "FLEET_KAFKA__BOOTSTRAP": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
        "FLEET_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "FLEET_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "FLEET_KAFKA__SASL_USERNAME": "fleet",
        "FLEET_KAFKA__SSL_CAFILE": str(ca),
        "FLEET_SALESFORCE__LOGIN_URL": "https://login.salesforce.com",
        "FLEET_SALESFORCE__INSTANCE_URL": "https://example.my.salesforce.com",
        "FLEET_SALESFORCE__CLIENT_ID": "3MVG9-real-consumer-key",
        "FLEET_SALESFORCE__USERNAME": "integration@example.co.jp",
        "FLEET_SALESFORCE__PRIVATE_KEY_PATH": str(key),
        "FLEET_WHMCS__API_URL": "https://billing.example.co.jp/includes/api.php",
        "FLEET_WHMCS__IDENTIFIER": "fleet-prod",
        "FLEET_FREEBIT__BASE_URL": "https://i.mvno.net/emptool/api",
    }
    secrets = {
        "FLEET_KAFKA__SASL_PASSWORD": "kafka-pw-9f2c",
        "FLEET_POSTGRES__DSN": "postgresql://fleet:pw@db.internal:5432/fleet",
        "FLEET_REDIS__URL": "rediss://:pw@cache.internal:6380/0",
        "FLEET_WHMCS__SECRET": "whmcs-api-secret-7d1",
        "FLEET_WHMCS__WEBHOOK_SECRETS": REAL_WEBHOOK_SECRET,
        "FLEET_FREEBIT__OEM_KEY": "oem-key-41aa",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    write_secrets(tmp_path / "secrets", secrets)
    monkeypatch.setenv("FLEET_SECRETS_DIR", str(tmp_path / "secrets"))
    return secrets


def lines(worker: str | None = None) -> list[str]:
    settings = load_settings(env_file=None)
    return [p.line() for p in problems(settings, None if worker is None else [worker])]


def test_a_complete_configuration_given_as_secret_files_starts_every_worker(production: dict[str, str]) -> None:
    settings = load_settings(env_file=None)
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-pw-9f2c"  # read from the file
    assert [s.get_secret_value() for s in settings.whmcs.webhook_secrets] == [REAL_WEBHOOK_SECRET]
    assert problems(settings) == []
    assert warnings(settings) == []
    assert settings.topic_policy().replication_factor == 3
    assert settings.topic_policy().min_insync_replicas == 2


def test_the_environment_wins_over_a_secret_file(production: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_FREEBIT__OEM_KEY", "from-the-environment")
    assert load_settings(env_file=None).freebit.oem_key.get_secret_value() == "from-the-environment"


def test_local_defaults_are_the_sandboxes_and_pass() -> None:
    settings = load_settings(env_file=None)
    assert settings.whmcs.secret.get_secret_value() == "sandbox-whmcs-secret"
    assert problems(settings) == []


@pytest.mark.parametrize("worker", sorted(worker_needs()))
def test_production_without_any_setting_names_every_variable_the_worker_needs(
    worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sandbox defaults are dropped in production: each worker lists exactly what it needs, nothing of the rest."""
    monkeypatch.setenv("FLEET_ENV", "production")
    found = lines(worker)
    variables = {line.split(":")[0] for line in found}
    expected_by_need = {
        "kafka": {"FLEET_KAFKA__BOOTSTRAP"},
        "postgres": {"FLEET_POSTGRES__DSN"},
        "redis": {"FLEET_REDIS__URL"},
        "salesforce": {
            "FLEET_SALESFORCE__LOGIN_URL",
            "FLEET_SALESFORCE__INSTANCE_URL",
            "FLEET_SALESFORCE__CLIENT_ID",
            "FLEET_SALESFORCE__USERNAME",
            "FLEET_SALESFORCE__PRIVATE_KEY_PATH",
        },
        "whmcs-api": {"FLEET_WHMCS__API_URL", "FLEET_WHMCS__IDENTIFIER", "FLEET_WHMCS__SECRET"},
        "freebit": {"FLEET_FREEBIT__BASE_URL", "FLEET_FREEBIT__OEM_KEY"},
        "webhook-secrets": {"FLEET_WHMCS__WEBHOOK_SECRETS"},
    }
    expected = set().union(*(expected_by_need[need] for need in worker_needs()[worker]))
    assert variables == expected
    assert all(line.count("\n") == 0 for line in found)


def test_the_receiver_refuses_the_public_sandbox_webhook_secret(
    production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_WHMCS__WEBHOOK_SECRETS", DEFAULT_WEBHOOK_SECRET)
    assert lines("whmcs-webhooks") == [
        "FLEET_WHMCS__WEBHOOK_SECRETS: is a sandbox's public default; set the real value (needed by whmcs-webhooks)"
    ]


def test_the_receiver_refuses_to_run_without_a_webhook_secret(tmp_path: Path, production: dict[str, str]) -> None:
    (tmp_path / "secrets" / "FLEET_WHMCS__WEBHOOK_SECRETS").unlink()
    assert lines("whmcs-webhooks") == [
        "FLEET_WHMCS__WEBHOOK_SECRETS: missing (without a secret every webhook would be refused) "
        "(needed by whmcs-webhooks)"
    ]


def test_a_weak_webhook_secret_is_refused(production: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_WHMCS__WEBHOOK_SECRETS", "whsec_" + base64.b64encode(b"short").decode())
    assert lines("whmcs-webhooks") == [
        "FLEET_WHMCS__WEBHOOK_SECRETS: secret 1 has 5 bytes; at least 24 are needed (needed by whmcs-webhooks)"
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLEET_WHMCS__IDENTIFIER", "fleet-api"),
        ("FLEET_WHMCS__SECRET", "sandbox-whmcs-secret"),
        ("FLEET_FREEBIT__OEM_KEY", "sandbox-oem-key"),
        ("FLEET_SALESFORCE__CLIENT_ID", "fleet-connected-app"),
        ("FLEET_SALESFORCE__CLIENT_SECRET", "sandbox-client-secret"),
        ("FLEET_SALESFORCE__PASSWORD", "sandbox-password"),
        ("FLEET_SALESFORCE__REFRESH_TOKEN", "sandbox-refresh-token"),
    ],
)
def test_each_sandbox_credential_is_refused_wherever_it_appears(
    variable: str, value: str, production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even for a worker that does not use it: a sandbox value in production was set on purpose."""
    monkeypatch.setenv(variable, value)
    assert f"{variable}: is a sandbox's public default; set the real value" in lines("cache-invalidator")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://billing.example.co.jp/includes/api.php", "is not https"),
        ("https://localhost/includes/api.php", "points at loopback"),
        ("https://[::1]/includes/api.php", "points at loopback"),
        ("https://billing.example.co.jp:18082/includes/api.php", "uses a sandbox port (18082)"),
    ],
)
def test_vendor_urls_on_loopback_a_sandbox_port_or_plain_http_are_refused(
    url: str, reason: str, production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_WHMCS__API_URL", url)
    (found,) = lines("fulfillment")
    assert found.startswith(f"FLEET_WHMCS__API_URL: {url} {reason}")


def test_a_missing_salesforce_key_file_is_refused(
    tmp_path: Path, production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SALESFORCE__PRIVATE_KEY_PATH", str(tmp_path / "nowhere.key"))
    (found,) = lines("sf-cdc")
    assert found.startswith("FLEET_SALESFORCE__PRIVATE_KEY_PATH:") and "not a readable file" in found


def test_staging_is_held_to_the_same_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENV", "staging")
    assert "FLEET_REDIS__URL: missing (needed by cache-invalidator)" in lines("cache-invalidator")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            {"FLEET_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "FLEET_KAFKA__SASL_USERNAME": "fleet"},
            "FLEET_KAFKA__SASL_PASSWORD: missing (required by SASL_SSL)",
        ),
        (
            {"FLEET_KAFKA__SASL_USERNAME": "fleet", "FLEET_KAFKA__SASL_PASSWORD": "pw"},
            "FLEET_KAFKA__SECURITY_PROTOCOL: PLAINTEXT ignores the SASL credentials that are set",
        ),
        (
            {"FLEET_KAFKA__SECURITY_PROTOCOL": "SSL", "FLEET_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem"},
            "FLEET_KAFKA__SSL_CAFILE: /nonexistent/ca.pem is not a readable file",
        ),
        (
            {"FLEET_KAFKA__SSL_CAFILE": "/etc/hostname"},
            "FLEET_KAFKA__SSL_CAFILE: set, but PLAINTEXT does not use TLS",
        ),
    ],
)
def test_contradicting_kafka_security_settings_are_refused_in_every_environment(
    environment: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert expected in lines()


def test_plaintext_kafka_in_production_is_a_warning_not_a_refusal(
    production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.delenv("FLEET_KAFKA__SASL_USERNAME")
    monkeypatch.delenv("FLEET_KAFKA__SSL_CAFILE")
    (Path(os.environ["FLEET_SECRETS_DIR"]) / "FLEET_KAFKA__SASL_PASSWORD").unlink()
    settings = load_settings(env_file=None)
    assert problems(settings) == []
    assert warnings(settings) == [
        "FLEET_KAFKA__SECURITY_PROTOCOL is PLAINTEXT: Kafka traffic is neither encrypted nor authenticated"
    ]


def test_the_stack_env_file_is_ignored_in_production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer machine's .fleet/stack.env must not hand a production process the local stack."""
    env_file = tmp_path / "stack.env"
    env_file.write_text("FLEET_KAFKA__BOOTSTRAP=127.0.0.1:19092\n")
    assert load_settings(env_file=env_file).kafka.bootstrap == "127.0.0.1:19092"
    monkeypatch.setenv("FLEET_ENV", "production")
    assert load_settings(env_file=env_file).kafka.bootstrap == ""


def test_the_fleet_refuses_exactly_the_credentials_the_sandboxes_accept() -> None:
    """The two lists are kept apart (production code never imports the sandboxes): pin them together."""
    refused = sandbox_defaults()
    whmcs, freebit = WhmcsSandbox(), FreebitSandbox()
    issuer = TokenIssuer(public_url=lambda: None)
    assert refused["FLEET_WHMCS__IDENTIFIER"] == whmcs.identifier
    assert refused["FLEET_WHMCS__SECRET"] == whmcs.secret
    assert refused["FLEET_WHMCS__WEBHOOK_SECRETS"] == [DEFAULT_WEBHOOK_SECRET]
    assert refused["FLEET_FREEBIT__OEM_KEY"] == freebit.oem_key
    assert issuer.clients == {refused["FLEET_SALESFORCE__CLIENT_ID"]: refused["FLEET_SALESFORCE__CLIENT_SECRET"]}
    assert refused["FLEET_SALESFORCE__USERNAME"] in issuer.users


def test_webhook_secrets_accept_a_list_in_one_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_WHMCS__WEBHOOK_SECRETS", "whsec_bmV3,whsec_b2xk")
    assert [s.get_secret_value() for s in load_settings(env_file=None).whmcs.webhook_secrets] == [
        "whsec_bmV3",
        "whsec_b2xk",
    ]
    monkeypatch.setenv("FLEET_WHMCS__WEBHOOK_SECRETS", '["whsec_bmV3"]')
    assert len(load_settings(env_file=None).whmcs.webhook_secrets) == 1


def test_the_pubsub_transport_needs_a_real_tls_endpoint(
    production: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SALESFORCE__CDC_TRANSPORT", "pubsub")
    (found,) = lines("sf-cdc")
    assert found.startswith("FLEET_SALESFORCE__PUBSUB_ENDPOINT: missing")
    monkeypatch.setenv("FLEET_SALESFORCE__PUBSUB_ENDPOINT", "127.0.0.1:7443")
    monkeypatch.setenv("FLEET_SALESFORCE__PUBSUB_TLS", "false")
    found_lines = lines("sf-cdc")
    assert any(line.startswith("FLEET_SALESFORCE__PUBSUB_TLS: false") for line in found_lines)
    assert any("points at loopback" in line for line in found_lines)
    monkeypatch.setenv("FLEET_SALESFORCE__PUBSUB_ENDPOINT", "api.pubsub.salesforce.com:7443")
    monkeypatch.delenv("FLEET_SALESFORCE__PUBSUB_TLS")
    assert lines("sf-cdc") == []
    monkeypatch.setenv("FLEET_SALESFORCE__CDC_TRANSPORT", "cometd")
    monkeypatch.delenv("FLEET_SALESFORCE__PUBSUB_ENDPOINT")
    assert lines("sf-cdc") == []  # CometD needs no Pub/Sub endpoint
