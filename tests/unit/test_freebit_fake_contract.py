"""The FreebitPort contract against ``FakeFreebit``, plus the fake's own test hooks."""

from __future__ import annotations

import pytest

from adapters.freebit import FakeFreebit
from events.errors import UpstreamUnavailable
from tests.contracts.freebit import DELAY, FreebitContract
from tests.contracts.support import ManualClock


class TestFakeFreebit(FreebitContract):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def freebit(self, clock: ManualClock) -> FakeFreebit:
        return FakeFreebit(activation_delay_s=DELAY, clock=clock)


async def test_fake_records_calls_and_fails_once_when_told() -> None:
    fake = FakeFreebit()
    fake.fail_next_with = UpstreamUnavailable("injected", upstream="freebit")
    with pytest.raises(UpstreamUnavailable):
        await fake.register_physical_sim("08011112222", serial_number="AX1", plan_code="P")
    assert fake.accounts == {}
    await fake.register_physical_sim("08011112222", serial_number="AX1", plan_code="P")
    assert [name for name, _ in fake.calls] == ["register_physical_sim", "register_physical_sim"]
