"""What the transparency API and the audit store refuse, and how: a round record that contradicts
itself, a query the route does not understand or that can match nothing, credentials of the
wrong kind, and the limits docs/api.md states. Each refusal is a problem naming the field or
parameter, before anything is stored or looked up; the API runs in-process (TestClient)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import API_TOKEN
from fastapi.testclient import TestClient
from test_api_store import DP, MODEL, PROTECTION, _round

from fedchurn.server.api.constants import MAX_WRITE_BODY_BYTES
from fedchurn.server.api.deps import MAX_OFFSET
from fedchurn.server.audit import MAX_PAGE, AuditDatabaseError, AuditStore, InvalidRecordError, make_engine
from fedchurn.server.bearer import bearer_refusal
from fedchurn.server.round_report import NO_UPLOAD, UNEXPECTED_DEVICE, Refusal, RoundReport
from fedchurn.server.run_audit import RunAudit
from fedchurn.shared.run_config import RunConfig

TOKEN = API_TOKEN  # the `api` fixture's (conftest)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
START: dict[str, Any] = {
    "protection": {"mode": "secagg", "upload_bytes": 780, "aggregator_learns": "the sum"},
    "dp": {},
    "model": {"name": "m", "version": "1", "n_params": 2286},
}
ROUND: dict[str, Any] = {
    "round": 1,
    "started_at": "2026-01-05T09:00:00Z",
    "finished_at": "2026-01-05T09:00:04Z",
    "sampled": 10,
    "received": 9,
    "refused": [{"reason": "no upload (failed, refused or timed out)", "count": 1}],
    "bytes_received": 9 * 780,
    "protection_mode": "secagg",
}
# What the reviewer sent, each with a valid token, and each answered 201 before.
CONTRADICTIONS = [
    ("received", {"received": 99}),
    ("finished_at", {"finished_at": "2026-01-05T08:59:56Z"}),  # stored as duration_s -4.0
    ("protection_mode", {"protection_mode": "ckks"}),  # in a secagg run
    ("skip_reason", {"skip_reason": "cohort below k"}),  # on a round that says it was not skipped
]


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["instance"] == r.request.url.path
    return body


def _run(client: TestClient) -> str:
    r = client.post("/v1/runs", json=START, headers=AUTH)
    assert r.status_code == 201, r.text
    run_id: str = r.json()["run_id"]
    return run_id


# --- finding 1: a round that contradicts itself is not published --------------------------------


@pytest.mark.parametrize(("field", "over"), CONTRADICTIONS)
def test_a_round_that_contradicts_itself_is_refused_naming_the_field(
    api: tuple[TestClient, AuditStore], field: str, over: dict[str, Any]
) -> None:
    client, store = api
    rid = _run(client)
    body = _problem(client.post(f"/v1/runs/{rid}/rounds", json={**ROUND, **over}, headers=AUTH), 422)
    assert body["errors"][0]["loc"] == ["body", field] and field in body["detail"]
    assert store.list_rounds(rid).total == 0 and client.get("/v1/audit/rounds").json()["total"] == 0
    ok = client.post(f"/v1/runs/{rid}/rounds", json=ROUND, headers=AUTH)  # nothing half-recorded
    assert ok.status_code == 201 and ok.json()["duration_s"] == 4.0


@pytest.mark.parametrize(("field", "over"), CONTRADICTIONS)
def test_the_store_refuses_the_same_rounds_from_the_aggregator(
    tmp_path: Path, field: str, over: dict[str, Any]
) -> None:
    """The aggregator writes in-process (`AuditStore.record_round`): the same contract."""
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    with pytest.raises(InvalidRecordError, match=field):
        _round(store, rid, 1, **over)
    assert store.list_rounds(rid).total == 0
    store.close()


def test_rounds_as_the_aggregator_builds_them_still_pass(tmp_path: Path) -> None:
    """Counts that may differ do: refusals beyond the cohort (evaluation devices without an upload,
    devices a node was not asked for), a skipped round, the feature-mean round 0, a zero duration,
    every sampled device received, times as Unix seconds."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    audit = RunAudit(RunConfig(protection="plaintext"), url, None, {"accountant": "none"})
    t0 = 1_767_603_600.0
    common: dict[str, Any] = {"protection": "plaintext", "elapsed": 1.0, "sampled": 10}
    reports = [
        RoundReport(round=0, started=t0, finished=t0, received=10, trained=10, **common),
        RoundReport(
            round=1,
            started=t0,
            finished=t0 + 4,
            received=10,
            trained=10,
            refused=tuple(Refusal(f"7/{d}", NO_UPLOAD) for d in range(40))  # evaluation devices
            + tuple(Refusal(f"7/{d}", UNEXPECTED_DEVICE) for d in range(100, 120)),
            **common,
        ),
        RoundReport(
            round=2, started=t0 + 5, finished=t0 + 9, received=0, trained=0, skip_reason="no cohort", **common
        ),
    ]
    for report in reports:
        audit.round(report)
    assert audit.store is not None
    rounds = audit.store.list_rounds(audit.run_id).items
    assert [(r.round, r.received, sum(x["count"] for x in r.refused), r.skipped) for r in rounds] == [
        (0, 10, 0, False),
        (1, 10, 60, False),
        (2, 0, 0, True),
    ]
    audit.store.close()


