"""The pure parts of the embedded stack: broker properties, the env file, and how our processes are
recognised. No server is started; /proc is read only for this test process itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from devtools import stack
from devtools.stack import envfile
from devtools.stack.kafka import (
    CLUSTER_FILE,
    MULTI_BROKER_HEAP,
    POM,
    cluster_nodes,
    ensure_cluster_id,
    kafka_version,
    new_cluster_id,
    node_ports,
    recorded_cluster_size,
    render_properties,
)
from devtools.stack.process import Signature, StackError, read_pid
from workers.config import StackSettings, load_settings


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


def test_a_single_node_renders_every_property_as_before_clusters_existed() -> None:
    props = _properties(render_properties(port=19092, controller_port=19093, data_dir=Path("/s/kafka/data")))

    assert props == {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:19093",
        "listeners": "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:19092",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": "/s/kafka/data",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
        "auto.create.topics.enable": "true",
    }
    only_node = cluster_nodes(Path("/s"), brokers=1, port=19092, controller_port=19093, heap="1g")
    assert [(k.name, k.node_id, k.home, k.ports) for k in only_node] == [("kafka", 1, Path("/s/kafka"), (19092, 19093))]


def test_three_nodes_share_a_static_voter_set_and_each_has_its_own_ports_and_directory() -> None:
    nodes = cluster_nodes(Path("/s"), brokers=3, port=19092, controller_port=19093, heap="512m")
    rendered = [
        _properties(
            render_properties(
                port=n.port, controller_port=n.controller_port, data_dir=n.data_dir, node_id=n.node_id, voters=n.voters
            )
        )
        for n in nodes
    ]

    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert [p["controller.quorum.voters"] for p in rendered] == [voters] * 3
    assert [p["node.id"] for p in rendered] == ["1", "2", "3"]
    assert [p["listeners"] for p in rendered] == [
        "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095",
        "PLAINTEXT://127.0.0.1:19096,CONTROLLER://127.0.0.1:19097",
    ]
    assert [p["advertised.listeners"] for p in rendered] == [
        f"PLAINTEXT://127.0.0.1:{port}" for port in (19092, 19094, 19096)
    ]
    assert [p["process.roles"] for p in rendered] == ["broker,controller"] * 3
    # node 1 keeps the single-node layout, so a single-node state directory is node 1 as it is
    assert [n.home for n in nodes] == [Path("/s/kafka"), Path("/s/kafka-2"), Path("/s/kafka-3")]
    assert [p["log.dirs"] for p in rendered] == ["/s/kafka/data", "/s/kafka-2/data", "/s/kafka-3/data"]
    assert len({n.pid_file for n in nodes}) == len({n.signature.anchor for n in nodes}) == 3
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]


def test_three_nodes_replicate_internal_and_new_topics_three_times_with_min_isr_two() -> None:
    node = cluster_nodes(Path("/s"), brokers=3, port=1000, controller_port=1001, heap="512m")[1]
    props = _properties(
        render_properties(
            port=node.port, controller_port=node.controller_port, data_dir=Path("/d"), node_id=2, voters=node.voters
        )
    )

    assert {key: props[key] for key in props if key.endswith(("replication.factor", "min.isr", "insync.replicas"))} == {
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
        "share.coordinator.state.topic.replication.factor": "3",
        "share.coordinator.state.topic.min.isr": "2",
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
    }


def test_node_ports_step_by_two_and_must_not_overlap() -> None:
    assert node_ports(19092, 19093, 3) == {1: (19092, 19093), 2: (19094, 19095), 3: (19096, 19097)}
    with pytest.raises(StackError, match="all distinct"):
        node_ports(19092, 19094, 3)  # node 2's broker port would be node 1's controller port
    with pytest.raises(StackError, match="1..5"):
        node_ports(19092, 19093, 6)


def test_a_three_broker_stack_lists_every_node_and_tells_workers_to_replicate(tmp_path: Path) -> None:
    settings = StackSettings(dir=tmp_path, brokers=3, kafka_port=29092, kafka_controller_port=29093)
    built = stack.Stack.from_settings(settings)

    assert built.bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert [s.name for s in stack.status(settings)] == ["kafka-1", "kafka-2", "kafka-3", "redis", "postgres"]
    assert {node.heap for node in built.kafka_nodes} == {MULTI_BROKER_HEAP}
    explicit = StackSettings(dir=tmp_path, brokers=3, kafka_heap="768m")
    assert {node.heap for node in stack.Stack.from_settings(explicit).kafka_nodes} == {"768m"}
    assert stack.Stack.from_settings(StackSettings(dir=tmp_path)).kafka.heap == "1g"

    path = tmp_path / "stack.env"
    envfile.write(path, built.env_values())
    loaded = load_settings(env_file=path)
    assert loaded.kafka.bootstrap == built.bootstrap
    policy = loaded.topic_policy()
    assert (policy.replication_factor, policy.min_insync_replicas) == (3, 2)
    assert (built.topic_policy.replication_factor, built.topic_policy.min_insync_replicas) == (3, 2)


def test_the_node_count_comes_from_the_storage_so_status_and_down_see_every_node(tmp_path: Path) -> None:
    assert recorded_cluster_size(tmp_path) is None
    cluster_id = ensure_cluster_id(tmp_path, 3)
    assert ensure_cluster_id(tmp_path, 3) == cluster_id  # written once: every node formats with it
    assert (tmp_path / CLUSTER_FILE).read_text() == f"cluster.id={cluster_id}\nnodes=3\n"

    assert [s.name for s in stack.status(StackSettings(dir=tmp_path))][:3] == ["kafka-1", "kafka-2", "kafka-3"]
    with pytest.raises(StackError, match="holds a 3-node cluster, not 1"):
        ensure_cluster_id(tmp_path, 1)


def test_a_single_node_state_directory_from_before_clusters_is_node_1_as_it_is(tmp_path: Path) -> None:
    """No cluster file, only the node's own meta.properties: one node, its cluster id taken over."""
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("version=1\ncluster.id=OLDid-0123456789abcdef\n")

    assert recorded_cluster_size(tmp_path) == 1
    assert [s.name for s in stack.status(StackSettings(dir=tmp_path))][0] == "kafka"
    assert stack.Stack.from_settings(StackSettings(dir=tmp_path)).kafka.signature.anchor == str(
        tmp_path / "kafka" / "server.properties"
    )
    assert ensure_cluster_id(tmp_path, 1) == "OLDid-0123456789abcdef"


async def test_up_refuses_an_explicit_broker_count_the_storage_was_not_formatted_for(tmp_path: Path) -> None:
    ensure_cluster_id(tmp_path, 1)
    settings = StackSettings(dir=tmp_path, brokers=3)

    with pytest.raises(StackError, match="holds a 1-node cluster, not 3"):
        await stack.up(settings, env_file=tmp_path / "stack.env")
    with pytest.raises(StackError, match="holds a 1-node cluster, not 3"):
        await stack.restart_node(settings, 1)
    assert not (tmp_path / "stack.env").exists()
    assert not (tmp_path / "kafka").exists()  # nothing was started


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
