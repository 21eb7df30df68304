"""Salesforce adapter (REST API v60.0): the port, its httpx implementation, the fake, token sources.

Layout follows the adapter shape (style §3.5) split into a package: ``port.py`` (Protocol and value
types), ``http.py`` (``HttpSalesforce``), ``fake.py`` (``FakeSalesforce``), ``auth.py`` (OAuth token
sources shared with the CDC stream in ``adapters.salesforce_stream``). Must not read configuration
or build clients: the composition root passes them in.
"""

from adapters.salesforce.auth import (
    AccessToken,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    TokenSource,
)
from adapters.salesforce.fake import FakeSalesforce
from adapters.salesforce.http import HttpSalesforce
from adapters.salesforce.port import (
    BULK_READ_LIMIT,
    COLLECTION_LIMIT,
    SIM_ASSIGNED,
    SIM_AVAILABLE,
    SIM_INVENTORY,
    SIM_TYPES,
    OrderWithItems,
    RecordError,
    RecordResult,
    RecordUpdate,
    SalesforcePort,
)

__all__ = [
    "BULK_READ_LIMIT",
    "COLLECTION_LIMIT",
    "SIM_ASSIGNED",
    "SIM_AVAILABLE",
    "SIM_INVENTORY",
    "SIM_TYPES",
    "AccessToken",
    "FakeSalesforce",
    "HttpSalesforce",
    "JwtBearerAuth",
    "OrderWithItems",
    "PasswordAuth",
    "RecordError",
    "RecordResult",
    "RecordUpdate",
    "RefreshTokenAuth",
    "SalesforcePort",
    "TokenSource",
]
