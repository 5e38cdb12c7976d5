"""Who a request comes from, whether it holds the server's token, and which origins may read or change state.

The key that limits, fairness and ownership are counted by is :func:`client_id`. With ``CONVLENS_TOKEN`` set,
every ``/api`` request and Socket.IO connection must carry the token; the page's own files stay public so it
can load and ask for it. A request that changes state (POST, PUT, DELETE, PATCH; Socket.IO stop, pause,
resume) from a browser page of another origin is refused unless that origin is configured; reading and
framing are open to the configured origins, or to any with ``*``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from typing import Any

from flask import Flask, g, jsonify, request
from socketio.exceptions import ConnectionRefusedError as SocketRefused

from .errors import BadInput

CLIENT_COOKIE = "convlens_client"
"""A browser's own random id (32 hex digits), set by the page's first load; what a browser owns uploads by."""
TOKEN_COOKIE = "convlens_token"
"""The token's SHA-256, set once a request has shown the token, so the page's images and socket carry it."""
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
COOKIE_AGE = 400 * 24 * 3600  # the longest browsers keep a cookie
_CLIENT_ID = re.compile(r"[0-9a-f]{32}")


def bearer_token() -> str | None:
    """The request's token: ``Authorization: Bearer <token>``, else ``?token=``; ``None`` without one."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip() or None
    return request.args.get("token") or None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def client_id() -> str:
    """The requesting client: its browser's id cookie (or the one this answer sets), else its token's digest,
    else its address.

    The browser first: one token is often shared by a whole lab, and each browser should own its own uploads.
    """
    cookie = request.cookies.get(CLIENT_COOKIE, "")
    if _CLIENT_ID.fullmatch(cookie):
        return "browser:" + cookie
    if g.get("new_client"):
        return "browser:" + g.new_client
    token = bearer_token()
    if token:
        return "token:" + token_digest(token)[:16]
    return "address:" + (request.remote_addr or "unknown")


def holds_token(expected: str, auth: Any = None) -> bool:
    """Whether the request carries ``expected``: as a bearer token, ``?token=``, Socket.IO's
    ``auth: {token}``, or the cookie a request with the token set."""
    shown = [bearer_token()]
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        shown.append(auth["token"])
    if any(_same(candidate, expected) for candidate in shown):
        return True
    return _same(request.cookies.get(TOKEN_COOKIE), token_digest(expected))


