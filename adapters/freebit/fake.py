"""``FakeFreebit``: an in-memory FreebitPort with the same semantics and errors as ``HttpFreebit``.

Registrations stay ``pending`` until ``activation_delay_s`` has passed on ``clock`` (inject a
manual clock in tests to make time instant). Records every call in ``calls``; raises
``fail_next_with`` once when set. Kept honest by the contract suite in ``tests/contracts``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.freebit.port import DUPLICATE_ACCOUNT, UPSTREAM, EsimKind, FreebitAccount, MnpReservation
from events.errors import FleetError, RejectedByUpstream, UpstreamUnavailable


@dataclass
class FakeFreebit:
    activation_delay_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    accounts: dict[str, FreebitAccount] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next_with: FleetError | None = None
    _active_at: dict[str, float] = field(default_factory=dict)

    async def register_physical_sim(
        self, account: str, *, serial_number: str, plan_code: str, mnp: MnpReservation | None = None
    ) -> None:
        self._record(
            "register_physical_sim", account=account, serial_number=serial_number, plan_code=plan_code, mnp=mnp
        )
        self._register(FreebitAccount(account, "pending", "physical", plan_code, serial_number, ""))

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
        self._record(
            "register_esim",
            account=account,
            eid=eid,
            plan_code=plan_code,
            kind=kind,
            aladin_operated=aladin_operated,
            mnp=mnp,
        )
        if aladin_operated and kind != "new":
            raise RejectedByUpstream(
                "Freebit mvno/esim/addAcnt: unsupported pattern (400-356)", upstream=UPSTREAM, code="400-356"
            )
        if kind == "reissue":  # a new eSIM profile for an existing account: pending again until done
            self.accounts[account] = replace(self._existing(account, "mvno/esim/addAcnt"), eid=eid, state="pending")
            self._active_at[account] = self.clock() + self.activation_delay_s
            return
        self._register(FreebitAccount(account, "pending", "esim", plan_code, "", eid))

    async def add_voice_options(
        self, account: str, *, voice_mail: bool, call_waiting: bool, user_confirmed: bool = True
    ) -> None:
        self._record(
            "add_voice_options",
            account=account,
            voice_mail=voice_mail,
            call_waiting=call_waiting,
            user_confirmed=user_confirmed,
        )
        if not user_confirmed:
            raise RejectedByUpstream(
                "Freebit talkoption: userConfirmed must be 10 (400-250)", upstream=UPSTREAM, code="400-250"
            )
        current = self._unlocked(account, "mvno/talkoption/addOrder")
        self.accounts[account] = replace(current, voice_mail=voice_mail, call_waiting=call_waiting)

    async def account_detail(self, account: str) -> FreebitAccount | None:
        self._record("account_detail", account=account)
        return self._refreshed(account)

    async def cancel_account(self, account: str) -> None:
        self._record("cancel_account", account=account)
        current = self._existing(account, "master/cnclAcnt")
        if current.state != "cancelled":
            self.accounts[account] = replace(self._unlocked(account, "master/cnclAcnt"), state="cancelled")

    # --- helpers -------------------------------------------------------------------------
    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if self.fail_next_with is not None:
            error, self.fail_next_with = self.fail_next_with, None
            raise error

    def _register(self, new: FreebitAccount) -> None:
        existing = self.accounts.get(new.account)
        if existing is not None and existing.state != "cancelled":
            raise RejectedByUpstream(
                f"Freebit: account {new.account} already registered", upstream=UPSTREAM, code=DUPLICATE_ACCOUNT
            )
        self.accounts[new.account] = new
        self._active_at[new.account] = self.clock() + self.activation_delay_s

    def _refreshed(self, account: str) -> FreebitAccount | None:
        current = self.accounts.get(account)
        if current is not None and current.state == "pending" and self.clock() >= self._active_at[account]:
            current = self.accounts[account] = replace(current, state="active")
        return current

    def _unlocked(self, account: str, path: str) -> FreebitAccount:
        """Like Freebit, an account is locked while its registration job runs: retry later."""
        current = self._existing(account, path)
        if current.state == "pending":
            raise UpstreamUnavailable(
                f"Freebit {path}: account {account} is being processed (409-240)", upstream=UPSTREAM, code="409-240"
            )
        return current

    def _existing(self, account: str, path: str) -> FreebitAccount:
        current = self._refreshed(account)
        if current is None:
            raise RejectedByUpstream(
                f"Freebit {path}: account {account} not found (404-220)", upstream=UPSTREAM, code="404-220"
            )
        return current
