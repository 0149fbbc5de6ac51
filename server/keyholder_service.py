"""The key holder as a small HTTP service (deployment), and the aggregator's client for it.

Binary fields travel as standard base64; ring vectors as the same LSB-first bit packing as the
upload (shared.wire). Refusals are RFC 9457 problem details (application/problem+json) whose
`reason` member is the machine-readable `wire.Reason`, so the aggregator can name every dropped
device in its audit log. The answering routes need the bearer token the aggregator was given.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedchurn.server.bearer import presented_matches, token_digest
from fedchurn.server.keyholder import (
    CkksSumRequest,
    CkksSumResponse,
    Dropped,
    KeyHolder,
    KeyHolderRefusedError,
    MaskSumRequest,
    MaskSumResponse,
    SealedEntry,
)
from fedchurn.server.problem_details import (
    CHALLENGE,
    PROBLEM_JSON,
    UNAUTHORIZED,
    ProblemBody,
    problem_json,
    problem_type,
)
from fedchurn.shared import wire
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.wire import Reason

API_PREFIX = "/v1"
STATUS_BY_REASON: dict[Reason, int] = {
    Reason.ALREADY_ANSWERED: 409,
    Reason.SEAL_ALREADY_USED: 409,
    Reason.COHORT_TOO_SMALL: 422,
    Reason.COHORT_TOO_LARGE: 422,
    Reason.DP_POLICY: 422,
    Reason.MODE_DISABLED: 422,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- pydantic models (the HTTP schema) ---


class PublicKeyOut(BaseModel):
    public_key: str = Field(description="raw X25519 public key, base64 (32 bytes)")
    wire_version: int
    seal_suite: str


class CkksContextOut(BaseModel):
    context: str = Field(description="serialised public TenSEAL context, base64")
    size_bytes: int


class HealthOut(BaseModel):
    status: str
    wire_version: int


class SealedEntryIn(BaseModel):
    device_id: str = Field(min_length=1, max_length=256)
    sealed_seed: str = Field(description="80-byte HPKE seal, base64")


MAX_N_PARAMS = 1 << 24  # far above any model's size; a vector this long is 128 MB of masks


class MaskSumIn(BaseModel):
    round_id: int = Field(ge=0, le=wire.MAX_U32)
    cohort_id: int = Field(ge=0, le=wire.MAX_U32)
    model_version: int = Field(ge=0, le=wire.MAX_U32)
    round_seed: str = Field(description="32 bytes, base64")
    n_params: int = Field(ge=1, le=MAX_N_PARAMS)
    params: dict[str, Any]
    entries: list[SealedEntryIn] = Field(max_length=100_000)


class DroppedOut(BaseModel):
    device_id: str
    reason: str


class MaskSumOut(BaseModel):
    round_id: int
    cohort_id: int
    ring_bits: int
    n_coords: int
    mask_sum: str = Field(description="ring elements packed at ring_bits, base64")
    included: list[str]
    dropped: list[DroppedOut]
    noise_std_int: float


class CkksSumIn(BaseModel):
    round_id: int = Field(ge=0, le=wire.MAX_U32)
    cohort_id: int = Field(ge=0, le=wire.MAX_U32)
    model_version: int = Field(ge=0, le=wire.MAX_U32)
    round_seed: str
    n_params: int = Field(ge=1, le=MAX_N_PARAMS)
    params: dict[str, Any]
    entries: list[SealedEntryIn] = Field(max_length=100_000)
    ciphertext: str


class CkksSumOut(BaseModel):
    round_id: int
    cohort_id: int
    values: list[float]
    included: list[str]
    dropped: list[DroppedOut]
    noise_std: float


class Problem(ProblemBody):
    """A refusal, in the problem format the transparency API answers with too, plus two extension
    members: `reason`, the machine-readable `wire.Reason` the aggregator's client reads back, and
    the devices the key holder `dropped` (the aggregator names each in its audit log)."""

    reason: str
    dropped: list[DroppedOut] = Field(default_factory=list)


def _problem(
    status: int, reason: Reason, detail: str, path: str, dropped: tuple[Dropped, ...] = ()
) -> JSONResponse:
    type_, title = (
        UNAUTHORIZED if status == 401 else (problem_type(reason.value), reason.value.replace("_", " "))
    )
    body = Problem(
        type=type_,
        title=title,
        status=status,
        detail=detail,
        instance=path,
        reason=reason.value,
        dropped=[DroppedOut(device_id=d.device_id, reason=d.reason.value) for d in dropped],
    )
    return problem_json(body, {"WWW-Authenticate": CHALLENGE} if status == 401 else None)


class _UnauthorizedError(Exception):
    pass


def _params(d: dict[str, Any]) -> ProtectionParams:
    try:
        return ProtectionParams.from_dict(d)
    except (TypeError, ValueError, OverflowError) as e:  # 10**400 overflowed a float (review 22)
        raise KeyHolderRefusedError(Reason.BAD_REQUEST, f"bad params: {e}") from None


def _decode(text: str, what: str) -> bytes:
    try:
        return _unb64(text)
    except ValueError:
        raise KeyHolderRefusedError(Reason.BAD_REQUEST, f"{what} is not base64") from None


def _entries(items: list[SealedEntryIn]) -> tuple[SealedEntry, ...]:
    return tuple(SealedEntry(e.device_id, _decode(e.sealed_seed, "sealed_seed")) for e in items)


def create_app(
    keyholder: KeyHolder,
    token: str | None = None,
    *,
    token_sha256: bytes | None = None,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The key holder's HTTP API; the aggregator must present the bearer token `token`, or the
    token whose SHA-256 is `token_sha256` (a deployed key holder keeps only the digest, so its
    folder holds no credential anyone could present).

    Token and body size (`max_body_bytes`, default http_gate.KEYHOLDER_MAX_BODY_BYTES) are checked
    before a request body is read (http_gate.RequestGate); the routes check the token again.
    """
    from fedchurn.server.http_gate import KEYHOLDER_MAX_BODY_BYTES, RequestGate

    if (token is None) == (token_sha256 is None):
        raise ValueError("give the bearer token or its SHA-256 digest (one of them)")
    if token is not None and len(token) < 16:
        raise ValueError("use a bearer token of at least 16 characters")
    if token_sha256 is not None and len(token_sha256) != 32:
        raise ValueError("token_sha256 must be a SHA-256 digest (32 bytes)")
    app = FastAPI(title="fedchurn key holder", version=str(wire.WIRE_VERSION))
    bearer = HTTPBearer(auto_error=False)
    expected = token_digest(token) if token is not None else token_sha256
    assert expected is not None

    def authorised(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not presented_matches(creds, expected):
            raise _UnauthorizedError

    @app.exception_handler(_UnauthorizedError)
    async def _unauth(request: Request, __: Exception) -> JSONResponse:
        return _problem(401, Reason.BAD_REQUEST, "missing or wrong bearer token", request.url.path)

    @app.exception_handler(KeyHolderRefusedError)
    async def _refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KeyHolderRefusedError)
        status = STATUS_BY_REASON.get(exc.reason, 400)
        return _problem(status, exc.reason, exc.detail, request.url.path, exc.dropped)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        # Where and what, never the input echoed back nor the server's source location, which
        # the exception's text carries (review 22).
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors)
        return _problem(422, Reason.BAD_REQUEST, where[:2000] or "invalid request", request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _problem(exc.status_code, Reason.BAD_REQUEST, str(exc.detail), request.url.path)

    problems: dict[int | str, dict[str, Any]] = {
        s: {"model": Problem, "content": {PROBLEM_JSON: {}}} for s in (400, 401, 409, 422)
    }

    @app.get(f"{API_PREFIX}/health", response_model=HealthOut)
    def health() -> HealthOut:
        return HealthOut(status="ok", wire_version=wire.WIRE_VERSION)

    @app.get(f"{API_PREFIX}/public-key", response_model=PublicKeyOut)
    def public_key() -> PublicKeyOut:
        return PublicKeyOut(
            public_key=_b64(keyholder.public_key()),
            wire_version=wire.WIRE_VERSION,
            seal_suite="HPKE base: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305",
        )

    def ckks_provisioned() -> None:
        """A key holder provisioned without CKKS answers no CKKS request: asked for its context,
        it would otherwise make a secret one on the spot, for anyone who asks."""
        if not keyholder.has_ckks:
            raise KeyHolderRefusedError(Reason.MODE_DISABLED, "this key holder was provisioned without CKKS")

    @app.get(
        f"{API_PREFIX}/ckks/public-context",
        response_model=CkksContextOut,
        responses=problems,
        dependencies=[Depends(ckks_provisioned)],
    )
    def ckks_context() -> CkksContextOut:
        ctx = keyholder.ckks_public_context()
        return CkksContextOut(context=_b64(ctx), size_bytes=len(ctx))

    @app.post(
        f"{API_PREFIX}/mask-sum",
        response_model=MaskSumOut,
        responses=problems,
        dependencies=[Depends(authorised)],
    )
    def mask_sum(body: MaskSumIn) -> MaskSumOut:
        req = MaskSumRequest(
            round_id=body.round_id,
            cohort_id=body.cohort_id,
            model_version=body.model_version,
            round_seed=_decode(body.round_seed, "round_seed"),
            n_params=body.n_params,
            params=_params(body.params),
            entries=_entries(body.entries),
        )
        try:
            resp = keyholder.mask_sum(req)
        except ValueError as e:
            raise KeyHolderRefusedError(Reason.BAD_REQUEST, str(e)) from None
        bits = req.params.ring_bits
        return MaskSumOut(
            round_id=resp.round_id,
            cohort_id=resp.cohort_id,
            ring_bits=bits,
            n_coords=int(resp.mask_sum.size),
            mask_sum=_b64(wire.pack_bits(resp.mask_sum, bits)),
            included=list(resp.included),
            dropped=[DroppedOut(device_id=d.device_id, reason=d.reason.value) for d in resp.dropped],
            noise_std_int=resp.noise_std_int,
        )

    @app.post(
        f"{API_PREFIX}/ckks/decrypt-sum",
        response_model=CkksSumOut,
        responses=problems,
        dependencies=[Depends(authorised), Depends(ckks_provisioned)],
    )
    def ckks_decrypt_sum(body: CkksSumIn) -> CkksSumOut:
        req = CkksSumRequest(
            round_id=body.round_id,
            cohort_id=body.cohort_id,
            model_version=body.model_version,
            round_seed=_decode(body.round_seed, "round_seed"),
            n_params=body.n_params,
            params=_params(body.params),
            entries=_entries(body.entries),
            ciphertext=_decode(body.ciphertext, "ciphertext"),
        )
        try:
            resp = keyholder.ckks_decrypt_sum(req)
        except ValueError as e:
            raise KeyHolderRefusedError(Reason.BAD_REQUEST, str(e)) from None
        return CkksSumOut(
            round_id=resp.round_id,
            cohort_id=resp.cohort_id,
            values=[float(v) for v in resp.values],
            included=list(resp.included),
            dropped=[DroppedOut(device_id=d.device_id, reason=d.reason.value) for d in resp.dropped],
            noise_std=resp.noise_std,
        )

    app.add_middleware(
        RequestGate,
        max_body_bytes=KEYHOLDER_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes,
        token=None,
        token_sha256=expected,
        protected=lambda method, _path: method == "POST",  # every POST answers, with the token
        challenge=CHALLENGE,
        problem=lambda status, detail, path: bytes(_problem(status, Reason.BAD_REQUEST, detail, path).body),
    )
    return app


class KeyHolderHttpClient:
    """The aggregator's side of the service: same interface as the in-process `KeyHolder`."""

    def __init__(
        self, base_url: str, token: str, client: httpx.Client | None = None, timeout: float = 60.0
    ) -> None:
        self._client = client if client is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._auth = {"Authorization": f"Bearer {token}"}

    def _check(self, r: httpx.Response) -> dict[str, Any]:
        if r.status_code == 200:
            out: dict[str, Any] = r.json()
            return out
        try:
            p = r.json()
            reason = Reason(p["reason"])
            dropped = [Dropped(d["device_id"], Reason(d["reason"])) for d in p.get("dropped", [])]
            detail = str(p.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            reason, dropped, detail = Reason.BAD_REQUEST, [], f"HTTP {r.status_code}: {r.text[:500]}"
        raise KeyHolderRefusedError(reason, detail, dropped)

    def public_key(self) -> bytes:
        return _unb64(self._check(self._client.get(f"{API_PREFIX}/public-key"))["public_key"])

    def ckks_public_context(self) -> bytes:
        return _unb64(self._check(self._client.get(f"{API_PREFIX}/ckks/public-context"))["context"])

    def mask_sum(self, request: MaskSumRequest) -> MaskSumResponse:
        body = {
            "round_id": request.round_id,
            "cohort_id": request.cohort_id,
            "model_version": request.model_version,
            "round_seed": _b64(request.round_seed),
            "n_params": request.n_params,
            "params": request.params.to_dict(),
            "entries": _entries_json(request.entries),
        }
        out = self._check(self._client.post(f"{API_PREFIX}/mask-sum", json=body, headers=self._auth))
        values = wire.unpack_bits(_unb64(out["mask_sum"]), int(out["ring_bits"]), int(out["n_coords"]))
        return MaskSumResponse(
            round_id=int(out["round_id"]),
            cohort_id=int(out["cohort_id"]),
            mask_sum=values,
            included=tuple(out["included"]),
            dropped=tuple(Dropped(d["device_id"], Reason(d["reason"])) for d in out["dropped"]),
            noise_std_int=float(out["noise_std_int"]),
        )

    def ckks_decrypt_sum(self, request: CkksSumRequest) -> CkksSumResponse:
        body = {
            "round_id": request.round_id,
            "cohort_id": request.cohort_id,
            "model_version": request.model_version,
            "round_seed": _b64(request.round_seed),
            "n_params": request.n_params,
            "params": request.params.to_dict(),
            "entries": _entries_json(request.entries),
            "ciphertext": _b64(request.ciphertext),
        }
        out = self._check(self._client.post(f"{API_PREFIX}/ckks/decrypt-sum", json=body, headers=self._auth))
        return CkksSumResponse(
            round_id=int(out["round_id"]),
            cohort_id=int(out["cohort_id"]),
            values=np.asarray(out["values"], dtype=np.float64),
            included=tuple(out["included"]),
            dropped=tuple(Dropped(d["device_id"], Reason(d["reason"])) for d in out["dropped"]),
            noise_std=float(out["noise_std"]),
        )


def _entries_json(entries: tuple[SealedEntry, ...]) -> list[dict[str, str]]:
    return [{"device_id": e.device_id, "sealed_seed": _b64(e.sealed_seed)} for e in entries]
