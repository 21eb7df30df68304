"""The sandbox's OAuth 2.0 token endpoint (``POST /services/oauth2/token``) and its access tokens.

Grants: JWT bearer (``urn:ietf:params:oauth:grant-type:jwt-bearer``; RS256 assertion; ``iss`` must
be a known client id, ``sub`` a known username, ``aud`` one of the accepted audiences, ``exp`` in
the future), refresh token and password. The signature is checked against ``jwt_public_key_pem``
when one is configured; without one any RS256 signature is accepted (the sandbox has no
certificate upload), which is the one documented deviation. Tokens expire after ``ttl_s`` or when
``expire_all()`` is called (the control API), and then REST answers 401 INVALID_SESSION_ID.
The ``instance_url`` handed out is ``public_url`` when one is configured, else the scheme, host and
port the token request came to, with ``127.0.0.1`` spelled ``localhost`` (aiohttp's cookie jar
keeps no cookies for IP hosts, and the CometD session needs its cookie).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

from sandbox import demo_data

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ORG_ID = "00D5g00000FLEETEAA"


@dataclass
class Issued:
    token: str
    username: str
    client_id: str
    expires_at: float


@dataclass
class TokenIssuer:
    """Connected apps, users and refresh tokens the sandbox org knows, and the tokens it issued."""

    public_url: Callable[[], str | None]
    ttl_s: float = 3600.0
    clients: dict[str, str] = field(default_factory=lambda: {"fleet-connected-app": "sandbox-client-secret"})
    users: dict[str, str] = field(default_factory=lambda: {"integration@fleet.example": "sandbox-password"})
    refresh_tokens: dict[str, str] = field(
        default_factory=lambda: {"sandbox-refresh-token": "integration@fleet.example"}
    )
    audiences: set[str] = field(default_factory=lambda: {"https://login.salesforce.com", "https://test.salesforce.com"})
    jwt_public_key_pem: str | None = None
    clock: Callable[[], float] = time.time
    tokens: dict[str, Issued] = field(default_factory=dict)

    # --- token checks -------------------------------------------------------------------------
    def check(self, authorization: str | None) -> tuple[Issued | None, str]:
        """(token, "") when valid; (None, "missing"|"invalid") otherwise. Accepts ``Bearer`` and ``OAuth``."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme not in ("Bearer", "OAuth") or not value.strip():
            return None, "missing"
        issued = self.tokens.get(value.strip())
        if issued is None or issued.expires_at <= self.clock():
            return None, "invalid"
        return issued, ""

    def expire_all(self) -> int:
        count = len(self.tokens)
        self.tokens.clear()
        return count

    # --- the endpoint -------------------------------------------------------------------------
    def instance_url(self, request: web.Request) -> str:
        configured = self.public_url()
        if configured:
            return configured.rstrip("/")
        host = request.host.replace("127.0.0.1", "localhost", 1)
        return f"{request.scheme}://{host}"

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        fields = {k: str(v) for k, v in form.items()}
        instance_url = self.instance_url(request)
        try:
            username, client_id = self._grant(grant, fields, instance_url)
        except _Refused as refusal:
            return web.json_response({"error": refusal.error, "error_description": refusal.description}, status=400)
        return web.json_response(self._issue(username, client_id, instance_url))

    def _grant(self, grant: str, form: dict[str, str], instance_url: str) -> tuple[str, str]:
        if grant == JWT_BEARER_GRANT:
            return self._jwt_bearer(form.get("assertion", ""), instance_url)
        if grant == "refresh_token":
            self._client(form)
            username = self.refresh_tokens.get(form.get("refresh_token", ""))
            if username is None:
                raise _Refused("invalid_grant", "expired access/refresh token")
            return username, form["client_id"]
        if grant == "password":
            self._client(form)
            if self.users.get(form.get("username", "")) != form.get("password"):
                raise _Refused("invalid_grant", "authentication failure")
            return form["username"], form["client_id"]
        raise _Refused("unsupported_grant_type", "grant type not supported")

    def _client(self, form: dict[str, str]) -> None:
        secret = self.clients.get(form.get("client_id", ""))
        if secret is None:
            raise _Refused("invalid_client_id", "client identifier invalid")
        if form.get("client_secret") != secret:
            raise _Refused("invalid_client", "invalid client credentials")

    def _jwt_bearer(self, assertion: str, instance_url: str) -> tuple[str, str]:
        claims = self._claims(assertion)
        if claims.get("iss") not in self.clients:
            raise _Refused("invalid_client_id", "client identifier invalid")
        if claims.get("aud") not in self.audiences | {instance_url}:
            raise _Refused("invalid_grant", "audience is invalid")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= self.clock():
            raise _Refused("invalid_grant", "expired authorization code")
        if claims.get("sub") not in self.users:
            raise _Refused("invalid_grant", "user hasn't approved this consumer")
        return str(claims["sub"]), str(claims["iss"])

    def _claims(self, assertion: str) -> dict[str, Any]:
        try:
            if jwt.get_unverified_header(assertion).get("alg") != "RS256":
                raise _Refused("invalid_grant", "invalid assertion")
            if self.jwt_public_key_pem is None:
                return dict(jwt.decode(assertion, options={"verify_signature": False}))
            return dict(
                jwt.decode(
                    assertion,
                    self.jwt_public_key_pem,
                    algorithms=["RS256"],
                    options={"verify_aud": False, "verify_exp": False},
                )
            )
        except jwt.PyJWTError as exc:
            raise _Refused("invalid_grant", "invalid assertion") from exc

    def _issue(self, username: str, client_id: str, instance_url: str) -> dict[str, Any]:
        token = f"{ORG_ID}!{secrets.token_urlsafe(24)}"
        self.tokens[token] = Issued(token, username, client_id, self.clock() + self.ttl_s)
        issued_at = str(int(self.clock() * 1000))
        identity = f"{instance_url}/id/{ORG_ID}/{demo_data.INTEGRATION_USER_ID}"
        signature = base64.b64encode(hashlib.sha256(f"{identity}{issued_at}".encode()).digest()).decode()
        return {
            "access_token": token,
            "instance_url": instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
            "scope": "api",
        }


class _Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
