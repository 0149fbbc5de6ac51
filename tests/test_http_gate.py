"""The request gate of both HTTP services (security review, findings 8 and 12).

The apps are called at the ASGI level with a `receive` that records every time it is awaited, so
"the body was never read" is observed, not inferred. The attack tests import nothing that the code
before the gate lacked, so they also run against it (and fail there: the body was read, the 503
leaked); the tests of the gate's own edges import `http_gate` inside the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message

from fedchurn.server.api import create_app as create_api
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.keyholder_service import create_app as create_keyholder_app
from fedchurn.shared.protection import DEFAULT

TOKEN = "gate-test-token-" + "x" * 16
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
PROBLEM = "application/problem+json"
MiB = 1024 * 1024
STREAM_CEILING = 96 * MiB  # more than either service's default cap (API 32 MiB, key holder 64 MiB)
ATTACK_LENGTH = "30000000"  # the review's 30 MB unauthenticated body

START: dict[str, Any] = {
    "config": {"seed": 9},
    "protection": {"mode": "secagg", "upload_bytes": 9268, "aggregator_learns": "the sum"},
    "dp": {
        "target_epsilon": 2.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "noise_multiplier": 1.0,
        "clip_norm": 1,
    },
    "model": {"name": "m", "version": "1", "n_params": 2286},
}


def _mask_sum_body() -> dict[str, Any]:
    """A well-formed mask-sum request: the key holder answers it itself (a cohort too small)."""
    return {
        "round_id": 3,
        "cohort_id": 1,
        "model_version": 1,
        "round_seed": base64.b64encode(bytes(32)).decode(),
        "n_params": 2286,
        "params": DEFAULT.to_dict(),
        "entries": [],
    }


# --- ASGI plumbing -----------------------------------------------------------------------------


class Receive:
    """An ASGI `receive` serving `chunks` as one streamed body, counting what the app took."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._done = False
        self.awaited = 0
        self.bytes = 0

    async def __call__(self) -> dict[str, Any]:
        self.awaited += 1
        if self._done:
            return {"type": "http.disconnect"}
        chunk = next(self._chunks, None)
        if chunk is None:
            self._done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        self.bytes += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}


def padded(body: bytes, total: int) -> Iterator[bytes]:
    """A valid JSON body followed by whitespace (still valid JSON) up to `total` bytes, in 1 MiB chunks."""
    yield body
    pad, sent = b" " * MiB, len(body)
    while sent < total:
        yield pad
        sent += len(pad)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int) -> dict[str, Any]:
        assert self.status == status, self.body[:500]
        assert self.headers["content-type"].startswith(PROBLEM)
        out: dict[str, Any] = json.loads(self.body)
        assert out["status"] == status and out["type"] and out["title"] and out["detail"]
        return out


