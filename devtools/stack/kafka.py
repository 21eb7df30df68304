"""The embedded Kafka: one KRaft node, or a cluster of N (``--brokers N``), on loopback.

Every node is broker and controller in one JVM. Node ``i`` (0-based) of N listens on
``port + 2i`` (clients) and ``controller_port + 2i`` (the quorum), has ``node.id = i + 1`` and its own
directory: ``<state>/kafka`` for node 1 (the single-node layout, unchanged), ``<state>/kafka-<id>``
for the others, each with ``server.properties``, ``data/``, ``logs/`` and ``kafka.pid``. The voters
are static (``controller.quorum.voters`` lists every node). The cluster id and size are written once,
in ``<state>/kafka-cluster.properties``; every node is formatted with that id.

Owns: resolving the broker jars with Maven into a cache shared by every stack of this work tree
(``.fleet/kafka-<version>/lib``), rendering ``server.properties``, formatting the storage once,
and starting ``java -cp '<lib>/*' kafka.Kafka server.properties`` as a detached process whose real
pid goes into ``kafka.pid``; who leads which partition (``partition_leaders``), for chaos tests.
The version lives in ``deploy/kafka/pom.xml`` only.
Must not: touch a JVM whose argv does not name our own properties file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from devtools.stack.process import (
    Signature,
    StackError,
    file_lock,
    forget_stale_pid,
    port_accepts,
    require,
    run,
    running_pid,
    spawn_detached,
    tails,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
#: git-ignored; keyed by version so a bump never mixes jars, and shared by every stack instance
CACHE_ROOT = REPO_ROOT / ".fleet"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"  # still the Scala class in 4.x, in kafka_2.13.jar
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = "lib.complete"
#: the cluster id and node count, written when the first node is formatted; see ``ensure_cluster_id``
CLUSTER_FILE = "kafka-cluster.properties"
MAX_BROKERS = 5
#: each JVM's heap when N > 1 and FLEET_STACK__KAFKA_HEAP is not set. Measured on the 2-core, 24 GiB
#: machine: a 3-node cluster holding the catalog (70 partitions x 3 replicas) sat at 310-370 MB RSS per
#: JVM with 512m (the shared single node at 1g: 560 MB), ~1.1 GB for the three. The single node's 1g is
#: sized for a stack that has served thousands of test partitions (see StackSettings.kafka_heap); the
#: cluster is for failover tests, and memory is not what is short here: the 2 cores are.
MULTI_BROKER_HEAP = "512m"


def kafka_version(pom: Path = POM) -> str:
    found = ET.parse(pom).getroot().findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not found:
        raise StackError(f"{pom} has no <kafka.version> property")
    return found.strip()


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


async def ensure_lib(pom: Path = POM, cache_root: Path = CACHE_ROOT) -> tuple[Path, bool]:
    """The directory of broker jars, and whether Maven had to copy them now (first use only).

    A marker holding the pom's digest is written after a complete copy, so an interrupted copy or
    an edited pom (a new log4j version, say) is redone, and a complete one costs no Maven run at
    all. The copy goes to a scratch directory renamed into place, under a lock, so two stacks
    starting at once never see half a lib directory.
    """
    home = cache_root / f"kafka-{kafka_version(pom)}"
    lib, marker = home / "lib", home / _MARKER
    digest = _pom_digest(pom)
    async with file_lock(home / ".lock"):
        if marker.exists() and marker.read_text() == digest and lib.is_dir():
            return lib, False
        mvn = require("mvn", "apt-get install -y maven")
        scratch = home / "lib.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={scratch}"]
        await run(argv, cwd=home, what="resolving the Kafka jars with Maven")
        shutil.rmtree(lib, ignore_errors=True)
        scratch.rename(lib)
        marker.write_text(digest)
    return lib, True


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL listener beside the PLAINTEXT one, for the clients' TLS and SASL paths (tests, or a
    local setup that mirrors a secured cluster). The PLAINTEXT listener stays: the node talks to
    itself over it, and ``probe`` uses it. SCRAM credentials are written into the metadata log when
    the storage is formatted (``--add-scram``: KRaft has no ZooKeeper to hold them), so they are
    fixed for the life of the state directory; PLAIN users live in the JAAS line of the listener."""

    port: int
    #: PEM: the broker's private key (PKCS#8, unencrypted) followed by its certificate chain
    keystore: Path
    scram_users: Mapping[str, str] = field(default_factory=dict)
    plain_users: Mapping[str, str] = field(default_factory=dict)

    def properties(self) -> list[str]:
        plain = " ".join(f'user_{name}="{_jaas_quote(secret)}"' for name, secret in self.plain_users.items())
        lines = [
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule"
            f" required {plain};",
        ]
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            lines.append(
                f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        lines += ["ssl.keystore.type=PEM", f"ssl.keystore.location={self.keystore}", "ssl.client.auth=none"]
        return lines

    def format_args(self) -> list[str]:
        args = []
        for name, secret in self.scram_users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mechanism}=[name={name},password={secret}]"]
        return args


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min ISR) for internal and new topics on a cluster of ``brokers`` nodes:
    1/1 for one node; 3/2 from three on (an acks=all write survives the loss of any one broker);
    2/1 for two (a copy survives one loss, but the two-voter quorum does not: the controller needs both)."""
    replicas = min(brokers, 3)
    return replicas, 2 if replicas >= 3 else 1


def node_ports(port: int, controller_port: int, brokers: int) -> dict[int, tuple[int, int]]:
    """``node.id -> (port, controller port)`` for a cluster of ``brokers``: node ``i`` (0-based) uses
    ``port + 2i`` and ``controller_port + 2i``; a StackError when they overlap or leave the port range."""
    if not 1 <= brokers <= MAX_BROKERS:
        raise StackError(f"FLEET_STACK__BROKERS must be 1..{MAX_BROKERS}, not {brokers}")
    nodes = {i + 1: (port + 2 * i, controller_port + 2 * i) for i in range(brokers)}
    every = [p for pair in nodes.values() for p in pair]
    if len(set(every)) != len(every) or max(every) > 65535:
        raise StackError(
            f"{brokers} Kafka nodes need ports {port}+2i and {controller_port}+2i (i < {brokers}), all distinct "
            "and at most 65535; pick other FLEET_STACK__KAFKA_PORT / FLEET_STACK__KAFKA_CONTROLLER_PORT"
        )
    return nodes


def render_properties(
    *,
    port: int,
    controller_port: int,
    data_dir: Path,
    secure: SecureListener | None = None,
    node_id: int = 1,
    voters: Mapping[int, int] | None = None,
) -> str:
    """``server.properties`` for one combined node on 127.0.0.1, tuned for tests on one machine.

    ``voters`` maps each node id of the cluster to its controller port; by default this node alone.
    """
    voters = dict(voters) if voters else {node_id: controller_port}
    if voters.get(node_id) != controller_port:
        raise ValueError(f"node {node_id} must be one of the voters {voters} with controller port {controller_port}")
    if secure is not None and len(voters) > 1:
        raise ValueError("the SASL_SSL listener is for a single node only")
    replicas, min_isr = replication(len(voters))
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure.port}"
        advertised += f",SASL_SSL://127.0.0.1:{secure.port}"
        protocols += ",SASL_SSL:SASL_SSL"
    if len(voters) == 1:
        durability = [
            # One broker: internal topics cannot have three replicas, and the defaults would make the
            # first consumer group or transaction wait for replicas that never come.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
        ]
    else:
        durability = [
            # A cluster: what staging and production run (3 replicas, min ISR 2), for every internal
            # topic and for topics created without settings (auto-created ones, a test's own).
            f"offsets.topic.replication.factor={replicas}",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={min_isr}",
        ]
    return "\n".join(
        [
            "# Written by `fleet stack up` on every start (ports may change between runs); do not edit.",
            "process.roles=broker,controller",
            f"node.id={node_id}",
            # A static voter set rather than a dynamic quorum formatted with --standalone: the voters'
            # addresses are read from this file on every start instead of being written into the metadata
            # log at format time, so changing FLEET_STACK__KAFKA_CONTROLLER_PORT needs no reformat.
            "controller.quorum.voters=" + ",".join(f"{nid}@127.0.0.1:{cport}" for nid, cport in sorted(voters.items())),
            f"listeners={listeners}",
            f"advertised.listeners={advertised}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={protocols}",
            f"log.dirs={data_dir}",
            "num.partitions=1",
            *durability,
            # Tests start consumers one at a time; the default 3 s pause before the first rebalance
            # would be added to every test that joins a fresh group.
            "group.initial.rebalance.delay.ms=0",
            # After `kill -9` the restarted node must wait out its old registration's session before it
            # may register again (DUPLICATE_BROKER_REGISTRATION): 9 s by default, 3 s here. Broker and
            # controller share one JVM, so a missed heartbeat means a stalled process, not a network.
            # In a cluster it is also how long a killed leader's partitions wait for a new leader.
            "broker.heartbeat.interval.ms=500",
            "broker.session.timeout.ms=3000",
            # Forgiving on purpose: `fleet topics ensure` creates the catalog and tests create their
            # own topics, but a test or a developer's console producer writing to a topic nobody
            # created gets one instead of a metadata timeout. Code must not rely on it: a real
            # cluster may well have it off.
            "auto.create.topics.enable=true",
            *(secure.properties() if secure is not None else []),
            "",
        ]
    )


def new_cluster_id() -> str:
    """A cluster id as Kafka writes them: 16 random bytes, URL-safe base64 without padding; never
    starting with '-', which the storage tool would read as an option (Kafka's own rule)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def recorded_cluster_size(state_dir: Path) -> int | None:
    """How many nodes the Kafka storage under ``state_dir`` was formatted for, or None when it was never
    formatted. Read-only. A state directory from before clusters existed has no cluster file, only
    ``kafka/data/meta.properties``: a single node."""
    recorded = _read_properties(state_dir / CLUSTER_FILE)
    if "nodes" in recorded:
        return int(recorded["nodes"])
    return 1 if (state_dir / "kafka" / "data" / "meta.properties").exists() else None


def ensure_cluster_id(state_dir: Path, brokers: int) -> str:
    """The cluster id every node of this storage is formatted with: read from the cluster file, else
    taken over from a single node formatted before the file existed, else new; recorded with the node
    count on first use. A StackError when the storage was formatted for another number of nodes: a
    node cannot join or leave a static voter set without losing its metadata."""
    path = state_dir / CLUSTER_FILE
    recorded = _read_properties(path)
    if not recorded:
        legacy = _read_properties(state_dir / "kafka" / "data" / "meta.properties").get("cluster.id")
        recorded = {"cluster.id": legacy or new_cluster_id(), "nodes": "1" if legacy else str(brokers)}
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text("".join(f"{key}={value}\n" for key, value in recorded.items()))
        scratch.replace(path)
    if int(recorded["nodes"]) != brokers:
        raise StackError(size_mismatch(state_dir, int(recorded["nodes"]), brokers))
    return recorded["cluster.id"]


def size_mismatch(state_dir: Path, recorded: int, wanted: int) -> str:
    return (
        f"the Kafka storage in {state_dir} holds a {recorded}-node cluster, not {wanted}: run `fleet stack up "
        f"--brokers {recorded}`, or `fleet stack down --purge` first (deletes the data), or use another "
        "FLEET_STACK__DIR"
    )


def _read_properties(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class Kafka:
    """One broker+controller of a cluster of ``len(voters)`` nodes (by default a single node, as
    ``Kafka(state, port=..., controller_port=..., heap=...)`` always meant): its files live in
    ``<state>/kafka`` for node 1 and ``<state>/kafka-<node_id>`` for the others."""

    stop_signal = signal.SIGTERM  # a controlled shutdown: clean logs, no recovery on next start
    ready_timeout_s = 90.0  # a cold JVM on two cores next to initdb; typically 3-5 s (3 nodes: 10-15 s)

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int,
        controller_port: int,
        heap: str,
        secure: SecureListener | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        peer_ports: Mapping[int, int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.node_id = node_id
        #: node id -> controller port, for every node of the cluster, this one included
        self.voters: dict[int, int] = dict(voters) if voters else {node_id: controller_port}
        self.cluster_size = len(self.voters)
        #: node id -> client port, for every node of the cluster (the readiness probe knocks on each)
        self.peer_ports: dict[int, int] = dict(peer_ports) if peer_ports else {node_id: port}
        self.name = "kafka" if self.cluster_size == 1 else f"kafka-{node_id}"
        self.home = state_dir / ("kafka" if node_id == 1 else f"kafka-{node_id}")
        self.port = port
        self.secure = secure
        self.ports: tuple[int, ...] = (port, controller_port, *((secure.port,) if secure else ()))
        self.controller_port = controller_port
        self.heap = heap
        self.data_dir = self.home / "data"
        self.logs_dir = self.home / "logs"
        self.properties = self.home / "server.properties"
        self.pid_file = self.home / "kafka.pid"
        self.signature = Signature(MAIN_CLASS, str(self.properties))
        self.log_files: tuple[Path, ...] = (self.logs_dir / "stdout.log", self.logs_dir / "server.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running_pid(self) -> int | None:
        return running_pid(self.pid_file, self.signature)

    def kill(self) -> int | None:
        """``kill -9`` this node, for failover tests; the pid it had, or None when it was not running.
        Does not wait: ``process.wait_gone([pid], ...)`` does; the next ``up`` or ``restart_node``
        cleans the stale pid file and starts it again."""
        pid = self.running_pid()
        if pid is None:  # not running, or the pid file names a process that is not ours
            return None
        os.kill(pid, signal.SIGKILL)
        return pid

    async def clean_stale(self) -> list[str]:
        """Only our pid file. The ``.lock`` in the log directory is left alone: it is an OS file lock
        that died with the JVM, and deleting it would defeat the check that stops a second broker
        from opening a log directory still in use."""
        return await forget_stale_pid(self.pid_file, self.name)

    async def start(self) -> list[str]:
        notes = []
        lib, copied = await ensure_lib()
        if copied:
            notes.append(f"jars copied by Maven to {lib}")
        for directory in (self.data_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            render_properties(
                port=self.port,
                controller_port=self.controller_port,
                data_dir=self.data_dir,
                secure=self.secure,
                node_id=self.node_id,
                voters=self.voters,
            )
        )
        if not (self.data_dir / "meta.properties").exists():
            await self._format(lib)
            notes.append("storage formatted")
        self._proc = spawn_detached(self._java(lib, MAIN_CLASS, str(self.properties)), self.log_files[0], self.home)
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return notes

    async def _format(self, lib: Path) -> None:
        cluster_id = ensure_cluster_id(self.state_dir, self.cluster_size)
        tool = [STORAGE_TOOL, "format", "--cluster-id", cluster_id, "--config", str(self.properties)]
        if self.secure is not None:
            tool += self.secure.format_args()
        await run(self._java(lib, *tool), cwd=self.home, what=f"formatting the storage of {self.name}")

    def _java(self, lib: Path, *main: str) -> list[str]:
        return [
            require("java", "apt-get install -y openjdk-17-jre-headless"),
            f"-Xmx{self.heap}",
            "-XX:+ExitOnOutOfMemoryError",  # a dead broker is visible; a thrashing one only hangs tests
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            f"{lib}/*",
            *main,
        ]

    async def probe(self) -> bool:
        """Ready when an admin client lists topics: the broker is unfenced and answers metadata. In a
        cluster, also when the cluster reports all its brokers: a node's listener opens once it is
        unfenced, but its peers may still be starting (or, after ``kill -9``, one may be fenced)."""
        if self._proc is not None and self._proc.poll() is not None:
            logs = tails(self.log_files)
            raise StackError(f"{self.name} exited with code {self._proc.returncode} while starting\n{logs}")
        if not await port_accepts(self.port):  # cheap, and spares aiokafka's connection-refused logs
            return False
        if self.cluster_size == 1:
            return await _lists_topics(self.endpoint)
        # every node listening first: the admin client asks a random node, and one still starting
        # (or killed, until fenced) would only fill the output with aiokafka's connection errors
        for peer in self.peer_ports.values():
            if not await port_accepts(peer):
                return False
        return await cluster_brokers(self.endpoint) == set(self.voters)


def cluster_nodes(state_dir: Path, *, brokers: int, port: int, controller_port: int, heap: str) -> tuple[Kafka, ...]:
    """The ``brokers`` nodes of one cluster (one node: exactly the single-node ``Kafka`` of old)."""
    nodes = node_ports(port, controller_port, brokers)
    voters = {node_id: cport for node_id, (_, cport) in nodes.items()}
    peers = {node_id: bport for node_id, (bport, _) in nodes.items()}
    return tuple(
        Kafka(
            state_dir,
            port=bport,
            controller_port=cport,
            heap=heap,
            node_id=node_id,
            voters=voters,
            peer_ports=peers,
        )
        for node_id, (bport, cport) in nodes.items()
    )


async def _lists_topics(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        await asyncio.wait_for(admin.list_topics(), 10)
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return True


async def cluster_brokers(bootstrap: str) -> set[int] | None:
    """The node ids of the brokers the cluster reports as alive (unfenced), asking ``bootstrap``
    first (its metadata answer is the bootstrap itself); None when it does not answer."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        described = await asyncio.wait_for(admin.describe_cluster(), 10)
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        await admin.close()
    return {int(broker["node_id"]) for broker in described["brokers"]}


_DESCRIBE_ATTEMPTS = 10  # a random pick among 3 nodes with one dead misses 10 times in 1/59049


@dataclass(frozen=True)
class PartitionState:
    leader: int  # node id; -1 while the partition has none (every in-sync replica is down)
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def describe_partitions(bootstrap: str, topic: str) -> dict[int, PartitionState]:
    """Partition -> its leader, replicas and in-sync replicas, from the metadata of one broker of
    ``bootstrap`` (comma-separated; a live one is enough). The answer can lag the controller by a
    metadata propagation (milliseconds here): poll it when waiting for a change.

    Usable while a node is down: the admin client asks a random broker of the metadata, which lists
    a killed node until the controller fences it (``broker.session.timeout.ms``), so a request that
    meets a dead node is sent again (another random pick). StackError when no broker answers."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    failure: BaseException | None = None
    described = None
    try:
        await asyncio.wait_for(admin.start(), 15)
        for _ in range(_DESCRIBE_ATTEMPTS):
            try:
                (described,) = await asyncio.wait_for(admin.describe_topics([topic]), 15)
                break
            except (KafkaError, OSError, TimeoutError) as exc:
                failure = exc
                await asyncio.sleep(0.1)
    except (KafkaError, OSError, TimeoutError) as exc:
        failure = exc
    finally:
        await admin.close()
    if described is None:
        raise StackError(f"no broker of {bootstrap} described {topic}: {failure!r}")
    if described["error_code"]:
        raise StackError(f"cannot describe {topic}: error code {described['error_code']}")
    return {
        int(p["partition"]): PartitionState(int(p["leader"]), tuple(p["replicas"]), tuple(p["isr"]))
        for p in described["partitions"]
    }


async def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> the node id of its leader (-1: none), e.g. to pick the node a chaos test kills:
    ``stack.kafka_node(leaders[0]).kill()``."""
    return {partition: state.leader for partition, state in (await describe_partitions(bootstrap, topic)).items()}
