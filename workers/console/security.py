"""Who is asking, and is a write really theirs: authentication and CSRF for ``fleet console``.

Owns two aiohttp middlewares. ``authenticate``: with ``FLEET_ENV=local`` every request is the
operator "local"; elsewhere a request names its operator by a user header that only a trusted SSO
proxy may set (``FLEET_CONSOLE__PROXY_USER_HEADER`` from ``FLEET_CONSOLE__TRUSTED_PROXIES``), or by
the console token as a bearer token or as the password of HTTP basic auth (the user name is the
operator then); anything else is answered 401. ``protect_writes``: every session gets a random id in
an HttpOnly, SameSite=Strict cookie; its CSRF token is an HMAC of that id, embedded in each page's
forms. A POST must carry that token (form field ``_csrf`` or header ``X-CSRF-Token``) and come from
this console's own origin (``Origin``, else ``Referer``), or it is refused with 403 and a reason.
Must not decide what an operator may do once known: every authenticated operator may do every write.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Awaitable, Callable
from hashlib import sha256
from urllib.parse import urlsplit

from aiohttp import web

from workers.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_COOKIE = "fleet_console_session"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
LOCAL_OPERATOR = "local"
#: answered without authentication: the console's own liveness probe
PUBLIC_PATHS = frozenset({"/livez"})

OPERATOR_KEY: web.RequestKey[str] = web.RequestKey("operator", str)
CSRF_KEY: web.RequestKey[str] = web.RequestKey("csrf_token", str)


class Guard:
    """The two middlewares, bound to the console's settings and its session-signing key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.console = settings.console
        key = self.console.session_secret.get_secret_value()
        self._key = key.encode() if key else secrets.token_bytes(32)  # random: sessions end on restart

    # --- who ---------------------------------------------------------------------------------------

    def operator_of(self, request: web.Request) -> str | None:
        """The operator's name, or None when the request is not authenticated."""
        if self.settings.env == "local":
            return LOCAL_OPERATOR
        console = self.console
        if console.proxy_user_header and request.remote in console.trusted_proxies:
            user = request.headers.get(console.proxy_user_header, "").strip()
            if user:
                return user
        token = console.token.get_secret_value()
        if not token:
            return None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return "token"
        if scheme.lower() == "basic":
            user, password = _basic(credentials)
            if password is not None and hmac.compare_digest(password.encode(), token.encode()):
                return user or "basic"
        return None

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        operator = self.operator_of(request)
        if operator is None:
            headers = {"WWW-Authenticate": 'Basic realm="fleet console", charset="UTF-8"'}
            if self.console.token.get_secret_value():
                reason = "authentication required: a bearer token or basic auth with the console token"
            else:
                reason = "authentication required: sign in through the SSO proxy"
            raise web.HTTPUnauthorized(reason="Unauthorized", text=reason, headers=headers)
        request[OPERATOR_KEY] = operator
        return await handler(request)

    # --- CSRF --------------------------------------------------------------------------------------

    def token_for(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), sha256).hexdigest()

    def origin(self, request: web.Request) -> str:
        """This console's origin as the browser sees it."""
        return self.console.public_origin.rstrip("/") or f"{request.scheme}://{request.host}"

    @web.middleware
    async def protect_writes(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = not session
        if fresh:
            session = secrets.token_urlsafe(24)
        request[CSRF_KEY] = self.token_for(session)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            await self._check_write(request, session if not fresh else "")
        response = await handler(request)
        if fresh:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="Strict", path="/")
        return response

    async def _check_write(self, request: web.Request, session: str) -> None:
        expected = self.origin(request)
        sent_origin = request.headers.get("Origin")
        if sent_origin is not None:
            if sent_origin != expected:
                raise _forbidden(f"cross-site request refused: Origin {sent_origin} is not this console ({expected})")
        else:
            referer = request.headers.get("Referer", "")
            parts = urlsplit(referer)
            if not referer or f"{parts.scheme}://{parts.netloc}" != expected:
                raise _forbidden(
                    f"cross-site request refused: no Origin, and Referer {referer or '(none)'} is not this console"
                )
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            form = await request.post()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not session or not sent or not hmac.compare_digest(sent, self.token_for(session)):
            raise _forbidden("CSRF token missing or wrong for this session: reload the page and try again")


def _forbidden(reason: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(reason="Forbidden", text=reason)


def _basic(credentials: str) -> tuple[str, str | None]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else ("", None)
