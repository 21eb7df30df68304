"""The WhmcsPort contract against ``FakeWhmcs``, plus the fake's own test hooks (calls, fail_next_with)."""

from __future__ import annotations

import pytest

from adapters.whmcs import FakeWhmcs
from events.errors import UpstreamTimeout
from tests.contracts.whmcs import INTERNET, TANAKA, WhmcsContract, seeded_fake_whmcs


class FakeWorld:
    def __init__(self, fake: FakeWhmcs) -> None:
        self.fake = fake

    async def add_client(self, client_id: int, *, status: str = "Active") -> None:
        self.fake.add_client(client_id, status=status)


class TestFakeWhmcs(WhmcsContract):
    @pytest.fixture
    def whmcs(self) -> FakeWhmcs:
        return seeded_fake_whmcs()

    @pytest.fixture
    def whmcs_world(self, whmcs: FakeWhmcs) -> FakeWorld:
        return FakeWorld(whmcs)


async def test_fake_records_calls_and_fails_once_when_told() -> None:
    fake = seeded_fake_whmcs()
    fake.fail_next_with = UpstreamTimeout("injected", upstream="whmcs")
    with pytest.raises(UpstreamTimeout):
        await fake.add_order(TANAKA, INTERNET, notes="sfOrderId=801A")
    assert fake.orders == {}, "a failed call must not change state"
    await fake.add_order(TANAKA, INTERNET, notes="sfOrderId=801A")
    assert [name for name, _ in fake.calls] == ["add_order", "add_order"]
    assert len(fake.orders) == 1
