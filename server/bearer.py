"""Bearer-token checks shared by the transparency API's writes and the key holder's routes.

A server may keep only the SHA-256 of its token (the key holder does: its folder then holds no
credential anyone could present); comparison is of digests, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from fastapi.security import HTTPAuthorizationCredentials

__all__ = ["bearer_refusal", "presented_matches", "token_digest"]

_SCHEME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}")  # an auth-scheme token (RFC 9110), short


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def presented_matches(creds: HTTPAuthorizationCredentials | None, expected_digest: bytes) -> bool:
    """True when a bearer token was presented and its digest is `expected_digest`."""
    presented = token_digest(creds.credentials) if creds is not None else b""
    return creds is not None and hmac.compare_digest(presented, expected_digest)


def bearer_refusal(authorization: str | None, challenge: str) -> tuple[str, str]:
    """(detail, WWW-Authenticate) of the 401 answering this `Authorization` header value, as RFC 6750
    section 3.1 asks: a request without bearer credentials (no header, or another scheme such as
    Basic) gets the bare `challenge`, without an error code; `Bearer` without a token
    `error="invalid_request"`; a bearer token that is not the right one `error="invalid_token"`."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    sep = ", " if " " in challenge else " "
    if scheme.lower() != "bearer":
        named = f"Authorization: {scheme} is not accepted; " if _SCHEME.fullmatch(scheme) else ""
        return f"a bearer token is required ({named}send Authorization: Bearer <token>)", challenge
    if not credentials.strip():
        return (
            "the Authorization header names the Bearer scheme but carries no token",
            f'{challenge}{sep}error="invalid_request"',
        )
    return "the bearer token is not valid", f'{challenge}{sep}error="invalid_token"'
