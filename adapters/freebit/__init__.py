"""Freebit (MVNE) SIM provisioning over ``https://<host>/emptool/api/...`` (PA02/PA03/PA05 families).

Same shape as every adapter, split into ``port`` (Protocol in our terms), ``http``
(``HttpFreebit``: authKey cache, single-flight re-auth, result-code mapping) and ``fake``
(``FakeFreebit``). Must not read configuration, build clients, or import ``workers``/``sandbox``.
"""

from adapters.freebit.fake import FakeFreebit
from adapters.freebit.http import HttpFreebit
from adapters.freebit.port import (
    DUPLICATE_ACCOUNT,
    AccountState,
    EsimKind,
    FreebitAccount,
    FreebitPort,
    MnpReservation,
)

__all__ = [
    "DUPLICATE_ACCOUNT",
    "AccountState",
    "EsimKind",
    "FakeFreebit",
    "FreebitAccount",
    "FreebitPort",
    "HttpFreebit",
    "MnpReservation",
]
