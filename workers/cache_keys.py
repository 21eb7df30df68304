"""The portal's Redis cache keys: the one place in the fleet that spells them (contract: docs/cache-keys.md).

Owns the key strings and the dependency-index names the portal writes when it caches, as pure
functions. Must not talk to Redis or Postgres, nor decide which event busts which key (the
cache-invalidator handlers do, with these builders).

Namespaces: ``portal:v1:`` for everything the fleet and the portal agreed on; the catalog keeps the
names the portal already uses (``catalog:internet:plans``...), so the invalidator works against the
portal as deployed today. Bump ``v1`` (and both sides) when a cached value's shape changes, so an old
reader never parses a new value.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "portal:v1"

# --- global -----------------------------------------------------------------------------------
#: WHMCS payment gateways (the portal's 1 h TTL is its only freshness: no WHMCS hook reports gateway edits)
PAYMENT_GATEWAYS: Final = f"{PREFIX}:payment-gateways"
#: the portal's catalog lists, by their real names (CDC-driven, 12 h safety TTL)
CATALOG_INTERNET_PLANS: Final = "catalog:internet:plans"
CATALOG_SIM_PLANS: Final = "catalog:sim:plans"
CATALOG_VPN_PLANS: Final = "catalog:vpn:plans"
CATALOG_LISTS: Final = (CATALOG_INTERNET_PLANS, CATALOG_SIM_PLANS, CATALOG_VPN_PLANS)

#: ids become key segments: a ``:`` or a glob character would let one id name another's key
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class InvalidKeyPart(ValueError):
    """An id that cannot be a key segment (the event carrying it is a bad payload)."""


def _seg(value: object) -> str:
    text = str(value)
    if not _SEGMENT.match(text):
        raise InvalidKeyPart(f"not usable in a cache key: {text!r}")
    return text


# --- per portal user (ids from id_mappings.user_id) -------------------------------------------
def user_prefix(user_id: str) -> str:
    return f"{PREFIX}:user:{_seg(user_id)}"


def user_invoices(user_id: str) -> str:
    return f"{user_prefix(user_id)}:invoices"


def user_invoice(user_id: str, invoice_id: int | str) -> str:
    return f"{user_prefix(user_id)}:invoice:{_seg(invoice_id)}"


def user_subscriptions(user_id: str) -> str:
    return f"{user_prefix(user_id)}:subscriptions"


def user_subscription(user_id: str, service_id: int | str) -> str:
    return f"{user_prefix(user_id)}:subscription:{_seg(service_id)}"


def user_paymethods(user_id: str) -> str:
    return f"{user_prefix(user_id)}:paymethods"


def user_profile(user_id: str) -> str:
    return f"{user_prefix(user_id)}:profile"


# --- per Salesforce account -------------------------------------------------------------------
def account_prefix(sf_account_id: str) -> str:
    return f"{PREFIX}:sf-account:{_seg(sf_account_id)}"


def account_orders(sf_account_id: str) -> str:
    return f"{account_prefix(sf_account_id)}:orders"


def account_order(sf_account_id: str, sf_order_id: str) -> str:
    return f"{account_prefix(sf_account_id)}:order:{_seg(sf_order_id)}"


def eligibility(sf_account_id: str) -> str:
    return f"{PREFIX}:eligibility:{_seg(sf_account_id)}"


# --- dependency indexes (Redis SETs the portal fills when it caches) --------------------------
def order_deps(sf_order_id: str) -> str:
    """SET of every key whose value embeds this order (the account's list, the order's detail).

    Needed because OrderItem changes and some outcomes do not carry the account id."""
    return f"{PREFIX}:deps:order:{_seg(sf_order_id)}"


def product_deps(product2_id: str) -> str:
    """SET of the catalog keys that embed this Product2 (the portal's ``invalidateProducts``)."""
    return f"catalog:deps:product:{_seg(product2_id)}"


# --- families (what one kind of change makes stale) -------------------------------------------
def order_keys(sf_account_id: str, sf_order_id: str) -> tuple[str, str]:
    """The account's order list and the order's detail."""
    return account_orders(sf_account_id), account_order(sf_account_id, sf_order_id)


def is_portal_key(key: str) -> bool:
    """True for keys this contract names (used by tests that scan the namespace)."""
    return key.startswith((f"{PREFIX}:", "catalog:"))
