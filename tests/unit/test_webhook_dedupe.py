"""Webhook-id marks: one contract, run here against the fake and in integration against Redis.

Contract: the first claim wins; while it is in progress others see IN_PROGRESS; after complete
everyone sees DUPLICATE; release frees the id only for its owner; an abandoned in-progress mark
expires by itself; a done mark expires after its TTL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from adapters.webhook_dedupe import Claim, DedupeStore, FakeDedupeStore
from events.errors import DependencyUnavailable


class DedupeContract:
    """Subclasses provide ``store`` (TTLs: in-progress 0.3 s, done 0.6 s), ``advance(seconds)`` and
    ``other(store)``: a second store over the same marks, as another receiver process has."""

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def other(self, store: DedupeStore) -> DedupeStore:
        raise NotImplementedError

    @pytest.fixture
    def webhook_id(self) -> str:
        return f"msg_test_{uuid.uuid4().hex}"

    async def test_the_first_claim_wins_and_others_see_it_in_progress(
        self, store: DedupeStore, webhook_id: str
    ) -> None:
        assert await store.claim(webhook_id, "a") is Claim.NEW
        assert await store.claim(webhook_id, "b") is Claim.IN_PROGRESS

    async def test_concurrent_claims_have_exactly_one_winner(self, store: DedupeStore, webhook_id: str) -> None:
        results = await asyncio.gather(*(store.claim(webhook_id, f"o{n}") for n in range(20)))
        assert results.count(Claim.NEW) == 1
        assert results.count(Claim.IN_PROGRESS) == 19

    async def test_a_completed_id_is_a_duplicate(self, store: DedupeStore, webhook_id: str) -> None:
        await store.claim(webhook_id, "a")
        store.complete(webhook_id)
        assert await store.claim(webhook_id, "b") is Claim.DUPLICATE
        assert await store.claim(webhook_id, "a") is Claim.DUPLICATE

    async def test_release_by_the_owner_lets_a_retry_claim_again(self, store: DedupeStore, webhook_id: str) -> None:
        await store.claim(webhook_id, "a")
        await store.release(webhook_id, "a")
        assert await store.claim(webhook_id, "b") is Claim.NEW

    async def test_release_by_someone_else_changes_nothing(self, store: DedupeStore, webhook_id: str) -> None:
        await store.claim(webhook_id, "a")
        await store.release(webhook_id, "b")
        assert await store.claim(webhook_id, "c") is Claim.IN_PROGRESS
        store.complete(webhook_id)
        await store.release(webhook_id, "a")  # a done mark is never released
        assert await store.claim(webhook_id, "c") is Claim.DUPLICATE

    async def test_many_concurrent_ids_each_have_their_own_answer(self, store: DedupeStore) -> None:
        """More requests at once than one batched store call carries: every id still gets its own answer."""
        ids = [f"msg_many_{uuid.uuid4().hex}" for _ in range(1_200)]
        assert set(await asyncio.gather(*(store.claim(i, "a") for i in ids))) == {Claim.NEW}
        assert set(await asyncio.gather(*(store.claim(i, "b") for i in ids))) == {Claim.IN_PROGRESS}
        for i in ids[::2]:
            store.complete(i)
        answers = await asyncio.gather(*(store.claim(i, "c") for i in ids))
        assert answers == [Claim.DUPLICATE if n % 2 == 0 else Claim.IN_PROGRESS for n in range(len(ids))]

    async def test_a_copy_arriving_as_the_original_completes_sees_it_done(
        self, store: DedupeStore, webhook_id: str
    ) -> None:
        """``complete`` returns before the done mark is written: a claim asked after it still sees it."""
        await store.claim(webhook_id, "a")
        store.complete(webhook_id)
        copies = await asyncio.gather(store.claim(webhook_id, "b"), store.claim(webhook_id, "c"))
        assert copies == [Claim.DUPLICATE, Claim.DUPLICATE]

    async def test_a_flushed_completion_is_seen_by_another_store(self, store: DedupeStore, webhook_id: str) -> None:
        """What another receiver process sees once ``flush`` (or the linger) has written the mark."""
        await store.claim(webhook_id, "a")
        store.complete(webhook_id)
        await store.flush()
        assert await self.other(store).claim(webhook_id, "b") is Claim.DUPLICATE

    async def test_an_abandoned_claim_expires(self, store: DedupeStore, webhook_id: str) -> None:
        await store.claim(webhook_id, "crashed")
        await self.advance(0.4)
        assert await store.claim(webhook_id, "b") is Claim.NEW

    async def test_the_done_mark_outlives_the_in_progress_ttl_then_expires(
        self, store: DedupeStore, webhook_id: str
    ) -> None:
        await store.claim(webhook_id, "a")
        store.complete(webhook_id)
        await self.advance(0.4)
        assert await store.claim(webhook_id, "b") is Claim.DUPLICATE
        await self.advance(0.4)
        assert await store.claim(webhook_id, "b") is Claim.NEW


class TestFakeDedupeStore(DedupeContract):
    now: float = 1_000.0

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[FakeDedupeStore]:
        yield FakeDedupeStore(inflight_ttl_s=0.3, done_ttl_s=0.6, clock=lambda: self.now)

    async def advance(self, seconds: float) -> None:
        self.now += seconds

    def other(self, store: DedupeStore) -> DedupeStore:
        return store  # one process: the fake's marks are its own


async def test_a_down_fake_raises_dependency_unavailable_and_reports_lost_completions() -> None:
    errors: list[DependencyUnavailable] = []
    store = FakeDedupeStore(down=True, on_error=errors.append)
    for call in (store.claim("x", "a"), store.release("x", "a")):
        with pytest.raises(DependencyUnavailable):
            await call
    store.complete("x")
    assert len(errors) == 1