def _same(shown: str | None, expected: str) -> bool:
    """A comparison that takes as long whatever the first differing character."""
    if shown is None:
        return False
    return hmac.compare_digest(
        shown.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def own_origin(environ: dict[str, Any]) -> str:
    """The origin the server was reached at, as a browser on its own page names it."""
    return f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"


def may_change_state(origin: str | None, origins: list[str], environ: dict[str, Any]) -> bool:
    """No ``Origin`` (not a browser page's request), the server's own, or one listed by name (not ``*``)."""
    return origin is None or origin == own_origin(environ) or origin in origins


def may_read(origin: str | None, origins: list[str], environ: dict[str, Any]) -> bool:
    return "*" in origins or may_change_state(origin, origins, environ)


def refusal(field: str, reason: str, status: int):
    answer = jsonify({"error": reason, "field": field})
    answer.status_code = status
    if field == "token":
        answer.headers["WWW-Authenticate"] = 'Bearer realm="convlens"'
    return answer


def origin_refusal(origin: str) -> str:
    return (
        f"a page at {origin[:100]!r} may not change this server's state; "
        "list that origin in CONVLENS_CORS_ORIGINS to let it"
    )


TOKEN_REFUSAL = "this server needs its token: send 'Authorization: Bearer <token>' (or ?token=)"


def install(app: Flask, origins: list[str], token: str | None) -> None:
    """The checks before every request and the headers after it."""

    @app.before_request
    def check_access():
        g.new_client = None
        page_load = request.path == "/" or request.path.endswith(".html")
        # A cross-site request's cookie would be dropped by its browser: it would get a new id each time.
        browser = page_load or request.headers.get("Sec-Fetch-Site") in ("same-origin", "none")
        if browser and not _CLIENT_ID.fullmatch(request.cookies.get(CLIENT_COOKIE, "")):
            g.new_client = secrets.token_hex(16)
        if not request.path.startswith("/api/") or request.method == "OPTIONS":
            return None  # the page loads and asks; a preflight carries no credentials
        origin = request.headers.get("Origin")
        if request.method in STATE_CHANGING and not may_change_state(origin, origins, request.environ):
            return refusal("Origin", origin_refusal(origin or ""), 403)
        if token is not None and not holds_token(token):
            return refusal("token", TOKEN_REFUSAL, 401)
        return None

    @app.after_request
    def add_headers(response):
        _cors(response, origins)
        response.headers["X-Content-Type-Options"] = "nosniff"
        ancestors = "*" if "*" in origins else " ".join(["'self'", *origins])
        response.headers["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
        if g.get("new_client"):
            response.set_cookie(CLIENT_COOKIE, g.new_client, max_age=COOKIE_AGE, samesite="Lax")
        if token is not None and request.path.startswith("/api/") and _same(bearer_token(), token):
            digest = token_digest(token)
            if request.cookies.get(TOKEN_COOKIE) != digest:
                response.set_cookie(
                    TOKEN_COOKIE, digest, max_age=COOKIE_AGE, httponly=True, samesite="Strict"
                )
        return response


def _cors(response, origins: list[str]) -> None:
    """``Access-Control-Allow-*`` for a page of another origin: reading where it may read; a preflight for a
    state change only where it may change state, so the browser does not send the request at all."""
    origin = request.headers.get("Origin")
    if origin is None or origin == own_origin(request.environ):
        return
    listed = origin in origins
    if not listed and "*" not in origins:
        return
    wanted = request.headers.get("Access-Control-Request-Method")
    preflight = request.method == "OPTIONS" and wanted is not None
    if preflight and wanted.upper() in STATE_CHANGING and not listed:
        return
    response.headers["Access-Control-Allow-Origin"] = origin if listed else "*"
    if listed:
        response.headers.add("Vary", "Origin")
    if preflight:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE" if listed else "GET"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"


def socket_origins(origins: list[str]) -> Callable[[str | None, dict[str, Any]], bool]:
    """python-engineio's ``cors_allowed_origins``: who may open a Socket.IO connection (to watch)."""
    return lambda origin, environ: may_read(origin, origins, environ)


def check_socket_connect(token: str | None, auth: Any) -> None:
    """Refuses a Socket.IO connection without the token (the client's ``connect_error`` says why)."""
    if token is not None and not holds_token(token, auth):
        reason = "this server needs its token: connect with auth: {token: <token>}"
        raise SocketRefused(f"token: {reason}", {"error": reason, "field": "token"})


def changing_state(origins: list[str], handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``handler`` answering ``{ok: false, field: "Origin"}`` on a connection opened by a page of an origin
    that may watch but not change state (the connection's handshake headers are the request's)."""

    def checked(*args: Any):
        origin = request.headers.get("Origin")
        if not may_change_state(origin, origins, request.environ):
            return {"ok": False, "error": origin_refusal(origin or ""), "field": "Origin"}
        return handler(*args)

    checked.__name__ = handler.__name__
    return checked


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def access_at_start(host: str, token: str | None, allow_no_token: bool) -> str:
    """What ``convlens serve`` says about access at start-up; ``BadInput`` naming ``token`` (exit 2) for a
    non-loopback address without a token, unless ``allow_no_token``."""
    if token is not None:
        return "every API request and socket needs the token (CONVLENS_TOKEN); the page asks for it once"
    if is_loopback(host):
        return "no token: only this machine can reach the server"
    if not allow_no_token:
        raise BadInput(
            "token",
            f"serving on {host}, which other machines can reach, needs a token: set CONVLENS_TOKEN "
            "(e.g. CONVLENS_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe())')), "
            "or pass --no-token (CONVLENS_ALLOW_NO_TOKEN=1) to let anyone who reaches it use it",
        )
    return f"no token (--no-token): anyone who can reach {host} can use this server"
