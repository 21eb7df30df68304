"""The FreebitPort contract, written once; run against ``FakeFreebit`` (unit) and ``HttpFreebit`` +
the Freebit sandbox over real HTTP (integration).

A subclass provides ``freebit`` (the port under test, with an activation delay of ``DELAY``
seconds measured on ``clock``) and ``clock`` (a ``ManualClock`` shared with the implementation,
so "after the delay" costs no wall time). Accounts are unique per test.
"""

from __future__ import annotations

import pytest

from adapters.freebit import DUPLICATE_ACCOUNT, FreebitPort
from events.errors import RejectedByUpstream, UpstreamUnavailable
from tests.contracts.support import ManualClock, unique_digits

DELAY = 2.0
EID = "89049032000001000000000000000001"


def account() -> str:
    return "080" + unique_digits(8)


class FreebitContract:
    async def test_registration_is_pending_until_the_delay_has_passed(
        self, freebit: FreebitPort, clock: ManualClock
    ) -> None:
        number = account()
        await freebit.register_physical_sim(number, serial_number="AX1234567890123", plan_code="PASI_5G")
        pending = await freebit.account_detail(number)
        assert pending is not None
        assert (pending.state, pending.sim_kind, pending.serial_number) == ("pending", "physical", "AX1234567890123")
        await clock.advance(DELAY)
        active = await freebit.account_detail(number)
        assert active is not None and active.state == "active"

    async def test_registering_twice_is_a_distinguishable_duplicate(self, freebit: FreebitPort) -> None:
        number = account()
        await freebit.register_physical_sim(number, serial_number="AX1234567890123", plan_code="PASI_5G")
        with pytest.raises(RejectedByUpstream) as caught:
            await freebit.register_esim(number, eid=EID, plan_code="PASI_5G")
        assert caught.value.code == DUPLICATE_ACCOUNT

    async def test_esim_registration_carries_the_eid(self, freebit: FreebitPort, clock: ManualClock) -> None:
        number = account()
        await freebit.register_esim(number, eid=EID, plan_code="PASI_20G")
        await clock.advance(DELAY)
        detail = await freebit.account_detail(number)
        assert detail is not None
        assert (detail.state, detail.sim_kind, detail.eid) == ("active", "esim", EID)

    async def test_aladin_operated_esim_with_other_than_new_is_400_356(self, freebit: FreebitPort) -> None:
        with pytest.raises(RejectedByUpstream) as caught:
            await freebit.register_esim(account(), eid=EID, plan_code="PASI_5G", kind="reissue", aladin_operated=True)
        assert caught.value.code == "400-356"

    async def test_unknown_account_detail_is_none(self, freebit: FreebitPort) -> None:
        assert await freebit.account_detail(account()) is None

    async def test_voice_options_wait_for_activation_then_apply(self, freebit: FreebitPort, clock: ManualClock) -> None:
        number = account()
        await freebit.register_physical_sim(number, serial_number="AX1234567890123", plan_code="PASI_5G")
        with pytest.raises(UpstreamUnavailable):  # the account is locked while registration runs: retry
            await freebit.add_voice_options(number, voice_mail=True, call_waiting=False)
        await clock.advance(DELAY)
        await freebit.add_voice_options(number, voice_mail=True, call_waiting=False)
        detail = await freebit.account_detail(number)
        assert detail is not None and (detail.voice_mail, detail.call_waiting) == (True, False)

    async def test_voice_options_need_the_users_confirmation(self, freebit: FreebitPort, clock: ManualClock) -> None:
        number = account()
        await freebit.register_physical_sim(number, serial_number="AX1234567890123", plan_code="PASI_5G")
        await clock.advance(DELAY)
        with pytest.raises(RejectedByUpstream) as caught:
            await freebit.add_voice_options(number, voice_mail=True, call_waiting=True, user_confirmed=False)
        assert caught.value.code == "400-250"

    async def test_cancel_is_idempotent_and_frees_the_account(self, freebit: FreebitPort, clock: ManualClock) -> None:
        number = account()
        await freebit.register_physical_sim(number, serial_number="AX1234567890123", plan_code="PASI_5G")
        await clock.advance(DELAY)
        await freebit.cancel_account(number)
        await freebit.cancel_account(number)
        detail = await freebit.account_detail(number)
        assert detail is not None and detail.state == "cancelled"
        await freebit.register_physical_sim(number, serial_number="AX9999999999999", plan_code="PASI_5G")
        again = await freebit.account_detail(number)
        assert again is not None and (again.state, again.serial_number) == ("pending", "AX9999999999999")

    async def test_cancelling_an_unknown_account_is_rejected(self, freebit: FreebitPort) -> None:
        with pytest.raises(RejectedByUpstream) as caught:
            await freebit.cancel_account(account())
        assert caught.value.code == "404-220"
