"""Who may read the dashboard: a token on every request, GET only, and headers that keep a page to itself.

- A token always: given with --token, else generated and printed once in the URL (as Jupyter does),
  so another user of the machine, or a web page the browser has open, cannot read the ledger.
  Binding anything but loopback without --token is refused before anything listens.
- The token comes as ?token= once (then an HttpOnly, SameSite=Strict cookie, and a redirect that
  drops it from the address bar and the history), as the cookie, or as `Authorization: Bearer`.
  Anything else is a 401.
- On loopback the Host header must name loopback too: a DNS-rebinding page cannot reach the server
  under a name of its own.
- Read-only: any method but GET and HEAD is a 405.
- Every response: a Content-Security-Policy that allows the package's own files only (no CDN, no
  inline script), no framing, no referrer, no caching.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse

GENERATE = "generate"  # --token generate: a random token, printed once
COOKIE = "gpurun_dashboard"  # + the server's port: a browser sends a host's cookies to every port
MIN_TOKEN_LEN = 16
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
                                 b" connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessError(Exception):
    """The dashboard refuses to start as asked; the message is one line saying how to fix it."""


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_token(host: str, token: str | None) -> tuple[str, bool]:
    """(the token every request must carry, whether it was generated here)."""
    if token == GENERATE or (token is None and is_loopback(host)):
        return secrets.token_urlsafe(24), True
    if token is None:
        raise AccessError(f"--host {host} serves the ledger beyond this machine: pass --token T "
                          f"(at least {MIN_TOKEN_LEN} characters) or --token {GENERATE}")
    if len(token) < MIN_TOKEN_LEN:
        raise AccessError(f"--token is {len(token)} characters: use at least {MIN_TOKEN_LEN} "
                          f"(or --token {GENERATE} for a random one)")
    return token, False


def cookie_name(scope: Scope) -> str:
    server = scope.get("server") or ("", 0)
    return f"{COOKIE}_{server[1]}"


def _host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8765" -> "::1")."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: every request carries the token, or it is answered 401 (or 405, or 421)."""

    def __init__(self, app: App, token: str, loopback_only: bool) -> None:
        self.app, self.token, self.loopback_only = app, token, loopback_only

    def _matches(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(str(offered).encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await _with_headers(refusal, scope, receive, send)
            return
        if self._matches(request.query_params.get("token")):
            # The token came in the URL: keep it in a cookie and drop it from the address bar.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(cookie_name(scope), self.token, httponly=True, samesite="strict", path="/")
            await _with_headers(response, scope, receive, send)
            return
        await _with_headers(self.app, scope, receive, send)

    def _refusal(self, request: Request) -> PlainTextResponse | None:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("405: the dashboard is read-only", status_code=405, headers={"allow": "GET, HEAD"})
        if self.loopback_only and not is_loopback(_host_name(request.headers.get("host", ""))):
            return PlainTextResponse("421: this dashboard answers to 127.0.0.1 / localhost only", status_code=421)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        offered = (request.cookies.get(cookie_name(request.scope)), bearer, request.query_params.get("token"))
        if any(self._matches(t) for t in offered):
            return None
        return PlainTextResponse("401: this dashboard needs its token: open the URL `gpurun dashboard` printed",
                                 status_code=401, headers={"www-authenticate": "Bearer"})


async def _with_headers(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app` (a response is an ASGI app too) with the security headers on its response."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *_HEADERS]
        await send(message)

    await app(scope, receive, send_with_headers)
