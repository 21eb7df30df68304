"""The embedded Kafka: one KRaft node (broker and controller in one JVM) on loopback.

Owns: resolving the broker jars with Maven into a cache shared by every stack of this work tree
(``.fleet/kafka-<version>/lib``), rendering ``server.properties``, formatting the storage once,
and starting ``java -cp '<lib>/*' kafka.Kafka server.properties`` as a detached process whose real
pid goes into ``kafka.pid``. The version lives in ``deploy/kafka/pom.xml`` only.
Must not: touch a JVM whose argv does not name our own properties file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
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

from workers.stack.process import (
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


def render_properties(*, port: int, controller_port: int, data_dir: Path, secure: SecureListener | None = None) -> str:
    """``server.properties`` for one combined node on 127.0.0.1, tuned for tests on one machine."""
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure.port}"
        advertised += f",SASL_SSL://127.0.0.1:{secure.port}"
        protocols += ",SASL_SSL:SASL_SSL"
    return "\n".join(
        [
            "# Written by `fleet stack up` on every start (ports may change between runs); do not edit.",
            "process.roles=broker,controller",
            "node.id=1",
            # A static voter set rather than a dynamic quorum formatted with --standalone: the voter's
            # address is read from this file on every start instead of being written into the metadata
            # log at format time, so changing FLEET_STACK__KAFKA_CONTROLLER_PORT needs no reformat.
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners={listeners}",
            f"advertised.listeners={advertised}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={protocols}",
            f"log.dirs={data_dir}",
            "num.partitions=1",
            # One broker: internal topics cannot have three replicas, and the defaults would make the
            # first consumer group or transaction wait for replicas that never come.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Tests start consumers one at a time; the default 3 s pause before the first rebalance
            # would be added to every test that joins a fresh group.
            "group.initial.rebalance.delay.ms=0",
            # After `kill -9` the restarted node must wait out its old registration's session before it
            # may register again (DUPLICATE_BROKER_REGISTRATION): 9 s by default, 3 s here. Broker and
            # controller share one JVM, so a missed heartbeat means a stalled process, not a network.
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


class Kafka:
    """One broker+controller whose files all live in ``<state>/kafka``."""

    name = "kafka"
    stop_signal = signal.SIGTERM  # a controlled shutdown: clean logs, no recovery on next start
    ready_timeout_s = 90.0  # a cold JVM on two cores next to initdb; typically 3-5 s

    def __init__(
        self, state_dir: Path, *, port: int, controller_port: int, heap: str, secure: SecureListener | None = None
    ) -> None:
        self.home = state_dir / "kafka"
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
                port=self.port, controller_port=self.controller_port, data_dir=self.data_dir, secure=self.secure
            )
        )
        if not (self.data_dir / "meta.properties").exists():
            await self._format(lib)
            notes.append("storage formatted")
        self._proc = spawn_detached(self._java(lib, MAIN_CLASS, str(self.properties)), self.log_files[0], self.home)
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return notes

    async def _format(self, lib: Path) -> None:
        tool = [STORAGE_TOOL, "format", "--cluster-id", new_cluster_id(), "--config", str(self.properties)]
        if self.secure is not None:
            tool += self.secure.format_args()
        await run(self._java(lib, *tool), cwd=self.home, what="formatting the Kafka storage")

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
        """Ready when an admin client lists topics: the broker is unfenced and answers metadata."""
        if self._proc is not None and self._proc.poll() is not None:
            logs = tails(self.log_files)
            raise StackError(f"kafka exited with code {self._proc.returncode} while starting\n{logs}")
        if not await port_accepts(self.port):  # cheap, and spares aiokafka's connection-refused logs
            return False
        return await _lists_topics(self.endpoint)


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
