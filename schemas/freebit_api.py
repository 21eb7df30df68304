"""Freebit (MVNE) ``/emptool/api/...`` responses as Freebit sends them, plus the result-code table.

Every response carries ``resultCode`` ("100" = success) and ``status{message, statusCode}``.
Models are frozen and ignore unknown fields (``extra="ignore"``): Freebit adds fields and is
inconsistent about casing, and a new field must not break parsing. The non-success codes below
are the table our sandbox speaks; Freebit's full table was not public (docs/sandboxes.md says
which parts are inferred). No business rules here.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class FreebitResultCode(StrEnum):
    """``resultCode`` values; ``status.statusCode`` carries the HTTP-like class (200/400/401/...)."""

    OK = "100"
    OEM_AUTH_FAILED = "201"  # authOem: oemId/oemKey refused
    AUTH_KEY_INVALID = "202"  # authKey unknown or expired: log in again
    BAD_REQUEST = "210"  # a required field is missing or malformed
    ACCOUNT_NOT_FOUND = "220"
    ACCOUNT_ALREADY_CANCELLED = "221"
    DUPLICATE_ACCOUNT = "230"  # the account (phone number) is already registered
    ACCOUNT_LOCKED = "240"  # another job holds the account (cf. PA05-38's ~30 min lock)
    USER_NOT_CONFIRMED = "250"  # PA05-05 without userConfirmed = "10"
    UNSUPPORTED_PATTERN = "356"  # PA05-41: aladinOperated "10" with addKind other than "N" (doc: 400-356)
    SYSTEM_ERROR = "500"
    SERVICE_BUSY = "503"  # maintenance window / overload


#: codes after which repeating the same request later can succeed
TRANSIENT_CODES = frozenset(
    {FreebitResultCode.ACCOUNT_LOCKED, FreebitResultCode.SYSTEM_ERROR, FreebitResultCode.SERVICE_BUSY}
)


class _Vendor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FreebitStatus(_Vendor):
    message: str = ""
    statusCode: str = ""  # vendor casing


class FreebitResponse(_Vendor):
    resultCode: str  # vendor casing
    status: FreebitStatus = FreebitStatus()

    @property
    def ok(self) -> bool:
        return self.resultCode == FreebitResultCode.OK

    @property
    def error_code(self) -> str:
        """The "<statusCode>-<resultCode>" form the Freebit docs cite errors in (e.g. ``400-356``)."""
        return f"{self.status.statusCode}-{self.resultCode}"


class AuthOemResponse(FreebitResponse):
    authKey: str | None = None  # vendor casing


class AccountDetailRecord(_Vendor):
    """One ``responseDatas`` row of PA03-02 (account detail)."""

    kind: str = "MVNO"
    account: str
    state: str  # "pending" until the asynchronous registration completes, then "active"/"cancelled"
    planCode: str = ""  # vendor casing
    simKind: str = ""  # "physical" | "esim"
    productNumber: str = ""  # SIM serial (ICCID / product number)
    eid: str = ""
    voiceMail: bool = False
    callWaiting: bool = False


class AccountDetailResponse(FreebitResponse):
    responseDatas: list[AccountDetailRecord] = []  # vendor casing
