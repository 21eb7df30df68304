"""``HttpFreebit``: the FreebitPort over Freebit's ``/emptool/api/<path>/`` (one form field ``json``).

Receives its ``httpx.AsyncClient`` and plain credentials from the composition root. Holds one
authKey (from ``authOem``) for all calls; when Freebit says the key is invalid or expired it logs
in again **once**, shared by every concurrent caller (single flight), and repeats the call once.
``_raise_for_result`` is the one place that maps result codes onto our error tree.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, TypeVar

import httpx
from pydantic import ValidationError

from adapters.freebit.port import (
    DUPLICATE_ACCOUNT,
    UPSTREAM,
    AccountState,
    EsimKind,
    FreebitAccount,
    MnpReservation,
)
from adapters.http import send
from events.errors import AuthenticationFailed, InvalidPayload, RejectedByUpstream, UpstreamUnavailable
from schemas.freebit_api import (
    TRANSIENT_CODES,
    AccountDetailRecord,
    AccountDetailResponse,
    AuthOemResponse,
    FreebitResponse,
    FreebitResultCode,
)

R = TypeVar("R", bound=FreebitResponse)
_ESIM_ADD_KIND = {"new": "N", "reissue": "R", "mnp": "M"}


class _StaleAuthKey(Exception):
    """Freebit rejected the authKey; never leaves this module."""


def _flag(value: bool) -> str:
    return "10" if value else "20"  # Freebit's yes/no convention ("10" = yes)


class HttpFreebit:
    def __init__(self, client: httpx.AsyncClient, base_url: str, oem_id: str, oem_key: str):
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._oem = {"oemId": oem_id, "oemKey": oem_key}
        self._auth_key: str | None = None
        self._auth_lock = asyncio.Lock()

    # --- port ----------------------------------------------------------------------------
    async def register_physical_sim(
        self, account: str, *, serial_number: str, plan_code: str, mnp: MnpReservation | None = None
    ) -> None:
        body: dict[str, Any] = {
            "createType": "new",
            "account": account,
            "productNumber": serial_number,
            "planCode": plan_code,
        }
        if mnp is not None:
            body["mnp"] = _mnp_block(mnp)
        await self._call("master/addAcnt", body, FreebitResponse)

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
        body: dict[str, Any] = {
            "aladinOperated": _flag(aladin_operated),
            "createType": "new",
            "addKind": _ESIM_ADD_KIND[kind],
            "account": account,
            "eid": eid,
            "planCode": plan_code,
        }
        if mnp is not None:
            body["mnp"] = _mnp_block(mnp)
        await self._call("mvno/esim/addAcnt", body, FreebitResponse)

    async def add_voice_options(
        self, account: str, *, voice_mail: bool, call_waiting: bool, user_confirmed: bool = True
    ) -> None:
        body = {
            "account": account,
            "userConfirmed": _flag(user_confirmed),
            "aladinOperated": "10",
            "voiceMail": _flag(voice_mail),
            "callWaiting": _flag(call_waiting),
        }
        await self._call("mvno/talkoption/addOrder", body, FreebitResponse)

    async def account_detail(self, account: str) -> FreebitAccount | None:
        body = {"version": "2", "displayPass": "20", "requestDatas": [{"kind": "MVNO", "account": account}]}
        parsed = await self._call(
            "mvno/getDetail", body, AccountDetailResponse, accept={FreebitResultCode.ACCOUNT_NOT_FOUND}
        )
        rows = [row for row in parsed.responseDatas if row.account == account] if parsed.ok else []
        return _account(rows[0]) if rows else None

    async def cancel_account(self, account: str) -> None:
        accept = {FreebitResultCode.ACCOUNT_ALREADY_CANCELLED}
        await self._call("master/cnclAcnt", {"account": account}, FreebitResponse, accept=accept)

    # --- authKey, single flight ----------------------------------------------------------
    async def _key(self, stale: str | None = None) -> str:
        """The cached authKey; logs in when there is none or the caller saw ``stale`` refused.

        Concurrent callers queue on the lock; only the first one whose stale key is still the
        cached one logs in, the rest reuse the fresh key it stored (one authOem, not N)."""
        async with self._auth_lock:
            if self._auth_key is None or self._auth_key == stale:
                self._auth_key = await self._login()
            return self._auth_key

    async def _login(self) -> str:
        parsed = await self._post("authOem", self._oem, AuthOemResponse)
        if parsed.resultCode == FreebitResultCode.OK and parsed.authKey:
            return parsed.authKey
        raise AuthenticationFailed(
            f"Freebit authOem refused: {parsed.status.message}", upstream=UPSTREAM, code=parsed.error_code
        )

    # --- plumbing ------------------------------------------------------------------------
    async def _call(
        self, path: str, body: dict[str, Any], model: type[R], accept: set[FreebitResultCode] | None = None
    ) -> R:
        key = await self._key()
        try:
            return await self._authed(path, body, key, model, accept or set())
        except _StaleAuthKey:
            fresh = await self._key(stale=key)
        try:
            return await self._authed(path, body, fresh, model, accept or set())
        except _StaleAuthKey:
            raise AuthenticationFailed(
                f"Freebit {path}: authKey refused right after authOem",
                upstream=UPSTREAM,
                code=FreebitResultCode.AUTH_KEY_INVALID.value,
            ) from None

    async def _authed(
        self, path: str, body: dict[str, Any], key: str, model: type[R], accept: set[FreebitResultCode]
    ) -> R:
        parsed = await self._post(path, {"authKey": key, **body}, model)
        if parsed.resultCode not in accept:
            _raise_for_result(path, parsed)
        return parsed

    async def _post(self, path: str, body: dict[str, Any], model: type[R]) -> R:
        url = f"{self._base_url}/{path}/"
        data = {"json": json.dumps(body, ensure_ascii=False)}
        response = await send(self._client, "POST", url, upstream=UPSTREAM, operation=f"Freebit {path}", data=data)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidPayload(
                f"Freebit {path} returned a malformed body (HTTP {response.status_code}, "
                f"{exc.error_count()} error(s), first at {exc.errors()[0]['loc']})",
                upstream=UPSTREAM,
                code="MALFORMED_RESPONSE",
                status=response.status_code,
            ) from None


def _raise_for_result(path: str, parsed: FreebitResponse) -> None:
    """The one mapping from a Freebit ``resultCode`` to our error tree."""
    code = parsed.resultCode
    if code == FreebitResultCode.OK:
        return
    message = f"Freebit {path}: {parsed.status.message or 'resultCode ' + code} ({parsed.error_code})"
    if code == FreebitResultCode.AUTH_KEY_INVALID:
        raise _StaleAuthKey(message)
    if code == FreebitResultCode.OEM_AUTH_FAILED:
        raise AuthenticationFailed(message, upstream=UPSTREAM, code=parsed.error_code)
    if code == FreebitResultCode.DUPLICATE_ACCOUNT:
        raise RejectedByUpstream(message, upstream=UPSTREAM, code=DUPLICATE_ACCOUNT)
    if code in TRANSIENT_CODES:
        raise UpstreamUnavailable(message, upstream=UPSTREAM, code=parsed.error_code)
    raise RejectedByUpstream(message, upstream=UPSTREAM, code=parsed.error_code)


_STATES: dict[str, AccountState] = {"pending": "pending", "active": "active", "cancelled": "cancelled"}


def _account(row: AccountDetailRecord) -> FreebitAccount:
    # an unknown state (a Freebit addition) reads as pending: callers keep polling rather than act on it
    state = _STATES.get(row.state, "pending")
    sim_kind: Literal["physical", "esim"] = "esim" if row.simKind == "esim" else "physical"
    fields = (row.planCode, row.productNumber, row.eid, row.voiceMail, row.callWaiting)
    return FreebitAccount(row.account, state, sim_kind, *fields)


def _mnp_block(mnp: MnpReservation) -> dict[str, str]:
    """The MNP block of a registration. Freebit's docs show ``mnp{method, reserveNumber (10 digits)}``
    for PA05-20 and an MNP block on PA05-18; the expiry field's name was not visible:
    ``reserveExpireDate`` (YYYYMMDD, Freebit's date format) is our inference (docs/fulfillment.md)."""
    return {"reserveNumber": mnp.reservation_number, "reserveExpireDate": mnp.expiry.strftime("%Y%m%d")}
