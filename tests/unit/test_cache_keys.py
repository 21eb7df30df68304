"""The key contract of docs/cache-keys.md, pinned: one builder per key family, ids checked."""

from __future__ import annotations

import pytest

from workers import cache_keys as ck

USER = "7c0e6f3a-1f49-4b8e-9c1a-000000000001"
ACCOUNT = "0015g00000000001AAA"[:18]


def test_user_keys_live_under_the_users_namespace() -> None:
    assert ck.user_invoices(USER) == f"portal:v1:user:{USER}:invoices"
    assert ck.user_invoice(USER, 42) == f"portal:v1:user:{USER}:invoice:42"
    assert ck.user_subscriptions(USER) == f"portal:v1:user:{USER}:subscriptions"
    assert ck.user_subscription(USER, 7) == f"portal:v1:user:{USER}:subscription:7"
    assert ck.user_paymethods(USER) == f"portal:v1:user:{USER}:paymethods"
    assert ck.user_profile(USER) == f"portal:v1:user:{USER}:profile"


def test_account_keys_and_globals() -> None:
    assert ck.account_orders(ACCOUNT) == f"portal:v1:sf-account:{ACCOUNT}:orders"
    assert ck.account_order(ACCOUNT, "8015g00000000001AA") == f"portal:v1:sf-account:{ACCOUNT}:order:8015g00000000001AA"
    assert ck.eligibility(ACCOUNT) == f"portal:v1:eligibility:{ACCOUNT}"
    assert ck.PAYMENT_GATEWAYS == "portal:v1:payment-gateways"
    assert ck.CATALOG_LISTS == ("catalog:internet:plans", "catalog:sim:plans", "catalog:vpn:plans")


def test_dependency_indexes() -> None:
    assert ck.product_deps("01t5g00000000001AA") == "catalog:deps:product:01t5g00000000001AA"
    assert ck.order_deps("8015g00000000001AA") == "portal:v1:deps:order:8015g00000000001AA"


@pytest.mark.parametrize("bad", ["", "a:b", "*", "user?", "x y", "a" * 65, "{tag}"])
def test_an_id_that_could_name_another_key_is_refused(bad: str) -> None:
    """A ``:`` or glob character in an id would let one user's event name another's key."""
    with pytest.raises(ck.InvalidKeyPart):
        ck.user_profile(bad)


def test_every_builder_is_inside_the_portal_namespaces() -> None:
    keys = [ck.user_profile(USER), ck.account_orders(ACCOUNT), ck.product_deps("01t"), *ck.CATALOG_LISTS]
    assert all(ck.is_portal_key(k) for k in keys)
