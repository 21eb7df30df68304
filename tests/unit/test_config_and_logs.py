"""Settings fail at start-up naming the variable; secrets never reach log output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from workers.config import ConfigError, Settings, load_settings
from workers.logs import configure_logging


def test_defaults_load_without_environment() -> None:
    settings = load_settings(env_file=None)
    assert settings.kafka.bootstrap == "127.0.0.1:19092"


def test_nested_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_KAFKA__BOOTSTRAP", "127.0.0.1:9999")
    monkeypatch.setenv("FLEET_RUNTIME__IN_PLACE_ATTEMPTS", "5")
    settings = load_settings(env_file=None)
    assert settings.kafka.bootstrap == "127.0.0.1:9999"
    assert settings.runtime.in_place_attempts == 5


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_RUNTIME__IN_PLACE_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="FLEET_RUNTIME__IN_PLACE_ATTEMPTS") as info:
        load_settings(env_file=None)
    assert "\n" not in str(info.value)


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_SANDBOX__WHMCS_PORT", "99999999")
    with pytest.raises(ConfigError, match="FLEET_SANDBOX__WHMCS_PORT"):
        load_settings(env_file=None)
    monkeypatch.setenv("FLEET_SANDBOX__WHMCS_PORT", "18082")
    monkeypatch.setenv("FLEET_WHMCS__SECRET", "")  # allowed: empty secret
    monkeypatch.setenv("FLEET_LOG__LEVEL", "CHATTY")
    with pytest.raises(ConfigError, match="FLEET_LOG__LEVEL"):
        load_settings(env_file=None)


def test_env_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text("FLEET_KAFKA__BOOTSTRAP=127.0.0.1:1111\nFLEET_REDIS__URL=redis://127.0.0.1:2222/0\n")
    monkeypatch.setenv("FLEET_REDIS__URL", "redis://127.0.0.1:3333/0")
    settings = load_settings(env_file=env_file)
    assert settings.kafka.bootstrap == "127.0.0.1:1111"
    assert settings.redis.url.get_secret_value() == "redis://127.0.0.1:3333/0"


def test_secrets_are_collected_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_FREEBIT__OEM_KEY", "oem-key-s3cr3t")
    assert "oem-key-s3cr3t" in Settings().secrets()


def render(secrets: list[str], **fields: object) -> str:
    out = io.StringIO()
    configure_logging("INFO", "json", secrets, stream=out)
    structlog.get_logger().info("calling_upstream", **fields)
    return out.getvalue()


def test_a_secret_passed_in_a_log_call_is_not_printed() -> None:
    secret = "whmcs-secret-value-123"
    line = render(
        [secret],
        secret=secret,
        authKey="freebit-auth-key-999",
        detail=f"POST api.php identifier=x&secret={secret}",
        nested={"oemKey": "oem-1234", "ok": "visible"},
    )
    assert secret not in line
    assert "freebit-auth-key-999" not in line
    assert "oem-1234" not in line
    record = json.loads(line)
    assert record["secret"] == "***" and record["authKey"] == "***"
    assert record["detail"] == "POST api.php identifier=x&secret=***"
    assert record["nested"] == {"oemKey": "***", "ok": "visible"}


def test_context_bound_per_message_appears_in_output() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", [], stream=out)
    with structlog.contextvars.bound_contextvars(event_id="e-1", topic="sf.order.v1", partition=2, offset=7):
        structlog.get_logger().info("handled")
    record = json.loads(out.getvalue())
    assert (record["event_id"], record["topic"], record["partition"], record["offset"]) == (
        "e-1",
        "sf.order.v1",
        2,
        7,
    )


def test_unparseable_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_SALESFORCE__CHANNELS", "not-a-json-list")
    with pytest.raises(ConfigError, match="FLEET_SALESFORCE"):
        load_settings(env_file=None)
