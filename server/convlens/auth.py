"""Who a request comes from: the key that limits, fairness and ownership are counted by."""

from __future__ import annotations

import hashlib
import re

from flask import request

CLIENT_COOKIE = "convlens_client"
"""A browser's own random id (32 hex digits), set by the page's first load; what a browser without a token owns."""
_CLIENT_ID = re.compile(r"[0-9a-f]{32}")


def bearer_token() -> str | None:
    """The request's token: ``Authorization: Bearer <token>``, else ``?token=``; ``None`` without one."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip() or None
    return request.args.get("token") or None


def client_id() -> str:
    """The requesting client: its token's digest, else its browser's id cookie, else its address."""
    token = bearer_token()
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cookie = request.cookies.get(CLIENT_COOKIE, "")
    if _CLIENT_ID.fullmatch(cookie):
        return "browser:" + cookie
    return "address:" + (request.remote_addr or "unknown")
