"""``FreebitSandbox``: Freebit's ``POST /emptool/api/<path>/`` with one form field ``json``.

Speaks authOem (authKeys expire after ``auth_ttl_s``), PA02-01 ``master/addAcnt``, PA05-41
``mvno/esim/addAcnt`` (both with an optional ``mnp`` block, ``{reserveNumber, reserveExpireDate}``:
our inference of its fields; a malformed or expired reservation is a 400), PA05-05
``mvno/talkoption/addOrder``, PA03-02 (assumed path ``mvno/getDetail``) and PA02-04 (assumed path
``master/cnclAcnt``). Registrations are accepted ``pending`` and turn ``active`` after
``activation_delay_s``. The fault endpoint key is the path (``master/addAcnt``). Result codes:
``schemas.freebit_api.FreebitResultCode``. Never imported by production code.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.common import SandboxBase
from schemas.freebit_api import FreebitResultCode as Code

PREFIX = "/emptool/api/"
STATUS_CODE = {  # resultCode → status.statusCode (the HTTP-like class the docs cite, e.g. 400-356)
    Code.OK: "200",
    Code.OEM_AUTH_FAILED: "401",
    Code.AUTH_KEY_INVALID: "401",
    Code.BAD_REQUEST: "400",
    Code.ACCOUNT_NOT_FOUND: "404",
    Code.ACCOUNT_ALREADY_CANCELLED: "409",
    Code.DUPLICATE_ACCOUNT: "409",
    Code.ACCOUNT_LOCKED: "409",
    Code.USER_NOT_CONFIRMED: "400",
    Code.UNSUPPORTED_PATTERN: "400",
    Code.SYSTEM_ERROR: "500",
    Code.SERVICE_BUSY: "503",
}
_ACCOUNT = re.compile(r"\d{10,14}")
_EID = re.compile(r"\d{32}")
_RESERVE = re.compile(r"\d{10}")
JST = ZoneInfo("Asia/Tokyo")


class FreebitError(Exception):
    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def result(code: Code = Code.OK, message: str = "OK", **extra: Any) -> dict[str, Any]:
    return {"resultCode": code.value, "status": {"message": message, "statusCode": STATUS_CODE[code]}, **extra}


@dataclass
class Account:
    account: str
    sim_kind: str
    plan_code: str
    product_number: str
    eid: str
    active_at: float
    cancelled: bool = False
    voice_mail: bool = False
    call_waiting: bool = False
    #: the MNP reservation number the account was ported in with ("" when it was a new number)
    mnp_reserve_number: str = ""

    def state(self, now: float) -> str:
        return "cancelled" if self.cancelled else ("active" if now >= self.active_at else "pending")


@dataclass
class FreebitSandbox(SandboxBase):
    name: str = "freebit"
    oem_id: str = "PASI"
    oem_key: str = "sandbox-oem-key"
    auth_ttl_s: float = 600.0
    activation_delay_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    auth_keys: dict[str, float] = field(default_factory=dict)  # authKey → issued at (clock)
    accounts: dict[str, Account] = field(default_factory=dict)

    # --- SandboxBase hooks -------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post(PREFIX + "{path:.+}", self._api)
        app.router.add_post("/_sandbox/expire-auth", self._expire_auth)

    async def endpoint_of(self, request: web.Request) -> str:
        return request.path.removeprefix(PREFIX).strip("/") if request.path.startswith(PREFIX) else request.path

    def error_response(self, status: int, endpoint: str) -> web.Response:
        text = f"<html><body><h1>{status}</h1>sandbox fault on {endpoint}</body></html>"
        return web.Response(status=status, text=text, content_type="text/html")

    def state(self) -> dict[str, Any]:
        now = self.clock()
        accounts = [asdict(a) | {"state": a.state(now)} for a in self.accounts.values()]
        return {
            "accounts": accounts,
            "auth_keys": len(self.auth_keys),
            "activation_delay_s": self.activation_delay_s,
            "auth_ttl_s": self.auth_ttl_s,
        }

    async def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        for record in body.get("accounts", []):
            self._register(
                record["account"],
                record.get("simKind", "physical"),
                record.get("planCode", ""),
                record.get("productNumber", ""),
                record.get("eid", ""),
                delay=0.0,
            )
        return {"accounts": [r["account"] for r in body.get("accounts", [])]}

    def reset(self) -> None:
        super().reset()
        self.auth_keys.clear()
        self.accounts.clear()

    # --- dispatch ----------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        path = request.match_info["path"].strip("/")
        try:
            body = await self._body(request)
            if path != "authOem":
                self._check_key(body.get("authKey"))
            handler = self._handlers().get(path)
            if handler is None:
                raise FreebitError(Code.BAD_REQUEST, f"unknown API {path}")
            return web.json_response(handler(body))
        except FreebitError as exc:
            return web.json_response(result(exc.code, exc.message))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = (await request.post()).get("json")
        try:
            body = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise FreebitError(Code.BAD_REQUEST, "form field json must hold a JSON object")
        return body

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "authOem": self._auth_oem,
            "master/addAcnt": self._add_account,
            "mvno/esim/addAcnt": self._add_esim,
            "mvno/talkoption/addOrder": self._talk_option,
            "mvno/getDetail": self._detail,
            "master/cnclAcnt": self._cancel,
        }

    # --- auth --------------------------------------------------------------------------------
    def _auth_oem(self, body: dict[str, Any]) -> dict[str, Any]:
        if (body.get("oemId"), body.get("oemKey")) != (self.oem_id, self.oem_key):
            raise FreebitError(Code.OEM_AUTH_FAILED, "OEM authentication failed")
        key = secrets.token_hex(16)
        self.auth_keys[key] = self.clock()
        return result(authKey=key)

    def _check_key(self, key: Any) -> None:
        key = key if isinstance(key, str) else ""
        issued = self.auth_keys.get(key)
        if issued is None or self.clock() - issued >= self.auth_ttl_s:
            self.auth_keys.pop(key, None)
            raise FreebitError(Code.AUTH_KEY_INVALID, "authKey is invalid or expired")

    async def _expire_auth(self, _request: web.Request) -> web.Response:
        """Control: forget every authKey, as if the TTL had passed (token-expiry tests)."""
        count = len(self.auth_keys)
        self.auth_keys.clear()
        return web.json_response({"expired": count})

    # --- PA02-01 / PA05-41 / PA05-05 / PA03-02 / PA02-04 --------------------------------------------
    def _add_account(self, body: dict[str, Any]) -> dict[str, Any]:
        account = _account(body)
        if body.get("createType", "new") not in ("new", "add"):
            raise FreebitError(Code.BAD_REQUEST, "createType must be new or add")
        product_number = _required(body, "productNumber")
        mnp = self._mnp(body)
        self._register(account, "physical", body.get("planCode", ""), product_number, "")
        self.accounts[account].mnp_reserve_number = mnp
        return result(account=account)

    def _add_esim(self, body: dict[str, Any]) -> dict[str, Any]:
        account, add_kind = _account(body), body.get("addKind")
        if add_kind not in ("N", "R", "M"):
            raise FreebitError(Code.BAD_REQUEST, "addKind must be N, R or M")
        if body.get("aladinOperated", "20") == "10" and add_kind != "N":
            raise FreebitError(Code.UNSUPPORTED_PATTERN, "unsupported pattern: aladinOperated=10 requires addKind=N")
        eid = _required(body, "eid")
        if not _EID.fullmatch(eid):
            raise FreebitError(Code.BAD_REQUEST, "eid must be 32 digits")
        if add_kind == "R":
            return self._reissue(account, eid)
        mnp = self._mnp(body)
        if (add_kind == "M") != bool(mnp):
            raise FreebitError(Code.BAD_REQUEST, "addKind M needs the mnp block, and the mnp block needs addKind M")
        self._register(account, "esim", body.get("planCode", ""), "", eid)
        self.accounts[account].mnp_reserve_number = mnp
        return result(account=account)

    def _mnp(self, body: dict[str, Any]) -> str:
        """The MNP block's reservation number ("" without one). Like Freebit, a malformed or expired
        reservation is a 400 (our inference of the block: ``reserveNumber``, 10 digits, as PA05-20;
        ``reserveExpireDate`` YYYYMMDD, the last valid day in Japan)."""
        mnp = body.get("mnp")
        if mnp is None:
            return ""
        if not isinstance(mnp, dict) or not _RESERVE.fullmatch(str(mnp.get("reserveNumber", ""))):
            raise FreebitError(Code.BAD_REQUEST, "mnp.reserveNumber must be 10 digits")
        try:
            expiry = date.fromisoformat(_iso_day(str(mnp.get("reserveExpireDate", ""))))
        except ValueError:
            raise FreebitError(Code.BAD_REQUEST, "mnp.reserveExpireDate must be YYYYMMDD") from None
        if expiry < datetime.now(JST).date():
            raise FreebitError(Code.BAD_REQUEST, f"MNP reservation {mnp['reserveNumber']} expired on {expiry}")
        return str(mnp["reserveNumber"])

    def _reissue(self, account: str, eid: str) -> dict[str, Any]:
        current = self._existing(account)
        current.eid, current.active_at = eid, self.clock() + self.activation_delay_s
        return result(account=account)

    def _talk_option(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("userConfirmed") != "10":
            raise FreebitError(Code.USER_NOT_CONFIRMED, "userConfirmed must be 10")
        current = self._unlocked(_account(body))
        current.voice_mail = body.get("voiceMail") == "10"
        current.call_waiting = body.get("callWaiting") == "10"
        return result(account=current.account)

    def _detail(self, body: dict[str, Any]) -> dict[str, Any]:
        requested = body.get("requestDatas")
        if not isinstance(requested, list) or not requested or not isinstance(requested[0], dict):
            raise FreebitError(Code.BAD_REQUEST, "requestDatas must list one {kind, account}")
        current = self._existing(_account(requested[0]))  # like Freebit, only the first item is honoured
        row = {
            "kind": requested[0].get("kind", "MVNO"),
            "account": current.account,
            "state": current.state(self.clock()),
            "planCode": current.plan_code,
            "simKind": current.sim_kind,
            "productNumber": current.product_number,
            "eid": current.eid,
            "voiceMail": current.voice_mail,
            "callWaiting": current.call_waiting,
        }
        return result(responseDatas=[row])

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        current = self._existing(_account(body))
        if current.cancelled:
            raise FreebitError(Code.ACCOUNT_ALREADY_CANCELLED, "account already cancelled")
        self._unlocked(current.account).cancelled = True
        return result(account=current.account)

    # --- helpers -----------------------------------------------------------------------------
    def _register(
        self, account: str, kind: str, plan: str, product_number: str, eid: str, delay: float | None = None
    ) -> None:
        existing = self.accounts.get(account)
        if existing is not None and not existing.cancelled:
            raise FreebitError(Code.DUPLICATE_ACCOUNT, f"account {account} is already registered")
        active_at = self.clock() + (self.activation_delay_s if delay is None else delay)
        self.accounts[account] = Account(account, kind, plan, product_number, eid, active_at)

    def _existing(self, account: str) -> Account:
        if account not in self.accounts:
            raise FreebitError(Code.ACCOUNT_NOT_FOUND, f"account {account} not found")
        return self.accounts[account]

    def _unlocked(self, account: str) -> Account:
        """The registration job holds the account until it completes (cf. PA05-38's lock)."""
        current = self._existing(account)
        if current.state(self.clock()) == "pending":
            raise FreebitError(Code.ACCOUNT_LOCKED, f"account {account} is being processed")
        return current


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise FreebitError(Code.BAD_REQUEST, f"{name} is required")
    return value


def _account(body: dict[str, Any]) -> str:
    account = _required(body, "account")
    if not _ACCOUNT.fullmatch(account):
        raise FreebitError(Code.BAD_REQUEST, "account must be 10-14 digits")
    return account


def _iso_day(yyyymmdd: str) -> str:
    """``20260315`` → ``2026-03-15`` (Freebit writes days as YYYYMMDD); anything else stays invalid."""
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}" if len(yyyymmdd) == 8 and yyyymmdd.isdigit() else "x"
