"""A private Kafka broker with a SASL_SSL listener, and the certificates it needs, made by the test.

    async with secure_broker(tmp) as broker:   # broker.connection(...) for the fleet's clients

The certificates come from ``cryptography`` (a CA, the broker's certificate for 127.0.0.1 and
localhost signed by it, and a second CA nobody trusts); SCRAM users are written at storage format
and PLAIN users in the listener's JAAS line (``devtools.stack.kafka.SecureListener``). The shared
stack's broker is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.kafka import KafkaConnection
from devtools.stack.kafka import Kafka, SecureListener
from devtools.stack.process import stop as stop_process

USER = "fleet-app"
PASSWORD = "s3cret-for-tests-only"
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker's certificate
    rogue_ca: Path  # a CA that signed nothing the broker presents
    keystore: Path  # the broker's key + certificate chain (PEM)


def make_pki(directory: Path, hosts: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("fleet test CA")
    _, rogue_cert = _ca("somebody else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka-broker")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pki = Pki(directory / "ca.pem", directory / "rogue-ca.pem", directory / "broker.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.rogue_ca.write_bytes(rogue_cert.public_bytes(pem))
    pki.keystore.write_bytes(key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return pki


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SecureBroker:
    kafka: Kafka
    pki: Pki

    @property
    def plaintext(self) -> str:
        return self.kafka.endpoint

    @property
    def secure(self) -> str:
        assert self.kafka.secure is not None
        return f"127.0.0.1:{self.kafka.secure.port}"

    def connection(self, **overrides: object) -> KafkaConnection:
        """The fleet's client settings for the SASL_SSL listener (SCRAM-SHA-512 unless overridden)."""
        values: dict[str, object] = {
            "bootstrap": self.secure,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": PASSWORD,
            "ssl_cafile": self.pki.ca,
        }
        values.update(overrides)
        return KafkaConnection(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def secure_broker() -> AsyncIterator[SecureBroker]:
    state = Path(tempfile.mkdtemp(prefix="fleet-secure-kafka-"))
    pki = make_pki(state / "pki")
    listener = SecureListener(free_port(), pki.keystore, scram_users={USER: PASSWORD}, plain_users={USER: PASSWORD})
    kafka = Kafka(state, port=free_port(), controller_port=free_port(), heap="384m", secure=listener)
    try:
        await kafka.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await kafka.probe():
            assert time.monotonic() < deadline, "the private secure broker did not start"
            await asyncio.sleep(0.2)
        yield SecureBroker(kafka, pki)
    finally:
        pid = kafka.running_pid()
        if pid is not None:
            await stop_process(pid, kafka.signature, signal.SIGTERM, 30.0)
        await kafka.clean_stale()
        shutil.rmtree(state, ignore_errors=True)
