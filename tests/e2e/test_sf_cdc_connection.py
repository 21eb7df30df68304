"""Scenario: the connection to Salesforce goes bad, and the subscriber recovers without losing its place.

Contract: when the sandbox drops every CometD client and then leaves the long polls hanging (or,
on the Pub/Sub API, its stream goes half-open: open, but sending nothing, keepalives included), no
sign of life arrives; the watchdog notices the silence within its bound, tears the stream down,
re-authenticates and resubscribes from the checkpoint, and changes made meanwhile arrive. When
every access token expires, the stream and the REST re-reads log in again and carry on. The JWT
bearer grant works end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.common import FaultSpec
from tests.e2e.test_sf_cdc_flow import ACTIVATION, CHANGED, World, eventually, settings_for, world  # noqa: F401

pytestmark = pytest.mark.e2e


def token_requests(w: World) -> int:
    return len([r for r in w.sandbox.requests if r.endpoint == "oauth.token"])


async def test_the_watchdog_resubscribes_after_the_connection_is_dropped(world: World) -> None:  # noqa: F811
    # the library's own reconnect bound is switched off, so only the watchdog can act
    await world.start(watchdog_s=2.0, connection_timeout_s=0)
    oid = (await world.seed_order())["id"]
    await world.tap.wait(lambda: any(r.key == oid for r in world.tap.on(world.topics.order, CHANGED)))
    grants = token_requests(world)
    if world.pubsub:
        await world.control("pubsub/faults", {"kind": "half_open"})
    else:
        world.sandbox.add_fault(FaultSpec(endpoint="cometd.connect", kind="timeout", hold_s=30, times=4))
        await world.control("drop-connections", {"mode": "abort"})
    await world.edit("Order", oid, Status="Draft")  # made while nothing can be delivered
    await eventually(lambda: world.metric("sf_cdc_reconnects_total", reason="StreamStalled") >= 1, 30, "watchdog")
    if world.pubsub:  # the half-open stream was torn down; the platform behaves again
        (await world.http.delete("/_sandbox/pubsub/faults")).raise_for_status()
    await world.tap.wait(
        lambda: any(
            r.key == oid and r.value["change_type"] == "UPDATE" for r in world.tap.on(world.topics.order, CHANGED)
        ),
        30,
        "the change made during the outage",
    )
    if not world.pubsub:  # CometD replaces the token before a reopen; Pub/Sub only on an auth error
        assert token_requests(world) > grants  # re-authenticated before resubscribing


async def test_expired_tokens_are_replaced_without_losing_position(world: World) -> None:  # noqa: F811
    await world.start()
    first = (await world.seed_order())["id"]
    await world.tap.wait(lambda: any(r.key == first for r in world.tap.on(world.topics.order, CHANGED)))
    grants = token_requests(world)
    await world.control("expire-tokens")
    second = (await world.seed_order())["id"]
    await world.approve(second)  # needs a REST re-read of WHMCS_Order_ID__c with a fresh token too
    await world.tap.wait(lambda: any(r.key == second for r in world.tap.on(world.topics.order, ACTIVATION)), 20)
    assert token_requests(world) > grants
    assert world.metric("sf_cdc_replay_fallbacks_total", channel="/data/OrderChangeEvent") == 0


async def test_the_jwt_bearer_grant(world: World, stack_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    world.sandbox.tokens.jwt_public_key_pem = public.decode()
    key_path = tmp_path / "fleet.key"
    key_path.write_bytes(pem)
    world.settings = settings_for(
        world.url, stack_env, auth="jwt", private_key_path=key_path, **world.transport_settings
    )
    await world.start()
    oid = (await world.seed_order())["id"]
    await world.approve(oid)
    await world.tap.wait(lambda: any(r.key == oid for r in world.tap.on(world.topics.order, ACTIVATION)))
    grants = [r for r in world.sandbox.requests if r.endpoint == "oauth.token"]
    assert grants and all("jwt-bearer" in r.body for r in grants)
