"""How the benchmarks reach Kafka: the fleet's own ``KafkaConnection``, built from its settings.

A bench picks the address (``--bootstrap``, or the stack's ``FLEET_KAFKA__BOOTSTRAP``); TLS and SASL
come from the ``FLEET_KAFKA__*`` settings (variables or secret files) exactly as a worker's do, so
``make bench-*`` runs against a secured cluster when they are set. Every client a bench opens takes
``**connection.options()`` and is started with ``adapters.kafka.start_client``. A child process
started with a trimmed environment (the runtime bench's) is given ``connection_env()`` and the
address on its command line, and rebuilds the same connection with ``bench_connection``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from adapters.kafka import KafkaConnection
from workers.config import SECRETS_DIR_VAR, KafkaSettings, Settings, env_var_name

#: the ``KafkaSettings`` fields a connection is made of (``KafkaConnection`` names its fields alike)
CONNECTION_FIELDS = tuple(field.name for field in dataclasses.fields(KafkaConnection))
#: the variables behind its security (the address travels on the command line), and where secret files are
CONNECTION_VARS = frozenset(
    [*(env_var_name(("kafka", name)) for name in CONNECTION_FIELDS if name != "bootstrap"), SECRETS_DIR_VAR]
)


def bench_connection(settings: Settings, bootstrap: str | None = None) -> KafkaConnection:
    """``settings``' Kafka connection, at ``bootstrap`` when one is given (TLS and SASL stay the settings')."""
    kafka = settings.kafka.model_copy(update={"bootstrap": bootstrap}) if bootstrap else settings.kafka
    return kafka.connection()


def connection_settings(kafka: KafkaSettings) -> KafkaSettings:
    """Default ``KafkaSettings`` except the address and security, taken from ``kafka``: for a bench
    that builds its own Settings for an in-process worker (the CDC subscriber)."""
    return KafkaSettings(**{name: getattr(kafka, name) for name in CONNECTION_FIELDS})


def connection_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (this process's by default) that a child started without the
    ``FLEET_*`` environment needs to rebuild the same connection: the ``FLEET_KAFKA__*`` security
    settings and ``FLEET_SECRETS_DIR``. (Names are matched as pydantic-settings does: ignoring case.)"""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name.upper() in CONNECTION_VARS}
