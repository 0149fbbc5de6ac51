"""The transparency API through HTTP: a real uvicorn process, httpx against it.

The audit database is written by this process with `AuditStore` (as `fedchurn simulate
--audit-db` does) and served by another (`serve --database-url`), so these tests also cover the
acceptance path "a run's rounds and ε appear in the API".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api_store import DEVICE_REFUSALS, dump_tables

from fedchurn.client.signals import SignalThresholds
from fedchurn.server.api_bench import live_server
from fedchurn.server.audit import AuditStore
from fedchurn.server.round_report import RoundReport
from fedchurn.server.run_audit import RunAudit
from fedchurn.server.serve_cli import ServeError, resolve_write_token
from fedchurn.shared.catalogue import CATEGORIES, as_dict
from fedchurn.shared.feature_spec import FEATURES, N_FEATURES, features_fed_by
from fedchurn.shared.model_format import HIGH_RISK
from fedchurn.shared.run_config import RunConfig

TOKEN = "test-token-" + "x" * 16
T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
PROBLEM = "application/problem+json"


def _seed(url: str) -> dict[str, str]:
    """Run A: completed, secagg with DP and a model card. Run B (latest): ckks, still running."""
    s = AuditStore(url)
    a = s.start_run(
        {"seed": 0},
        {
            "mode": "secagg",
            "params": {"ring_bits": 32, "k_min": 5},
            "upload_bytes": 9268,
            "aggregator_learns": "only the cohort sum",
            "keyholder_learns": "only the sum of the cohort's masks",
        },
        {
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "accountant": "rdp",
            "noise_multiplier": 1.1,
            "clip_norm": 1.0,
        },
        {"name": "churn-survival-mlp", "version": "0.3.0", "n_params": 2286},
    )
    for n in (1, 2, 3):
        t = T0 + timedelta(minutes=n)
        s.record_round(
            a,
            n,
            started_at=t,
            finished_at=t + timedelta(seconds=4),
            sampled=10,
            received=9 if n == 2 else 10,
            refused=[{"reason": "update failed the size check", "count": 1}] if n == 2 else [],
            bytes_received=(9 if n == 2 else 10) * 9268,
            protection_mode="secagg",
            dp_noise_std=0.11,
            epsilon_spent=1.25 * n,
            epsilon_aggregator=4.0 * n,
            metrics={"train_loss": 0.5 / n},
        )
    s.finish_run(
        a,
        "completed",
        {"roc_auc": 0.81},
        {
            "training_rounds": 3,
            "metrics": {
                "roc_auc": 0.81,
                "pr_auc": 0.52,
                "lift_top_decile": 3.1,
                "calibration_error": 0.02,
                "concordance": 0.77,
            },
            "baselines": {"logistic_regression": {"roc_auc": 0.79}, "xgboost": {"roc_auc": 0.83}},
            "feature_group_importance": {"purchases": 0.2, "sessions": 0.45, "social_graph": 0.1, "bogus": 9},
        },
    )
    b = s.start_run(
        {"seed": 1},
        {
            "mode": "ckks",
            "params": {"poly_modulus_degree": 4096},
            "upload_bytes": 161848,
            "aggregator_learns": "ciphertexts only",
            "keyholder_learns": "the decrypted cohort sum",
        },
        {
            "target_epsilon": 4.0,
            "delta": 1e-6,
            "accountant": "rdp",
            "noise_multiplier": 1.3,
            "clip_norm": 1.0,
        },
        {"name": "churn-survival-mlp", "version": "0.4.0", "n_params": 2286},
    )
    s.record_round(
        b,
        1,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=9),
        sampled=5,
        received=0,
        refused=[],
        bytes_received=0,
        protection_mode="ckks",
        dp_noise_std=None,
        epsilon_spent=None,
        metrics={},
        skipped=True,
        skip_reason="cohort smaller than k",
    )
    s.close()
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'audit.sqlite'}"
    runs = _seed(url)
    with live_server(url, TOKEN) as base:
        yield base, runs


@pytest.fixture(scope="module")
def base(seeded: tuple[str, dict[str, str]]) -> str:
    return seeded[0]


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, read-only server: nothing recorded yet."""
    url = f"sqlite:///{tmp_path_factory.mktemp('empty') / 'audit.sqlite'}"
    with live_server(url, None) as b:
        yield b


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert (
        body["status"] == status and body["title"] and body["type"] and body["instance"] == r.request.url.path
    )
    return body


# --- catalogue ---------------------------------------------------------------------------------