# --- finding 2: a query the route does not understand, or that matches nothing --------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/audit/rounds?protection=ckks", "protection"),
        ("/v1/audit/rounds?protection_mode=ckks&minround=3", "minround"),
        ("/v1/runs?page=2", "page"),
        ("/v1/model-card?run_id=abc", "run_id"),  # the card is the latest completed run's, always
        ("/v1/privacy-budget?runid=abc", "runid"),
        ("/v1/categories?lang=zh", "lang"),
        ("/v1/reviewer?language=zh", "language"),
    ],
)
def test_an_unknown_query_parameter_is_named(
    api: tuple[TestClient, AuditStore], path: str, name: str
) -> None:
    client, _ = api
    body = _problem(client.get(path), 422)
    assert [e["loc"] for e in body["errors"]] == [["query", name]]
    assert f"unknown query parameter {name!r}" in body["detail"]


def test_writes_and_repeated_parameters_are_refused_too(api: tuple[TestClient, AuditStore]) -> None:
    client, store = api
    rid = _run(client)
    body = _problem(client.post(f"/v1/runs/{rid}/rounds?dry_run=true", json=ROUND, headers=AUTH), 422)
    assert body["errors"][0]["loc"] == ["query", "dry_run"] and store.list_rounds(rid).total == 0
    body = _problem(client.get("/v1/audit/rounds?limit=1&limit=500"), 422)
    assert body["errors"][0]["loc"] == ["query", "limit"] and "2 times" in body["detail"]
    known = client.get(f"/v1/audit/rounds?run_id={rid}&protection_mode=ckks&min_round=2&max_round=2")
    assert known.status_code == 200 and known.json()["total"] == 0
    assert client.get("/v1/categories").status_code == 200
    _problem(client.get("/v1/upload-spec?run_id=nope"), 404)  # a known parameter: looked up


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (("min_round", "5"), ("max_round", "2")),
        (("since", "2026-01-05T10:00:00Z"), ("until", "2026-01-05T09:00:00Z")),
        (("since", "2026-01-05T10:00:00Z"), ("until", "2026-01-05T11:00:00+01:00")),  # until excludes
    ],
)
def test_a_range_that_holds_nothing_names_both_parameters(
    api: tuple[TestClient, AuditStore], low: tuple[str, str], high: tuple[str, str]
) -> None:
    client, _ = api
    body = _problem(client.get("/v1/audit/rounds", params=dict([low, high])), 422)
    assert [e["loc"] for e in body["errors"]] == [["query", low[0]], ["query", high[0]]]
    assert low[0] in body["detail"] and high[0] in body["detail"]


def test_ranges_that_can_match_are_answered(api: tuple[TestClient, AuditStore]) -> None:
    client, store = api
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    for n in (1, 2, 3):
        _round(store, rid, n)
    one = client.get("/v1/audit/rounds", params={"min_round": 2, "max_round": 2}).json()
    assert [r["round"] for r in one["items"]] == [2]
    window = {"since": "2026-01-05T09:02:00Z", "until": "2026-01-05T09:03:04Z"}  # round 3 ends then
    assert [r["round"] for r in client.get("/v1/audit/rounds", params=window).json()["items"]] == [2]


# --- finding 3: what a 401 says ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "challenge", "says"),
    [
        (None, 'Bearer realm="fedchurn"', "a bearer token is required"),
        ("Basic dXNlcjpwYXNzd29yZA==", 'Bearer realm="fedchurn"', "Authorization: Basic is not accepted"),
        ("Bearer", 'Bearer realm="fedchurn", error="invalid_request"', "carries no token"),
        ("Bearer wrong-token", 'Bearer realm="fedchurn", error="invalid_token"', "not valid"),
    ],
)
def test_a_write_without_the_right_bearer_token_is_told_what_is_missing(
    api: tuple[TestClient, AuditStore], authorization: str | None, challenge: str, says: str
) -> None:
    """RFC 6750 section 3.1: no error code when no bearer credentials were sent (Basic is none)."""
    client, store = api
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = client.post("/v1/runs", json=START, headers=headers)
    body = _problem(r, 401)
    assert r.headers["www-authenticate"] == challenge and says in body["detail"]
    assert store.list_runs().total == 0
    # The routes' own check (behind the gate) answers the same.
    assert bearer_refusal(authorization, 'Bearer realm="fedchurn"') == (body["detail"], challenge)


# --- findings 4 and 5: the limits and the database URL in docs/api.md -------------------------------


def test_the_documented_limits_are_the_enforced_ones(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    doc = API_DOC.read_text(encoding="utf-8")
    assert MAX_WRITE_BODY_BYTES == 32 * 1024 * 1024 and "32 MiB (33,554,432 bytes)" in doc
    assert MAX_OFFSET == 10**9 and "`offset` (0 to 1,000,000,000)" in doc
    assert MAX_PAGE == 500 and "`limit` (1 to 500" in doc
    assert client.get("/v1/runs", params={"offset": MAX_OFFSET}).status_code == 200
    body = _problem(client.get("/v1/runs", params={"offset": MAX_OFFSET + 1}), 422)
    assert body["errors"][0]["loc"] == ["query", "offset"]


def test_no_password_is_shown_on_a_command_line() -> None:
    doc = API_DOC.read_text(encoding="utf-8")
    assert not re.search(r"\w+\+?\w*://[^/\s:@]+:[^/\s@]+@", doc), "a database URL with a password"
    assert "FEDCHURN_DATABASE_URL=postgresql+psycopg://" in doc
    with pytest.raises(AuditDatabaseError) as e:
        make_engine("postgresql+nosuchdriver://fedchurn@db/fedchurn")
    assert "$FEDCHURN_DATABASE_URL" in str(e.value) and "user:password@" not in str(e.value)
