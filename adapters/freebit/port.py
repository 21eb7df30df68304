"""The Freebit port in our terms: register a SIM account, add voice options, read it, cancel it.

Registration (PA02-01 physical, PA05-41 eSIM) and voice options (PA05-05) are asynchronous at
Freebit: the call only *accepts* the job, and ``account_detail`` (PA03-02) reports ``pending``
until it completes. Must not know HTTP, authKeys or result codes; those belong to ``HttpFreebit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

UPSTREAM = "freebit"
DUPLICATE_ACCOUNT = "DUPLICATE_ACCOUNT"

AccountState = Literal["pending", "active", "cancelled"]
EsimKind = Literal["new", "reissue", "mnp"]


@dataclass(frozen=True)
class FreebitAccount:
    """An MVNO account. ``account`` is the SIM's phone number (WHMCS "SIM Number"),
    ``serial_number`` the SIM serial / ICCID (WHMCS "Serial Number"), ``eid`` set for eSIMs."""

    account: str
    state: AccountState
    sim_kind: Literal["physical", "esim"]
    plan_code: str
    serial_number: str
    eid: str
    voice_mail: bool = False
    call_waiting: bool = False


@dataclass(frozen=True)
class MnpReservation:
    """The MNP block of a registration that ports a number in: the losing carrier's reservation
    number (10 digits) and its last valid day. The account registered is the ported number."""

    reservation_number: str
    expiry: date


class FreebitPort(Protocol):
    """Every method may raise ``UpstreamUnavailable``/``UpstreamTimeout``/``RateLimited`` or a
    retryable ``UpstreamUnavailable`` for Freebit's busy/locked codes, ``AuthenticationFailed``
    when a fresh authOem is refused, and ``InvalidPayload`` (code MALFORMED_RESPONSE)."""

    async def register_physical_sim(
        self, account: str, *, serial_number: str, plan_code: str, mnp: MnpReservation | None = None
    ) -> None:
        """PA02-01: submit registration of a physical SIM; the account is ``pending`` afterwards.
        ``mnp``: the number ``account`` is ported in (an expired or malformed reservation →
        ``RejectedByUpstream``, a 400 at Freebit).
        Not idempotent at Freebit: a second call for a registered account raises
        ``RejectedByUpstream(code=DUPLICATE_ACCOUNT)``, which callers treat as "already done"."""
        ...

    async def register_esim(
        self,
        account: str,
        *,
        eid: str,
        plan_code: str,
        kind: EsimKind = "new",
        aladin_operated: bool = True,
        mnp: MnpReservation | None = None,
    ) -> None:
        """PA05-41: submit eSIM activation (``kind`` new/reissue/mnp; ``mnp`` needs the reservation,
        ``addKind`` M). Duplicate → as above.
        ``aladin_operated`` with any kind but ``new`` → ``RejectedByUpstream(code="400-356")``."""
        ...

    async def add_voice_options(
        self, account: str, *, voice_mail: bool, call_waiting: bool, user_confirmed: bool = True
    ) -> None:
        """PA05-05: submit voice options (asynchronous, cannot be cancelled while processing).
        Idempotent in effect (options are a set). Unknown account or missing confirmation →
        ``RejectedByUpstream``."""
        ...

    async def account_detail(self, account: str) -> FreebitAccount | None:
        """PA03-02: the account as Freebit sees it now, or None if it was never registered.
        Idempotent; the way to confirm an asynchronous registration."""
        ...

    async def cancel_account(self, account: str) -> None:
        """PA02-04: cancel the account. Idempotent: an already cancelled account succeeds.
        Unknown account → ``RejectedByUpstream``."""
        ...
