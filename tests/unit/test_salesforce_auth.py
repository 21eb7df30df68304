"""Salesforce token sources offline: the grants they send, caching, single flight, refusals."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.salesforce import AccessToken, JwtBearerAuth, PasswordAuth, RefreshTokenAuth
from events.errors import AuthenticationFailed, InvalidPayload, UpstreamUnavailable

LOGIN = "https://login.salesforce.com"
GRANTED = {
    "access_token": "00D!tok",
    "instance_url": "https://fleet.my.salesforce.com/",
    "token_type": "Bearer",
    "id": "https://login.salesforce.com/id/00D/005",
    "issued_at": "1700000000000",
    "signature": "sig",
}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


Forms = list[dict[str, list[str]]]


def recording(status: int = 200, body: Any = GRANTED, delay: float = 0.0) -> tuple[httpx.AsyncClient, Forms]:
    forms: Forms = []

    async def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == f"{LOGIN}/services/oauth2/token"
        forms.append(parse_qs(request.content.decode()))
        await asyncio.sleep(delay)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        if status == 200 and len(forms) > 1:  # every later grant hands out a new token
            return httpx.Response(status, json={**body, "access_token": f"{body['access_token']}-{len(forms)}"})
        return httpx.Response(status, json=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), forms


async def test_the_jwt_bearer_grant_posts_an_rs256_assertion_with_the_documented_claims(key: rsa.RSAPrivateKey) -> None:
    client, forms = recording()
    auth = JwtBearerAuth(client, LOGIN, "my-app", "user@example.com", pem(key), clock=lambda: 1_000_000.0)

    token = await auth.token()

    assert token == AccessToken("00D!tok", "https://fleet.my.salesforce.com", "00D")  # org id from the identity URL
    (form,) = forms
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt.decode(form["assertion"][0], key.public_key(), algorithms=["RS256"], options={"verify_exp": False},
                        audience="https://login.salesforce.com")  # fmt: skip
    assert claims == {"iss": "my-app", "sub": "user@example.com", "aud": "https://login.salesforce.com",
                      "exp": 1_000_180}  # fmt: skip


async def test_the_token_is_cached_until_someone_reports_it_stale(key: rsa.RSAPrivateKey) -> None:
    client, forms = recording()
    auth = JwtBearerAuth(client, LOGIN, "my-app", "user@example.com", pem(key))

    first = await auth.token()
    await auth.token()
    await auth.refresh("some-older-token")  # already replaced: no new grant
    await auth.refresh(first.access_token)

    assert len(forms) == 2 and auth.grants == 2


async def test_concurrent_refreshes_of_the_same_stale_token_make_one_grant() -> None:
    client, forms = recording(delay=0.05)
    auth = RefreshTokenAuth(client, LOGIN, "my-app", "secret", "refresh-1")
    stale = (await auth.token()).access_token

    tokens = await asyncio.gather(*(auth.refresh(stale) for _ in range(10)))

    assert {t.access_token for t in tokens} == {"00D!tok-2"}
    assert len(forms) == 2


async def test_refresh_and_password_grants_send_their_fields() -> None:
    client, forms = recording()
    await RefreshTokenAuth(client, LOGIN, "app", "secret", "rt").token()
    await PasswordAuth(client, LOGIN, "app", "secret", "user", "pw").token()

    assert forms[0] == {"grant_type": ["refresh_token"], "client_id": ["app"], "client_secret": ["secret"],
                        "refresh_token": ["rt"]}  # fmt: skip
    assert forms[1]["grant_type"] == ["password"] and forms[1]["username"] == ["user"]


async def test_a_refused_grant_is_a_permanent_authentication_failure() -> None:
    client, _ = recording(400, {"error": "invalid_grant", "error_description": "audience is invalid"})

    with pytest.raises(AuthenticationFailed) as caught:
        await PasswordAuth(client, LOGIN, "app", "secret", "user", "pw").token()

    assert caught.value.code == "invalid_grant" and "audience is invalid" in caught.value.message


async def test_an_unreachable_token_endpoint_is_retryable() -> None:
    client, _ = recording(503, {"error": "unknown_error"})

    with pytest.raises(UpstreamUnavailable):
        await PasswordAuth(client, LOGIN, "app", "secret", "user", "pw").token()


async def test_a_malformed_token_answer_names_the_endpoint() -> None:
    client, _ = recording(200, b'{"access_token": ')

    with pytest.raises(InvalidPayload, match="POST /services/oauth2/token"):
        await PasswordAuth(client, LOGIN, "app", "secret", "user", "pw").token()


def test_a_bad_private_key_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        JwtBearerAuth(httpx.AsyncClient(), LOGIN, "app", "user", "-----BEGIN PRIVATE KEY-----\nnope\n")
