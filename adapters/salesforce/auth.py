"""OAuth 2.0 token sources for Salesforce: JWT bearer (production), refresh-token and password grants.

A token source hands out ``(access_token, instance_url)``, caches it, and replaces it at most once
per stale token however many callers noticed the 401 at the same moment (single flight behind
one lock). ``HttpSalesforce`` and the CometD authenticator (``adapters.salesforce_stream``) share
one instance, so a refresh by either serves both. Salesforce sends no ``expires_in``: a session
lasts until the org's timeout, so a token is replaced when a call is refused, never on a timer.
Must not read configuration or files: the composition root passes the PEM and the secrets.

Source: help.salesforce.com "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration"
(``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``; claims iss/sub/aud/exp; RS256).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import ValidationError

from adapters.http import send
from events.errors import AuthenticationFailed, InvalidPayload
from schemas.salesforce_api import OAuthError, TokenResponse

UPSTREAM = "salesforce"
TOKEN_PATH = "/services/oauth2/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Salesforce accepts assertions that expire within three minutes
JWT_LIFETIME_S = 180
PRODUCTION_AUDIENCE = "https://login.salesforce.com"


class AccessToken(NamedTuple):
    access_token: str
    instance_url: str
    #: the org's id (``00D…``), from the identity URL the grant answers with (``…/id/<org>/<user>``);
    #: the Pub/Sub API wants it as ``tenantid``. None when the answer carried no identity URL.
    org_id: str | None = None


class TokenSource(Protocol):
    async def token(self) -> AccessToken:
        """The cached token, logging in first when there is none. Raises ``AuthenticationFailed``
        when the grant is refused, retryable errors when the token endpoint is unreachable."""
        ...

    async def refresh(self, stale: str | None = None) -> AccessToken:
        """Replace ``stale`` (the token a call was refused with) unless another caller already
        did; concurrent callers holding the same stale token cause one grant. Raises as ``token``."""
        ...


class _OAuthTokenSource(ABC):
    """Caching and single flight shared by every grant; subclasses only build the form."""

    def __init__(self, client: httpx.AsyncClient, login_url: str) -> None:
        self._client = client
        self._token_url = login_url.rstrip("/") + TOKEN_PATH
        self._lock = asyncio.Lock()
        self._current: AccessToken | None = None
        #: how many grants were requested (for tests and a metric)
        self.grants = 0

    async def token(self) -> AccessToken:
        current = self._current
        if current is not None:
            return current
        return await self.refresh(None)

    async def refresh(self, stale: str | None = None) -> AccessToken:
        async with self._lock:
            current = self._current
            # another caller replaced the stale token while we waited for the lock: reuse theirs
            if current is not None and current.access_token != stale:
                return current
            self._current = await self._grant()
            return self._current

    def invalidate(self) -> None:
        """Forget the cached token; the next ``token()`` logs in again."""
        self._current = None

    @abstractmethod
    def _form(self) -> dict[str, str]:
        """The grant's form fields."""

    async def _grant(self) -> AccessToken:
        self.grants += 1
        operation = f"POST {TOKEN_PATH}"
        response = await send(
            self._client, "POST", self._token_url, upstream=UPSTREAM, operation=operation, data=self._form()
        )
        if response.status_code != 200:
            raise _refusal(response, operation)
        try:
            body = TokenResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidPayload(
                f"malformed answer from {operation}: {exc.errors()[0]['msg']}",
                upstream=UPSTREAM,
                code="MALFORMED_RESPONSE",
                status=response.status_code,
            ) from exc
        return AccessToken(body.access_token, body.instance_url.rstrip("/"), _org_of(body.id))


def _org_of(identity: str | None) -> str | None:
    """``https://login.salesforce.com/id/00D…/005…`` → ``00D…`` (None when not of that shape)."""
    parts = (identity or "").rstrip("/").split("/")
    return parts[-2] if len(parts) >= 3 and parts[-3] == "id" and parts[-2] else None


def _refusal(response: httpx.Response, operation: str) -> AuthenticationFailed:
    """A refused grant is permanent: retrying the same credentials cannot help."""
    try:
        error = OAuthError.model_validate_json(response.content)
        detail = f"{error.error}: {error.error_description}".rstrip(": ")
        code = error.error
    except ValidationError:
        detail, code = response.text[:200], "TOKEN_REFUSED"
    return AuthenticationFailed(
        f"{operation} refused the grant ({detail})", upstream=UPSTREAM, code=code, status=response.status_code
    )


class JwtBearerAuth(_OAuthTokenSource):
    """JWT bearer grant: an RS256 assertion signed with the connected app's private key."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        login_url: str,
        client_id: str,
        username: str,
        private_key_pem: str,
        audience: str = PRODUCTION_AUDIENCE,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, login_url)
        # parse once so a bad key fails at start-up, not on the first token request
        self._key = load_pem_private_key(private_key_pem.encode(), password=None)
        self._client_id = client_id
        self._username = username
        self._audience = audience
        self._clock = clock

    def assertion(self) -> str:
        now = int(self._clock())
        claims = {"iss": self._client_id, "sub": self._username, "aud": self._audience, "exp": now + JWT_LIFETIME_S}
        return jwt.encode(claims, self._key, algorithm="RS256")  # type: ignore[arg-type]

    def _form(self) -> dict[str, str]:
        return {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}


class RefreshTokenAuth(_OAuthTokenSource):
    """Refresh-token grant (a token obtained once through an interactive flow)."""

    def __init__(
        self, client: httpx.AsyncClient, login_url: str, client_id: str, client_secret: str, refresh_token: str
    ) -> None:
        super().__init__(client, login_url)
        self._fields = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        }

    def _form(self) -> dict[str, str]:
        return dict(self._fields)


class PasswordAuth(_OAuthTokenSource):
    """Username-password grant (sandboxes and local runs; Salesforce discourages it in production)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        login_url: str,
        client_id: str,
        client_secret: str,
        username: str,
        password: str,
    ) -> None:
        super().__init__(client, login_url)
        self._fields = {
            "grant_type": "password",
            "client_id": client_id,
            "client_secret": client_secret,
            "username": username,
            "password": password,
        }

    def _form(self) -> dict[str, str]:
        return dict(self._fields)
