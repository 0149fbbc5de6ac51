"""A gate in front of the HTTP services: bearer token and body size checked before the body is read.

FastAPI reads and parses a request's JSON body before it resolves the route's dependencies, so a
token check written as a dependency answers 401 only after the whole body has been received and
parsed, and nothing caps its size. `RequestGate` is a pure ASGI middleware (it never buffers) that
looks at the request line and headers only: a protected route without the right token gets
401 (403 on a server that has no token), a declared Content-Length above the cap 413, a malformed
one 400, all before a single body byte is received. A body without Content-Length (chunked) is
counted as it streams; past the cap the app sees the client disconnect, never a truncated body,
and the client gets 413. The apps keep their own token checks (defence in depth).

The refusal bodies come from the service (`problem`), so each service answers with its own
RFC 9457 problem details.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedchurn.server.bearer import bearer_refusal

__all__ = ["KEYHOLDER_MAX_BODY_BYTES", "ProblemBody", "RequestGate"]

# The key holder's biggest legitimate request lists the largest cohort its request models accept,
# 100,000 devices. One device's entry as JSON is at most 462 bytes: a device id of at most 256
# (ASCII) characters, the 80-byte seal in base64 (108), a 32-byte digest in base64 (44) and 54
# bytes of keys and punctuation; 46.2 MB in all. A CKKS decrypt-sum lists the same cohort (no
# more per device) plus one ciphertext of at most CKKS_DEFAULT.max_upload_bytes (1 MiB; 131 KB at
# N = 4096), 1.4 MB in base64. The other fields are under 64 KiB. Rounded up to 64 MiB.
KEYHOLDER_MAX_BODY_BYTES = 64 * 1024 * 1024

ProblemBody = Callable[[int, str, str], bytes]
"""(status, detail, request path) -> the service's problem+json body."""

_DIGITS = re.compile(rb"[0-9]+")
_DISCONNECT: Message = {"type": "http.disconnect"}


class RequestGate:
    """Refuse unauthenticated or oversized requests before the wrapped app receives their body.

    `protected(method, path)` says which requests need `Authorization: Bearer <token>`; with
    `token` None they are refused with 403. A service that keeps only the token's SHA-256 digest
    passes `token_sha256` instead. `challenge` is the WWW-Authenticate value of a 401.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        token: str | None,
        protected: Callable[[str, str], bool],
        problem: ProblemBody,
        challenge: str = "Bearer",
        token_sha256: bytes | None = None,
    ) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        if token and token_sha256 is not None:
            raise ValueError("give the token or its SHA-256 digest, not both")
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Digests are compared, so the comparison takes the same time whatever the presented length.
        self._digest = hashlib.sha256(token.encode()).digest() if token else token_sha256
        self._protected = protected
        self._problem = problem
        self._challenge = challenge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_head(scope)
        if refusal is not None:
            await self._refuse(scope, send, *refusal)
            return
        received, over, started = 0, False, False

        async def capped_receive() -> Message:
            nonlocal received, over
            if over:
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True  # the app sees a client that went away, never a cut body
                    return _DISCONNECT
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a body it never got is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, send, 413, self._too_large(), {})

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_body_bytes} bytes)"

    def _check_head(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, detail, headers) of a refusal decided from the request head, else None."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self._protected(scope["method"], scope["path"]):
            if self._digest is None:
                return 403, "this server was started without a write token; writes are disabled", {}
            auth = next((v for k, v in headers if k == b"authorization"), None)
            scheme, _, given = (auth or b"").partition(b" ")
            digest = hashlib.sha256(given).digest()
            if auth is None or scheme.lower() != b"bearer" or not hmac.compare_digest(digest, self._digest):
                # What was wrong, as RFC 6750 says it: no bearer credentials, none given, or not valid.
                text = None if auth is None else auth.decode("latin-1")
                detail, challenge = bearer_refusal(text, self._challenge)
                return 401, detail, {"www-authenticate": challenge}
        lengths = {v.strip() for k, v in headers if k == b"content-length"}
        if len(lengths) > 1 or any(_DIGITS.fullmatch(v) is None for v in lengths):
            return 400, "the Content-Length header is not one decimal length", {}
        if lengths and (len(n := lengths.pop()) > 18 or int(n) > self.max_body_bytes):
            return 413, self._too_large(), {}
        return None

    async def _refuse(
        self, scope: Scope, send: Send, status: int, detail: str, headers: dict[str, str]
    ) -> None:
        body = self._problem(status, detail, scope["path"])
        # Connection: close, so the server does not read the unread body to keep the connection.
        raw = {"content-type": "application/problem+json", "connection": "close", **headers}
        raw["content-length"] = str(len(body))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()],
            }
        )
        await send({"type": "http.response.body", "body": body})
