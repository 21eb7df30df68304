"""One place builds every Kafka client's options; bad TLS files and refused connections name the setting."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed  # type: ignore[import-untyped]

from adapters.kafka import KafkaConnection, KafkaSecurityError, as_connection
from adapters.kafka.connection import _classify
from tests.secure_kafka import make_pki
from workers.config import KafkaSettings


def test_a_bare_address_is_plaintext() -> None:
    assert as_connection("127.0.0.1:19092").options() == {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_options_carry_the_mechanism_credentials_and_a_verifying_context(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    settings = KafkaSettings(
        bootstrap="b1:9096,b2:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="fleet",
        sasl_password="pw",  # type: ignore[arg-type]
        ssl_cafile=pki.ca,
    )
    options = settings.connection().options()
    assert options["bootstrap_servers"] == "b1:9096,b2:9096"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-256",
        "fleet",
        "pw",
    )
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert "pw" not in repr(settings.connection())


def test_hostname_checks_can_be_turned_off_but_verification_stays(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = KafkaConnection("b:9093", "SSL", ssl_cafile=pki.ca, ssl_check_hostname=False).ssl_context()
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


def test_a_ca_file_that_is_not_a_certificate_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(KafkaSecurityError) as info:
        KafkaConnection("b:9093", "SSL", ssl_cafile=bad).options()
    assert info.value.setting == "ssl_cafile"


def test_a_missing_client_key_names_the_setting(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(KafkaSecurityError) as info:
        KafkaConnection("b:9093", "SSL", ssl_certfile=pki.keystore, ssl_keyfile=tmp_path / "no.key").options()
    assert info.value.setting == "ssl_keyfile"


@pytest.mark.parametrize(
    ("error", "setting"),
    [
        (SaslAuthenticationFailed("Authentication failed: Invalid username or password"), "sasl_password"),
        (ssl.SSLCertVerificationError(1, "hostname mismatch"), "ssl_check_hostname"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "ssl_cafile"),
        (ConnectionResetError(), "security_protocol"),
        (KafkaConnectionError("Connection at b:9093 closed"), "security_protocol"),
        (TimeoutError(), "security_protocol"),
    ],
)
def test_refusals_are_classified_by_the_setting_that_causes_them(error: BaseException, setting: str) -> None:
    connection = KafkaConnection("b:9093", "SASL_SSL", "PLAIN", "fleet", "pw")
    if isinstance(error, ssl.SSLCertVerificationError):
        error.verify_code, error.verify_message = (62 if "hostname" in str(error) else 19), str(error)
    found = _classify(connection, error)
    assert found is not None and found.setting == setting


def test_a_broker_that_is_down_is_not_a_settings_problem() -> None:
    assert _classify(KafkaConnection("b:9093"), ConnectionRefusedError(111, "refused")) is None
