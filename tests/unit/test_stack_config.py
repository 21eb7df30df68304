"""The pure parts of the embedded stack: broker properties, the env file, and how our processes are
recognised. No server is started; /proc is read only for this test process itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from workers import stack
from workers.config import StackSettings, load_settings
from workers.stack import envfile
from workers.stack.kafka import POM, kafka_version, new_cluster_id, render_properties
from workers.stack.process import Signature, read_pid


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_broker_properties_describe_one_combined_node_on_loopback() -> None:
    props = _properties(render_properties(port=19092, controller_port=19093, data_dir=Path("/s/kafka/data")))

    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == "/s/kafka/data"


def test_broker_properties_are_tuned_for_a_single_node_under_test() -> None:
    props = _properties(render_properties(port=1, controller_port=2, data_dir=Path("/d")))

    assert {key: props[key] for key in props if key.endswith(("replication.factor", "min.isr"))} == {
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
    }
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "1"
    assert props["auto.create.topics.enable"] == "true"


def test_cluster_ids_look_like_kafkas_and_never_start_with_a_dash() -> None:
    ids = {new_cluster_id() for _ in range(500)}

    assert len(ids) == 500
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)


def test_the_kafka_version_comes_from_the_pom() -> None:
    assert re.fullmatch(r"4\.\d+\.\d+", kafka_version())
    assert f"<kafka.version>{kafka_version()}</kafka.version>" in POM.read_text()


def test_the_env_file_round_trips_and_names_the_settings_variables(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    values = envfile.env_values(
        kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:2/0", database_url="postgresql://p@127.0.0.1:3/f"
    )

    envfile.write(path, values)

    assert envfile.read(path) == values
    assert set(values) == {
        "KAFKA_BOOTSTRAP",
        "REDIS_URL",
        "DATABASE_URL",
        "FLEET_KAFKA__BOOTSTRAP",
        "FLEET_REDIS__URL",
        "FLEET_POSTGRES__DSN",
    }


def test_settings_read_the_endpoints_from_the_env_file(tmp_path: Path) -> None:
    """The file `up` writes is what `load_settings` reads when no variable overrides it."""
    path = tmp_path / "stack.env"
    settings = StackSettings(dir=tmp_path, kafka_port=29092, redis_port=26379, postgres_port=25432)
    envfile.write(path, stack.Stack.from_settings(settings).env_values())

    loaded = load_settings(env_file=path)

    assert loaded.kafka.bootstrap == "127.0.0.1:29092"
    assert loaded.redis.url.get_secret_value() == "redis://127.0.0.1:26379/0"
    assert loaded.postgres.dsn.get_secret_value() == "postgresql://postgres@127.0.0.1:25432/fleet"


def test_the_env_file_parser_accepts_export_and_comments_and_rejects_garbage() -> None:
    assert envfile.parse("# c\n\nexport A=1\nB=x=y\n") == {"A": "1", "B": "x=y"}
    with pytest.raises(ValueError, match="not a KEY=value line"):
        envfile.parse("oops\n")


def test_a_signature_needs_the_program_and_the_exact_anchor() -> None:
    sig = Signature("redis-server", "/s/redis")

    assert sig.matches(["/usr/bin/redis-server", "--dir", "/s/redis"])
    assert not sig.matches(["/usr/bin/redis-server", "--dir", "/s/redis2"])  # another stack's directory
    assert not sig.matches(["/usr/bin/redis-server", "--dir", "/s"])
    assert not sig.matches(["/bin/sleep", "/s/redis"])


def test_state_paths_are_absolute_because_they_identify_our_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/tmp")
    built = stack.Stack.from_settings(StackSettings(dir=Path(".fleet/stack")))

    assert built.state_dir == Path("/tmp/.fleet/stack")
    assert built.kafka.signature.anchor == "/tmp/.fleet/stack/kafka/server.properties"
    assert built.postgres.signature.anchor == "/tmp/.fleet/stack/postgres/data"


def test_a_pid_file_naming_a_foreign_process_means_stopped(tmp_path: Path) -> None:
    """This test's own pid is alive but not ours to manage: status must not report it as Kafka."""
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "kafka.pid").write_text(f"{os.getpid()}\n")

    kafka = stack.status(StackSettings(dir=tmp_path))[0]

    assert (kafka.name, kafka.running, kafka.note) == ("kafka", False, "stale pid file")


def test_read_pid_takes_the_first_line_as_postgres_writes_it(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("4242\n/data\n1700000000\n15432\n")

    assert read_pid(tmp_path / "postmaster.pid") == 4242
    assert read_pid(tmp_path / "missing.pid") is None