def test_categories_carry_every_catalogue_field_with_etag(base: str) -> None:
    r = httpx.get(f"{base}/v1/categories")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 17
    assert body["categories"] == json.loads(json.dumps([as_dict(c) for c in CATEGORIES]))
    assert r.headers["cache-control"].startswith("public") and r.headers["etag"].startswith('"')
    again = httpx.get(f"{base}/v1/categories", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == r.headers["etag"]
    weak = httpx.get(f"{base}/v1/categories", headers={"If-None-Match": f'"x", W/{r.headers["etag"]}'})
    assert weak.status_code == 304
    assert httpx.get(f"{base}/v1/categories", headers={"If-None-Match": '"stale"'}).status_code == 200


def test_each_category_alone(base: str) -> None:
    for c in CATEGORIES:
        r = httpx.get(f"{base}/v1/categories/{c.id}")
        assert r.status_code == 200 and r.headers["etag"]
        assert r.json() == json.loads(json.dumps(as_dict(c)))
    body = _problem(httpx.get(f"{base}/v1/categories/location"), 404)
    assert body["type"].endswith("unknown-category") and "sessions" in body["detail"]


def test_feature_specification(base: str) -> None:
    r = httpx.get(f"{base}/v1/features")
    body = r.json()
    assert body["n_features"] == N_FEATURES == len(body["features"])
    assert [f["name"] for f in body["features"]] == [f.name for f in FEATURES]
    assert body["by_category"] == {c.id: list(features_fed_by(c.id)) for c in CATEGORIES}
    assert httpx.get(f"{base}/v1/features", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


# --- derived from the audit log ----------------------------------------------------------------


def test_upload_spec_comes_from_the_latest_run(seeded: tuple[str, dict[str, str]]) -> None:
    base, runs = seeded
    r = httpx.get(f"{base}/v1/upload-spec")
    assert r.headers["cache-control"] == "no-cache"
    u = r.json()
    assert u["available"] and u["run_id"] == runs["b"] and u["protection_mode"] == "ckks"
    assert u["upload_bytes"] == 161848 and u["params"] == {"poly_modulus_degree": 4096}
    # what the parties learn is written for the run's mode and noise (review 21), not copied from it
    assert (
        u["keyholder_learns"].startswith("Only the decrypted sum of a cohort")
        and "1.3" in u["keyholder_learns"]
    )
    assert u["raw_data_leaves_device"] is False
    assert {m["mode"] for m in u["modes"]} == {"secagg", "ckks", "plaintext"}
    a = httpx.get(f"{base}/v1/upload-spec", params={"run_id": runs["a"]}).json()
    assert a["protection_mode"] == "secagg" and a["observed_bytes_per_device"] == 9268
    _problem(httpx.get(f"{base}/v1/upload-spec", params={"run_id": "nope"}), 404)


def test_privacy_budget(seeded: tuple[str, dict[str, str]]) -> None:
    base, runs = seeded
    a = httpx.get(f"{base}/v1/privacy-budget", params={"run_id": runs["a"]}).json()
    assert a["epsilon_spent"] == 3.75 and a["target_epsilon"] == 8.0 and a["remaining_epsilon"] == 4.25
    assert a["epsilon_aggregator_spent"] == 12.0  # against the aggregator: no amplification
    assert "3.75 against outsiders" in a["note"] and "12 against the aggregator" in a["note"]
    assert a["delta"] == 1e-5 and a["accountant"] == "rdp" and a["rounds_counted"] == 3
    b = httpx.get(f"{base}/v1/privacy-budget").json()
    assert b["run_id"] == runs["b"] and b["epsilon_spent"] is None and b["rounds_counted"] == 0
    assert b["epsilon_aggregator_spent"] is None
    fields = httpx.get(f"{base}/openapi.json").json()["components"]["schemas"]["PrivacyBudget"]["properties"]
    assert "outside the aggregator" in fields["epsilon_spent"]["description"]
    assert "no amplification" in fields["epsilon_aggregator_spent"]["description"]


def test_audit_log_filters_and_pages(seeded: tuple[str, dict[str, str]]) -> None:
    base, runs = seeded
    url = f"{base}/v1/audit/rounds"
    everything = httpx.get(url).json()
    assert everything["total"] == 4 and everything["next_offset"] is None
    first = everything["items"][0]
    assert first["run_id"] == runs["a"] and first["round"] == 1 and first["duration_s"] == 4.0
    assert first["started_at"] == "2026-01-05T09:01:00Z"
    page = httpx.get(url, params={"run_id": runs["a"], "limit": 2}).json()
    assert [r["round"] for r in page["items"]] == [1, 2] and page["next_offset"] == 2 and page["total"] == 3
    refused = httpx.get(url, params={"with_refusals": "true"}).json()["items"]
    assert [(r["round"], r["refused_count"], r["refused"]) for r in refused] == [
        (2, 1, [{"reason": "update failed the size check", "count": 1}])
    ]
    assert [r["epsilon_aggregator"] for r in page["items"]] == [4.0, 8.0]
    skipped = httpx.get(url, params={"skipped": "true"}).json()["items"]
    assert [(r["run_id"], r["skip_reason"]) for r in skipped] == [(runs["b"], "cohort smaller than k")]
    assert httpx.get(url, params={"protection_mode": "ckks"}).json()["total"] == 1
    since = httpx.get(url, params={"since": "2026-01-05T09:02:00Z", "run_id": runs["a"]}).json()
    assert [r["round"] for r in since["items"]] == [2, 3]
    body = _problem(httpx.get(url, params={"limit": 0}), 422)
    assert body["errors"][0]["loc"] == ["query", "limit"]
    _problem(httpx.get(url, params={"since": "yesterday"}), 422)


def test_runs(seeded: tuple[str, dict[str, str]]) -> None:
    base, runs = seeded
    page = httpx.get(f"{base}/v1/runs").json()
    assert [r["run_id"] for r in page["items"]] == [runs["b"], runs["a"]]
    a = httpx.get(f"{base}/v1/runs/{runs['a']}").json()
    assert a["status"] == "completed" and a["epsilon_spent"] == 3.75 and a["rounds_recorded"] == 3
    assert a["epsilon_aggregator_spent"] == 12.0 and page["items"][1]["epsilon_aggregator_spent"] == 12.0
    assert page["items"][0]["epsilon_aggregator_spent"] is None  # run B has no ε yet
    _problem(httpx.get(f"{base}/v1/runs/nope"), 404)


def test_model_card(seeded: tuple[str, dict[str, str]]) -> None:
    base, runs = seeded
    card = httpx.get(f"{base}/v1/model-card").json()
    assert card["available"] and card["run_id"] == runs["a"] and card["version"] == "0.3.0"
    assert card["training_rounds"] == 3 and card["n_params"] == 2286
    assert card["metrics"]["roc_auc"] == 0.81 and card["metrics"]["concordance"] == 0.77
    assert card["baselines"]["xgboost"] == {"roc_auc": 0.83}
    assert [g["category"] for g in card["feature_groups"]] == ["sessions", "purchases", "social_graph"]
    assert "App sessions, Purchases, Social graph changes" in card["logic_in_plain_words"]
    assert f"{HIGH_RISK:.2f}" in card["logic_in_plain_words"] and card["high_risk_threshold"] == HIGH_RISK


def test_retention_policy_is_read_from_its_sources(base: str) -> None:
    th = SignalThresholds()
    r = httpx.get(f"{base}/v1/retention-policy")
    assert r.headers["etag"]
    rules = {x["id"]: x for x in r.json()["rules"]}
    assert rules["silence_alert"]["parameters"] == {
        "below_baseline_pct": 20.0,
        "days": th.silence_days,
        "days_during_promotion": th.silence_days_during_promotion,
    }
    assert "for 3 consecutive days (5 during a promotion)" in rules["silence_alert"]["description"]
    assert rules["recall_frequency"]["parameters"] == {
        "max_per_month": 3,
        "day_a": 1,
        "day_b": 7,
        "day_c": 14,
    }
    assert rules["marketing_opt_out"]["parameters"] == {"consecutive_rejections": 3}
    assert rules["high_risk_tier"]["parameters"]["threshold"] == HIGH_RISK
    assert rules["segment_price_sensitive"]["parameters"]["tolerance_days"] == th.price_tolerance_days
    assert rules["segment_content_dependent"]["parameters"]["window_days"] == 7
    assert rules["segment_social"]["parameters"]["friends_lost_pct"] == 15.0
    assert rules["content_below_mean"]["parameters"] == {"ratio_pct": 40.0, "days": th.content_below_days}
    assert rules["silence_alert"]["source"].startswith("fedchurn.client.signals.SignalThresholds")


def test_nothing_recorded_yet_is_said_explicitly(empty: str) -> None:
    u = httpx.get(f"{empty}/v1/upload-spec").json()
    assert u["available"] is False and "No training run has been recorded yet" in u["note"]
    b = httpx.get(f"{empty}/v1/privacy-budget").json()
    assert b["available"] is False and b["epsilon_spent"] is None and b["epsilon_aggregator_spent"] is None
    card = httpx.get(f"{empty}/v1/model-card").json()
    assert card["available"] is False and card["retention_policy"]["rules"] and card["logic_in_plain_words"]
    assert httpx.get(f"{empty}/v1/audit/rounds").json() == {
        "total": 0,
        "offset": 0,
        "limit": 50,
        "next_offset": None,
        "items": [],
    }


# --- writes ------------------------------------------------------------------------------------


def _round_body(n: int) -> dict[str, Any]:
    return {
        "round": n,
        "started_at": "2026-01-05T09:00:00Z",
        "finished_at": "2026-01-05T10:00:03.5+01:00",
        "sampled": 4,
        "received": 4,
        "refused": [],
        "bytes_received": 4 * 9268,
        "protection_mode": "secagg",
        "dp_noise_std": 0.1,
        "epsilon_spent": 0.5 * n,
        "epsilon_aggregator": 2.0 * n,
        "metrics": {"train_loss": 0.3},
    }


def test_writes_need_the_token_and_never_count_a_round_twice(base: str) -> None:
    start = {
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
    no = httpx.post(f"{base}/v1/runs", json=start)
    _problem(no, 401)
    assert no.headers["www-authenticate"].startswith("Bearer")
    bad = httpx.post(f"{base}/v1/runs", json=start, headers={"Authorization": "Bearer wrong"})
    _problem(bad, 401)
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{base}/v1/runs", json=start, headers=auth)
    assert r.status_code == 201, r.text
    rid = r.json()["run_id"]
    assert r.headers["location"] == f"/v1/runs/{rid}"
    ok = httpx.post(f"{base}/v1/runs/{rid}/rounds", json=_round_body(1), headers=auth)
    assert ok.status_code == 201 and ok.json()["duration_s"] == 3.5  # offsets are honoured
    dup = _problem(httpx.post(f"{base}/v1/runs/{rid}/rounds", json=_round_body(1), headers=auth), 409)
    assert dup["type"].endswith("round-already-recorded")
    bad_body = {**_round_body(2), "sampled": True}
    _problem(httpx.post(f"{base}/v1/runs/{rid}/rounds", json=bad_body, headers=auth), 422)
    _problem(httpx.post(f"{base}/v1/runs/nope/rounds", json=_round_body(1), headers=auth), 404)
    fin = httpx.post(f"{base}/v1/runs/{rid}/finish", json={"status": "aborted"}, headers=auth)
    assert fin.status_code == 200 and fin.json()["status"] == "aborted"
    _problem(httpx.post(f"{base}/v1/runs/{rid}/rounds", json=_round_body(2), headers=auth), 409)
    budget = httpx.get(f"{base}/v1/privacy-budget", params={"run_id": rid}).json()
    assert budget["epsilon_spent"] == 0.5 and budget["epsilon_aggregator_spent"] == 2.0


def test_no_device_id_reaches_the_database_or_the_api(tmp_path: Path) -> None:
    """The aggregator names refused devices; the audit log and every answer keep only counts."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    dp = {"target_epsilon": 8.0, "delta": 1e-5, "accountant": "rdp", "noise_multiplier": 1.1, "clip_norm": 1}
    audit = RunAudit(RunConfig(protection="plaintext"), url, None, dp)
    record = {
        "round": 1,
        "sampled": 10,
        "received": 7,
        "refused": DEVICE_REFUSALS,  # as the ServerApp's round record has them
        "bytes_received": 7 * 9144,
        "protection": "plaintext",
        "dp_noise_std": 0.1,
        "epsilon": 0.8,
        "epsilon_aggregator": 3.2,
        "evaluation": {"train_loss": 0.3},
        "trained": 7,
        "started": T0.timestamp(),
        "finished": T0.timestamp() + 4,
        "elapsed": 4.0,
    }
    audit.round(RoundReport.from_json(record))
    assert audit.store is not None
    rid = audit.run_id
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # An older writer over HTTP names the devices too: accepted, counted, never kept.
    body = {**_round_body(2), "protection_mode": "plaintext", "refused": DEVICE_REFUSALS}
    with live_server(url, TOKEN) as base:
        posted = httpx.post(f"{base}/v1/runs/{rid}/rounds", json=body, headers=auth)
        assert posted.status_code == 201, posted.text
        paths = [
            "/v1/audit/rounds",
            f"/v1/audit/rounds?run_id={rid}&with_refusals=true",
            "/v1/runs",
            f"/v1/runs/{rid}",
            "/v1/privacy-budget",
            "/v1/upload-spec",
            "/v1/model-card",
            "/v1/reviewer?lang=en",
            "/v1/reviewer?lang=zh",
        ]
        got = {path: httpx.get(base + path) for path in paths}
    assert all(r.status_code == 200 for r in got.values())
    answers = {"POST rounds": posted.text, **{path: r.text for path, r in got.items()}}
    dump = dump_tables(audit.store)
    audit.store.close()
    for device in ("node-17", "4711/123456"):
        assert device not in dump, device
        leaks = [where for where, text in answers.items() if device in text]
        assert not leaks, (device, leaks)
    counted = [
        {"reason": "no upload (failed or timed out)", "count": 2},
        {"reason": "wrong_round: round 2 != 3", "count": 1},
    ]
    # The ServerApp's record keeps codes only (a detail may carry figures of a sum); an older
    # writer's text over HTTP is counted as it came.
    public = [counted[0], {"reason": "wrong_round", "count": 1}]
    rounds = got["/v1/audit/rounds"].json()["items"]
    assert [(r["round"], r["refused_count"], r["refused"]) for r in rounds] == [
        (1, 3, public),
        (2, 3, counted),
    ]
    assert (rounds[0]["epsilon_spent"], rounds[0]["epsilon_aggregator"]) == (0.8, 3.2)
    assert "no upload (failed or timed out) ×2" in got["/v1/reviewer?lang=en"].text


def test_refusal_counts_over_http(base: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    start = {
        "protection": {"mode": "secagg", "upload_bytes": 780, "aggregator_learns": "the sum"},
        "dp": {},
        "model": {"name": "m", "version": "1", "n_params": 2286},
    }
    rid = httpx.post(f"{base}/v1/runs", json=start, headers=auth).json()["run_id"]
    refused = [{"reason": "late", "count": 3}, {"reason": "bad size"}, {"reason": "late", "count": 2}]
    r = httpx.post(f"{base}/v1/runs/{rid}/rounds", json={**_round_body(1), "refused": refused}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["refused_count"] == 6
    assert r.json()["refused"] == [{"reason": "bad size", "count": 1}, {"reason": "late", "count": 5}]
    for bad in ({"reason": "late", "count": 0}, {"reason": "x" * 2001}, {"reason": "late", "node": "7"}):
        body = {**_round_body(2), "refused": [bad]}
        _problem(httpx.post(f"{base}/v1/runs/{rid}/rounds", json=body, headers=auth), 422)
    schemas = httpx.get(f"{base}/openapi.json").json()["components"]["schemas"]
    assert set(schemas["Refusal"]["properties"]) == {"reason", "count"}
    assert schemas["RefusalIn"]["properties"]["device"]["deprecated"] is True


def test_a_server_without_a_token_is_read_only(empty: str) -> None:
    r = httpx.post(f"{empty}/v1/runs", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert _problem(r, 403)["type"].endswith("read-only")
    assert httpx.get(f"{empty}/v1").json()["writable"] is False


# --- conventions -------------------------------------------------------------------------------


def test_errors_are_problem_json(base: str) -> None:
    _problem(httpx.get(f"{base}/v2/categories"), 404)
    r = httpx.delete(f"{base}/v1/runs")
    _problem(r, 405)
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_openapi_contract(base: str) -> None:
    spec = httpx.get(f"{base}/openapi.json").json()
    paths = spec["paths"]
    assert all(p.startswith("/v1") for p in paths)
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (method, path)
            if path != "/v1/reviewer":
                assert "$ref" in str(op["responses"][ok[0]]["content"]["application/json"]["schema"]), path
            for status, resp in op["responses"].items():
                if status[0] in "45":
                    assert list(resp["content"]) == [PROBLEM], (method, path, status)
    schemas = spec["components"]["schemas"]
    assert schemas["Category"]["examples"][0]["id"] == CATEGORIES[7].id
    assert "HTTPValidationError" not in schemas
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- serve -------------------------------------------------------------------------------------


def test_serve_refuses_to_start_writable_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FEDCHURN_WRITE_TOKEN"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedchurn.server.serve_cli",
            "--writable",
            "--port",
            "1",
            "--database-url",
            f"sqlite:///{tmp_path / 'a.sqlite'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2
    assert (
        "refusing to start writable without a write token" in res.stderr
        and "FEDCHURN_WRITE_TOKEN" in res.stderr
    )
    with pytest.raises(ServeError, match="shorter"):
        resolve_write_token(True, "T", environ={"T": "short"})
    assert resolve_write_token(False, "T", environ={"T": TOKEN}) is None
    assert resolve_write_token(True, "T", environ={"T": TOKEN}) == TOKEN
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    assert resolve_write_token(True, token_file=tf, environ={}) == TOKEN
