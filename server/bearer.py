"""Bearer-token checks shared by the transparency API's writes and the key holder's routes.

A server may keep only the SHA-256 of its token (the key holder does: its folder then holds no
credential anyone could present); comparison is of digests, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi.security import HTTPAuthorizationCredentials

__all__ = ["presented_matches", "token_digest"]


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def presented_matches(creds: HTTPAuthorizationCredentials | None, expected_digest: bytes) -> bool:
    """True when a bearer token was presented and its digest is `expected_digest`."""
    presented = token_digest(creds.credentials) if creds is not None else b""
    return creds is not None and hmac.compare_digest(presented, expected_digest)
