"""WHMCS (billing system of record), External API as documented at developers.whmcs.com (v8.x).

Same shape as every adapter, split because it outgrew one module: ``port`` (the Protocol in our
terms and its value types), ``http`` (``HttpWhmcs`` over httpx), ``fake`` (``FakeWhmcs``).
Must not read configuration, build clients, or import ``workers``/``sandbox``.
"""

from adapters.whmcs.fake import FakeWhmcs
from adapters.whmcs.http import HttpWhmcs
from adapters.whmcs.port import (
    AddedOrder,
    OrderLine,
    PayMethod,
    WhmcsClient,
    WhmcsOrder,
    WhmcsPort,
    WhmcsService,
)

__all__ = [
    "AddedOrder",
    "FakeWhmcs",
    "HttpWhmcs",
    "OrderLine",
    "PayMethod",
    "WhmcsClient",
    "WhmcsOrder",
    "WhmcsPort",
    "WhmcsService",
]