def call(app: ASGIApp, method: str, path: str, headers: dict[str, str], receive: Receive) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Answer(
        start["status"],
        {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


async def _http(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, **kw)


def http(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    return asyncio.run(_http(app, method, path, **kw))


# --- the two services --------------------------------------------------------------------------


@dataclass
class Service:
    app: FastAPI
    path: str  # a protected route
    body: bytes  # a valid request to it
    calls: list[object]  # what reached the service behind the HTTP layer


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    app = create_api(f"sqlite:///{tmp_path / 'audit.sqlite'}", TOKEN)
    store = app.state.store
    calls: list[object] = []
    real = store.start_run

    def spy(*args: Any, **kw: Any) -> str:
        calls.append(args)
        rid: str = real(*args, **kw)
        return rid

    monkeypatch.setattr(store, "start_run", spy)
    yield Service(app, "/v1/runs", json.dumps(START).encode(), calls)
    store.close()


@pytest.fixture
def keyholder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    kh = KeyHolder.generate(k_min=10)
    calls: list[object] = []
    for name in ("mask_sum", "ckks_decrypt_sum"):
        real = getattr(kh, name)

        def spy(request: object, real: Any = real) -> Any:
            calls.append(request)
            return real(request)

        monkeypatch.setattr(kh, name, spy)
    yield Service(
        create_keyholder_app(kh, TOKEN), "/v1/mask-sum", json.dumps(_mask_sum_body()).encode(), calls
    )
    kh.close()


@pytest.fixture(params=["api", "keyholder"])
def service(request: pytest.FixtureRequest) -> Service:
    out: Service = request.getfixturevalue(request.param)
    return out


def test_both_services_refuse_in_one_problem_format(api: Service, keyholder: Service) -> None:
    """The API and the key holder share no code paths but `problem_details`: a refusal of either,
    whether the request gate's (no token) or a route's (a body that fails validation), carries the
    same RFC 9457 members, type and challenge."""
    bodies = []
    for svc in (api, keyholder):
        gate = http(svc.app, "POST", svc.path, json={})
        assert gate.status_code == 401 and gate.headers["content-type"].startswith(PROBLEM)
        assert gate.headers["www-authenticate"] == 'Bearer realm="fedchurn"'
        route = http(svc.app, "POST", svc.path, json={"round_id": -1}, headers=AUTH)
        assert route.status_code == 422 and route.headers["content-type"].startswith(PROBLEM)
        bodies.append((gate.json(), route.json()))
    for api_body, kh_body in zip(*bodies, strict=True):
        rfc = {"type", "title", "status", "detail", "instance"}
        assert rfc <= api_body.keys() and rfc <= kh_body.keys()
        assert api_body["status"] == kh_body["status"]
        assert api_body["type"].startswith("urn:fedchurn:problem:")
        assert kh_body["type"].startswith("urn:fedchurn:problem:")
    assert bodies[0][0]["type"] == bodies[1][0]["type"] == "urn:fedchurn:problem:unauthorized"
    assert api.calls == [] and keyholder.calls == []


# --- finding 8: nothing is read before the token and the size are checked ----------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", "Bearer"])
def test_attack_unauthenticated_body_is_never_read_by_the_api(api: Service, auth: str | None) -> None:
    headers = {**JSON, "content-length": ATTACK_LENGTH, **({"authorization": auth} if auth else {})}
    receive = Receive([api.body])
    answer = call(api.app, "POST", "/v1/runs", headers, receive)
    assert receive.awaited == 0, "the API read the body of an unauthenticated write before its 401"
    problem = answer.problem(401)
    assert answer.headers["www-authenticate"].startswith('Bearer realm="fedchurn"')
    assert problem["instance"] == "/v1/runs" and problem["type"] == "urn:fedchurn:problem:unauthorized"
    assert api.calls == []


@pytest.mark.parametrize("path", ["/v1/mask-sum", "/v1/ckks/decrypt-sum"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}"])
def test_attack_unauthenticated_body_is_never_read_by_the_keyholder(
    keyholder: Service, path: str, auth: str | None
) -> None:
    headers = {**JSON, "content-length": ATTACK_LENGTH, **({"authorization": auth} if auth else {})}
    receive = Receive([keyholder.body])
    answer = call(keyholder.app, "POST", path, headers, receive)
    assert receive.awaited == 0, "the key holder read the body of an unauthenticated request before its 401"
    problem = answer.problem(401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert problem["reason"] == "bad_request"
    assert keyholder.calls == []


def test_a_read_only_api_refuses_writes_without_reading_the_body(tmp_path: Path) -> None:
    app = create_api(f"sqlite:///{tmp_path / 'audit.sqlite'}", None)
    receive = Receive([json.dumps(START).encode()])
    answer = call(app, "POST", "/v1/runs", {**JSON, **AUTH, "content-length": ATTACK_LENGTH}, receive)
    assert receive.awaited == 0
    assert answer.problem(403)["type"] == "urn:fedchurn:problem:read-only"
    assert app.state.store.list_runs().total == 0
    app.state.store.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_attack_oversized_body_is_refused_before_it_is_read(service: Service, framing: str) -> None:
    if framing == "content-length":  # declared too large: refused from the headers alone
        receive = Receive([service.body])
        headers = {**JSON, **AUTH, "content-length": str(10**12)}
        answer = call(service.app, "POST", service.path, headers, receive)
        assert receive.awaited == 0, "the body of a request declared too large was read"
    else:  # no Content-Length: a valid request padded with whitespace past the cap
        receive = Receive(padded(service.body, STREAM_CEILING))
        answer = call(service.app, "POST", service.path, {**JSON, **AUTH}, receive)
        assert service.calls == [], "the service acted on an oversized streamed body"
        assert receive.bytes < STREAM_CEILING, "the oversized stream was read to its end"
    assert service.calls == []
    answer.problem(413)


# --- finding 12: database errors stay in the operator's log ------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/runs"), ("GET", "/v1/audit/rounds"), ("GET", "/v1/model-card"), ("POST", "/v1/runs")],
)
def test_attack_database_errors_do_not_leak_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    db = tmp_path / "audit.sqlite"
    app = create_api(f"sqlite:///{db}", TOKEN)
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE audit_rounds; DROP TABLE audit_runs;")
    conn.close()
    caplog.set_level(logging.ERROR)
    r = http(app, method, path, headers=AUTH, json=START if method == "POST" else None)
    app.state.store.close()
    text = r.text.lower()
    for internal in ("no such table", "audit_runs", "audit_rounds", "select", "sqlite", "operationalerror"):
        assert internal not in text, f"the 503 leaks {internal!r}: {r.text}"
    assert str(tmp_path).lower() not in text and "audit.sqlite" not in text
    problem = Answer(r.status_code, dict(r.headers), r.content).problem(503)
    assert problem["type"] == "urn:fedchurn:problem:database"
    assert problem["title"] == "Audit database unavailable"
    assert "unavailable" in problem["detail"]
    logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("no such table" in rec.getMessage() for rec in logged), "the cause is not in the log"


# --- what the gate lets through ------------------------------------------------------------------


def test_legitimate_requests_pass_the_gate(api: Service, keyholder: Service) -> None:
    # The API: authorised writes of normal size, one of them streamed without Content-Length.
    r = http(api.app, "POST", "/v1/runs", json=START, headers=AUTH)
    assert r.status_code == 201, r.text
    rid = r.json()["run_id"]
    refused = [{"device": f"node-{i}", "reason": "wrong_round: round 2 != 3"} for i in range(2000)]
    round_body = {
        "round": 1,
        "started_at": "2026-01-05T09:00:00Z",
        "finished_at": "2026-01-05T09:00:03Z",
        "sampled": 2100,
        "received": 100,
        "refused": refused,
        "bytes_received": 100 * 780,
        "protection_mode": "secagg",
    }
    r = http(api.app, "POST", f"/v1/runs/{rid}/rounds", json=round_body, headers=AUTH)
    assert r.status_code == 201 and r.json()["refused_count"] == 2000, r.text

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"status": ', b'"completed", "model_card": {"version": "1"}}'):
            yield part

    r = http(api.app, "POST", f"/v1/runs/{rid}/finish", content=chunks(), headers={**AUTH, **JSON})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert http(api.app, "GET", "/v1/runs").json()["total"] == 1  # reads stay public
    # The key holder: an authorised mask-sum reaches it, with Content-Length or streamed.
    r = http(keyholder.app, "POST", "/v1/mask-sum", json=_mask_sum_body(), headers=AUTH)
    assert len(keyholder.calls) == 1, r.text
    refusal = r.json()["reason"]  # the key holder's own answer to an empty cohort
    receive = Receive(padded(keyholder.body, 3 * MiB))
    answer = call(keyholder.app, "POST", "/v1/mask-sum", {**AUTH, **JSON}, receive)
    assert len(keyholder.calls) == 2 and json.loads(answer.body)["reason"] == refusal
    assert http(keyholder.app, "GET", "/v1/public-key").status_code == 200


# --- the gate's edges (import the new module) -----------------------------------------------------


def _echo_app(seen: list[bytes | None]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.append(None)
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def _gate(seen: list[bytes | None], cap: int, token: str | None = TOKEN) -> Any:
    from fedchurn.server.http_gate import RequestGate

    def problem(status: int, detail: str, path: str) -> bytes:
        return json.dumps({"type": "about:blank", "title": "t", "status": status, "detail": detail}).encode()

    return RequestGate(
        _echo_app(seen), max_body_bytes=cap, token=token, protected=lambda m, _p: m == "POST", problem=problem
    )


def test_the_cap_is_exact_for_declared_and_streamed_bodies() -> None:
    seen: list[bytes | None] = []
    gate = _gate(seen, 100)
    ok = call(gate, "POST", "/x", {**AUTH, "content-length": "100"}, Receive([b"a" * 100]))
    assert ok.status == 200 and ok.body == b"a" * 100
    receive = Receive([b"a" * 101])
    call(gate, "POST", "/x", {**AUTH, "content-length": "101"}, receive).problem(413)
    assert receive.awaited == 0
    ok = call(gate, "POST", "/x", AUTH, Receive([b"a" * 60, b"b" * 40]))
    assert ok.status == 200 and ok.body == b"a" * 60 + b"b" * 40
    call(gate, "POST", "/x", AUTH, Receive([b"a" * 60, b"b" * 41, b"c"])).problem(413)
    assert seen == [b"a" * 100, b"a" * 60 + b"b" * 40, None]  # the cut body was never delivered
    # The cap applies to reads too; they need no token.
    assert call(gate, "GET", "/x", {}, Receive([b"a" * 100])).status == 200
    call(gate, "GET", "/x", {}, Receive([b"a" * 101])).problem(413)


@pytest.mark.parametrize("lengths", [["abc"], ["-1"], ["1e3"], ["10", "11"], ["0x10"], [""]])
def test_a_malformed_content_length_is_refused_unread(lengths: list[str]) -> None:
    from fedchurn.server.http_gate import RequestGate

    gate: RequestGate = _gate([], 100)
    receive = Receive([b"{}"])
    headers = [(b"authorization", AUTH["authorization"].encode())]
    headers += [(b"content-length", v.encode()) for v in lengths]
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(gate(scope, receive, send))
    assert sent[0]["status"] == 400 and receive.awaited == 0


def test_tokens_schemes_and_overrides() -> None:
    seen: list[bytes | None] = []
    gate = _gate(seen, 100)
    lower = {"authorization": f"bearer {TOKEN}"}
    assert call(gate, "POST", "/x", lower, Receive([b"{}"])).status == 200  # the scheme is case-insensitive
    wrong = call(gate, "POST", "/x", {"authorization": f"Bearer {TOKEN}x"}, Receive([b"{}"]))
    wrong.problem(401)
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    missing = call(gate, "POST", "/x", {}, Receive([b"{}"]))
    missing.problem(401)
    assert missing.headers["www-authenticate"] == "Bearer"
    call(_gate(seen, 100, token=None), "POST", "/x", AUTH, Receive([b"{}"])).problem(403)
    assert seen == [b"{}"]
    # A service that keeps only the token's SHA-256 digest.
    from fedchurn.server.http_gate import RequestGate

    hashed = RequestGate(
        _echo_app(seen),
        max_body_bytes=100,
        token=None,
        token_sha256=hashlib.sha256(TOKEN.encode()).digest(),
        protected=lambda m, _p: True,
        problem=lambda s, d, p: b"{}",
    )
    assert call(hashed, "POST", "/x", AUTH, Receive([b"[]"])).status == 200
    assert call(hashed, "POST", "/x", {"authorization": "Bearer x"}, Receive([b"[]"])).status == 401
    assert seen == [b"{}", b"[]"]
    # create_app takes a cap override on both services.
    kh = KeyHolder.generate()
    small = create_keyholder_app(kh, TOKEN, max_body_bytes=10)
    big = json.dumps(_mask_sum_body())
    call(small, "POST", "/v1/mask-sum", {**AUTH, "content-length": str(len(big))}, Receive([])).problem(413)
    kh.close()


def test_the_default_caps_hold_the_largest_legitimate_bodies() -> None:
    from fedchurn.server.api import MAX_WRITE_BODY_BYTES
    from fedchurn.server.http_gate import KEYHOLDER_MAX_BODY_BYTES

    entry = {"device_id": "d" * 256, "sealed_seed": base64.b64encode(bytes(80)).decode()}
    entry["payload_digest"] = base64.b64encode(bytes(32)).decode()
    cohort = {**_mask_sum_body(), "entries": [entry] * 100_000}
    assert len(json.dumps(cohort, separators=(",", ":"))) < KEYHOLDER_MAX_BODY_BYTES
    refused = [{"device": str(2**63), "reason": "wrong_model_version: model 4294967295"}] * 100_000
    assert len(json.dumps({"refused": refused}, separators=(",", ":"))) < MAX_WRITE_BODY_BYTES
    assert max(KEYHOLDER_MAX_BODY_BYTES, MAX_WRITE_BODY_BYTES) < STREAM_CEILING
