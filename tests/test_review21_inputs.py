"""Review 21: what the transparency API and `fedchurn population` did with inputs a reviewer sent.

API (in-process, TestClient): an unknown run_id is 404 on every route that takes one; a final
metric is a finite number or null; the upload specification measures training rounds only and
says what this run's parties learn; a run without DP has no δ. Population (typer's CliRunner):
every output folder is checked and every input file read before any work, errors go to stderr,
and options that a subcommand would ignore are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api_inputs import AUTH, _problem
from typer.testing import CliRunner

from fedchurn.server.audit import AuditStore, InvalidRecordError
from fedchurn.server.run_audit import RunAudit, protection_record
from fedchurn.shared.run_config import RunConfig

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
START: dict[str, Any] = {
    "protection": {"mode": "secagg", "upload_bytes": 780, "aggregator_learns": "the noisy sum"},
    "dp": {"accountant": "none", "noise_multiplier": 0.0, "delta": 1e-5},
    "model": {"name": "m", "version": "1", "n_params": 2286},
}


def _round(n: int, received: int, bytes_per_device: int, **over: Any) -> dict[str, Any]:
    return {
        "round": n,
        "started_at": f"2026-01-05T09:0{n}:00Z",
        "finished_at": f"2026-01-05T09:0{n}:04Z",
        "sampled": received,
        "received": received,
        "bytes_received": received * bytes_per_device,
        "protection_mode": "secagg",
        **over,
    }


def _run(client: TestClient, **over: Any) -> str:
    r = client.post("/v1/runs", json={**START, **over}, headers=AUTH)
    assert r.status_code == 201, r.text
    run_id: str = r.json()["run_id"]
    return run_id


# --- finding 1: an unknown run_id is 404 everywhere ---------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit/rounds?run_id=nosuch",
        "/v1/upload-spec?run_id=nosuch",
        "/v1/privacy-budget?run_id=nosuch",
        "/v1/runs/nosuch",
    ],
)
def test_an_unknown_run_id_is_a_404_on_every_read_route(
    api: tuple[TestClient, AuditStore], path: str
) -> None:
    client, _ = api
    _run(client)  # there is a run; just not this one
    body = _problem(client.get(path), 404)
    assert "nosuch" in body["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/runs/nosuch/rounds", _round(1, 9, 780)),
        ("/v1/runs/nosuch/finish", {"status": "completed"}),
    ],
)
def test_an_unknown_run_id_is_a_404_on_the_writes_too(
    api: tuple[TestClient, AuditStore], path: str, body: dict[str, Any]
) -> None:
    client, _ = api
    assert "nosuch" in _problem(client.post(path, json=body, headers=AUTH), 404)["detail"]


def test_a_known_run_id_still_filters_the_audit_log(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    rid = _run(client)
    assert client.post(f"/v1/runs/{rid}/rounds", json=_round(1, 9, 780), headers=AUTH).status_code == 201
    other = _run(client)
    assert client.get(f"/v1/audit/rounds?run_id={rid}").json()["total"] == 1
    assert client.get(f"/v1/audit/rounds?run_id={other}").json()["total"] == 0  # known, no rounds yet


# --- finding 2: final metrics are finite numbers or null ----------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"final_metrics": {"roc_auc": "high"}}, "roc_auc"),
        ({"final_metrics": {"roc_auc": True}}, "roc_auc"),
        ({"final_metrics": {"pr_auc": [0.5, 0.6]}}, "pr_auc"),
        ({"final_metrics": {"roc_auc": 0.8}, "model_card": {"metrics": {"roc_auc": "high"}}}, "roc_auc"),
        ({"model_card": {"metrics": "good"}}, "metrics"),
    ],
)
def test_a_metric_that_is_not_a_number_is_refused_naming_it(
    api: tuple[TestClient, AuditStore], body: dict[str, Any], named: str
) -> None:
    client, store = api
    rid = _run(client)
    problem = _problem(
        client.post(f"/v1/runs/{rid}/finish", json={"status": "completed", **body}, headers=AUTH), 422
    )
    assert named in json.dumps(problem["errors"]) and named in problem["detail"]
    run = store.get_run(rid)
    assert run is not None and run.status == "running" and run.final_metrics is None  # nothing stored


def test_a_non_finite_metric_is_refused(api: tuple[TestClient, AuditStore]) -> None:
    """Python's JSON parser (and so the API's) reads NaN and Infinity; the card would show null."""
    client, _ = api
    rid = _run(client)
    for bad in ("NaN", "Infinity", "-Infinity"):
        r = client.post(
            f"/v1/runs/{rid}/finish",
            content=f'{{"status": "completed", "final_metrics": {{"roc_auc": {bad}}}}}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert "roc_auc" in _problem(r, 422)["detail"]


def test_numbers_and_nulls_pass_and_the_card_shows_them(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    rid = _run(client)
    metrics = {"roc_auc": 0.81, "devices": 400, "concordance": None}
    r = client.post(
        f"/v1/runs/{rid}/finish", json={"status": "completed", "final_metrics": metrics}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    card = client.get("/v1/model-card").json()
    assert card["metrics"]["roc_auc"] == 0.81 and card["metrics"]["devices"] == 400


def test_the_aggregators_own_final_metrics_still_pass(tmp_path: Path) -> None:
    """`RunAudit.finish` as the aggregator calls it: numpy numbers, a NaN lift (stored as null), and
    the list-valued metrics (calibration curve, intervals), which it leaves out."""
    import numpy as np

    cfg = RunConfig(protection="plaintext")
    audit = RunAudit(cfg, f"sqlite:///{tmp_path / 'audit.sqlite'}", None, {"accountant": "none"})
    final = {
        "devices": np.float64(400.0),
        "roc_auc": np.float64(0.8),
        "lift_top_decile": float("nan"),
        "roc_auc_ci95": [0.7, 0.9],
        "calib_predicted": [0.1, 0.2],
    }
    audit.finish(cfg, final, np.zeros(cfg.model_spec().n_params, dtype=np.float32))
    assert audit.store is not None
    run = audit.store.get_run(audit.run_id)
    assert run is not None and run.status == "completed"
    assert run.final_metrics == {"devices": 400.0, "roc_auc": 0.8, "lift_top_decile": None}
    with pytest.raises(InvalidRecordError, match="roc_auc"):
        rid = audit.store.start_run({}, START["protection"], {}, START["model"])
        audit.store.finish_run(rid, "completed", {"roc_auc": "high"}, {})
    audit.store.close()


# --- finding 3: the upload specification ---------------------------------------------------------


def test_observed_bytes_are_measured_over_training_rounds_only(api: tuple[TestClient, AuditStore]) -> None:
    """Round 0 (the feature-mean round of centre-features) uploads less; averaging it in gave 582 B
    against a declared 780 B."""
    client, _ = api
    rid = _run(client)
    for rec in (
        _round(0, 10, 300, metrics={"feature_mean_round": 1.0}),
        _round(1, 10, 794),
        _round(2, 0, 0, skipped=True, skip_reason="cohort below k", sampled=3),
    ):
        assert client.post(f"/v1/runs/{rid}/rounds", json=rec, headers=AUTH).status_code == 201
    spec = client.get("/v1/upload-spec").json()
    assert spec["upload_bytes"] == 780 and spec["observed_bytes_per_device"] == 794.0


def test_no_training_round_yet_means_no_measured_size(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    rid = _run(client)
    r = client.post(f"/v1/runs/{rid}/rounds", json=_round(0, 10, 300), headers=AUTH)
    assert r.status_code == 201
    assert client.get("/v1/upload-spec").json()["observed_bytes_per_device"] is None


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_what_each_party_learns_follows_the_runs_scheme_and_noise(tmp_path: Path, lang: str) -> None:
    """The aggregator's generic declaration said "the noisy sum" with noise multiplier 0 and
    mentioned CKKS in a secagg run; the API now says what this run's parties learn."""
    from fedchurn.server.api.views import build_upload_spec

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    cfg = RunConfig(protection="secagg")
    model = {"name": "m", "version": "1", "n_params": 2286}
    declared = protection_record(cfg, cfg.train_protection(0.0))
    assert "noisy" in declared["aggregator_learns"] and "CKKS" in declared["keyholder_learns"]  # the old text
    exact = store.start_run({}, declared, {"accountant": "none", "noise_multiplier": 0.0}, model)
    noised = store.start_run({}, declared, {"accountant": "rdp", "noise_multiplier": 1.1}, model)
    ckks = store.start_run(
        {}, {**declared, "mode": "ckks"}, {"accountant": "rdp", "noise_multiplier": 1.1}, model
    )
    plain = store.start_run({}, protection_record(cfg, None), {"accountant": "none"}, model)
    spec = {rid: build_upload_spec(store, rid, lang) for rid in (exact, noised, ckks, plain)}  # type: ignore[arg-type]
    for s in spec.values():
        assert "CKKS" not in (s.keyholder_learns or "") and "noisy sum" not in (s.aggregator_learns or "")
        assert s.aggregator_learns and s.keyholder_learns
    if lang == "en":
        assert "no DP noise" in spec[exact].aggregator_learns  # type: ignore[operator]
        assert "exact" in spec[exact].aggregator_learns  # type: ignore[operator]
        assert "DP noise" in spec[noised].aggregator_learns and "1.1" in spec[noised].aggregator_learns  # type: ignore[operator]
        assert "before it adds the DP noise" in spec[ckks].keyholder_learns  # type: ignore[operator]
        assert "no key holder" in spec[plain].keyholder_learns  # type: ignore[operator]
        assert "in the clear" in spec[plain].aggregator_learns  # type: ignore[operator]
    else:
        assert "噪声乘数 0" in spec[exact].aggregator_learns  # type: ignore[operator]
        assert "1.1" in spec[noised].keyholder_learns  # type: ignore[operator]
    assert "aggregator_learns" not in spec[exact].extra  # the declaration stays in /v1/runs/{id}
    run = store.get_run(exact)
    assert run is not None and run.protection["aggregator_learns"] == declared["aggregator_learns"]
    store.close()


# --- finding 4: a run without DP has no δ --------------------------------------------------------


def test_a_run_without_dp_reports_no_delta(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    _run(client)  # accountant none, noise multiplier 0, delta 1e-5 from the configuration's default
    budget = client.get("/v1/privacy-budget").json()
    assert budget["available"] is True and budget["epsilon_spent"] is None and budget["delta"] is None


def test_a_run_with_dp_keeps_its_delta(api: tuple[TestClient, AuditStore]) -> None:
    client, _ = api
    _run(client, dp={"accountant": "rdp", "noise_multiplier": 1.1, "delta": 1e-5, "target_epsilon": 8.0})
    assert client.get("/v1/privacy-budget").json()["delta"] == 1e-5
    # exact training but noised evaluations: the evaluations' ε is at that δ
    _run(client, dp={"accountant": "none", "delta": 1e-5, "evaluation_noise_multiplier": 2.0})
    assert client.get("/v1/privacy-budget").json()["delta"] == 1e-5


def test_docs_describe_the_upload_spec_as_served() -> None:
    doc = API_DOC.read_text(encoding="utf-8")
    assert "training rounds" in doc and '"observed_bytes_per_device": 582.4' not in doc
    assert '"aggregator_learns": "only the cohort sum"' not in doc


# --- findings 5 and 6: `fedchurn population` ------------------------------------------------------


@pytest.fixture(scope="module")
def pop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedchurn.simulations.population import generate_population, write_population
    from fedchurn.simulations.scenario import load_scenario

    out = tmp_path_factory.mktemp("pop1")
    write_population(generate_population(50, 0, load_scenario("default"), days=40), out)
    return out


@pytest.fixture
def pop(pop_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the population, to damage."""
    import shutil

    return Path(shutil.copytree(pop_dir, tmp_path / "pop1"))


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any generation or report computation fails the test: the refusals come before any work."""
    from fedchurn.simulations import population, population_report

    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(population, "generate_population", forbidden)
    monkeypatch.setattr(population_report, "compute_calibration", forbidden)


def _population(*args: str) -> Any:
    from fedchurn.simulations.population_cli import app

    return CliRunner().invoke(app, list(args))


def _refused(res: Any, *named: str) -> str:
    """Exit 2, no traceback, the error on stderr (not stdout) naming each of `named`."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    err = " ".join(res.stderr.split())
    assert err.startswith("error:") and "Traceback" not in res.output and "error:" not in res.stdout
    for word in named:
        assert word in err, (word, err)
    return err


def test_report_out_that_is_a_file_is_refused_before_the_report(
    pop: Path, tmp_path: Path, no_work: None
) -> None:
    log = tmp_path / "log.csv"
    log.write_text("a,b\n")
    _refused(_population("report", str(pop), "--out", str(log)), "--out", str(log), "is a file")
    _refused(_population("report", str(pop), "--out", str(log / "sub")), "--out", f"{log} is a file")
    (pop / "report").write_text("not a folder")  # the default POP_DIR/report
    _refused(_population("report", str(pop)), "--out", str(pop / "report"), "is a file")
    assert log.read_text() == "a,b\n"


def test_population_with_report_checks_the_report_folder_before_generating(
    tmp_path: Path, no_work: None
) -> None:
    out = tmp_path / "pop2"
    out.mkdir()
    (out / "report").write_text("a file")
    res = _population("-n", "50", "-d", "60", "--out", str(out), "--report")
    _refused(res, "--report", str(out / "report"), "is a file")
    assert not (out / "events.parquet").exists()


@pytest.mark.parametrize(
    ("name", "content", "named"),
    [
        ("events.parquet", b"garbage, not parquet", "not a readable Parquet file"),
        ("truth.parquet", b"", "not a readable Parquet file"),
        ("scenario.json", b"{", "not valid JSON"),
        ("scenario.json", b"[1, 2]", "expected a JSON object"),
        ("scenario.json", b"\xff\xfe", "not UTF-8"),
        ("scenario.json", b'{"days": 40}', "start_day"),
    ],
)
def test_an_unreadable_population_file_is_named(
    pop: Path, no_work: None, name: str, content: bytes, named: str
) -> None:
    (pop / name).write_bytes(content)
    _refused(_population("report", str(pop)), str(pop / name), named)
    assert not (pop / "report").exists()


def test_events_with_the_wrong_columns_are_named(pop: Path, no_work: None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"device": [1, 2], "when": ["a", "b"]}), pop / "events.parquet")
    _refused(_population("report", str(pop)), str(pop / "events.parquet"), "missing column", "ts", "category")
    pq.write_table(
        pa.table({c: ["x"] for c in ("device", "ts", "tz_min", "category", "action", "value")}),
        pop / "events.parquet",
    )
    _refused(
        _population("report", str(pop)), str(pop / "events.parquet"), "wrong column type", "device is string"
    )


def test_a_missing_folder_or_file_is_named_on_stderr(tmp_path: Path, pop: Path, no_work: None) -> None:
    _refused(_population("report", str(tmp_path / "nosuch")), str(tmp_path / "nosuch"), "no such folder")
    (pop / "truth.parquet").unlink()
    _refused(_population("report", str(pop)), "not a population folder", "truth.parquet")
    _refused(_population("--scenario", "nope", "--out", str(tmp_path / "x")), "nope")


def test_options_a_subcommand_would_ignore_are_refused(pop: Path, no_work: None) -> None:
    err = _refused(
        _population("--devices", "5", "--out", "zzz", "report", str(pop)), "--devices", "--out", "report"
    )
    assert "--seed" not in err  # only what was given
    assert not Path("zzz").exists() and not (pop / "report").exists()


def test_the_report_still_runs_on_a_good_population(pop: Path, tmp_path: Path) -> None:
    res = _population("report", str(pop), "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "calibration.json").is_file() and not res.stderr


# --- findings 7 and 8: README ----------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_says_centre_features_is_on_by_default() -> None:
    text = " ".join(line.lstrip("# ").strip() for line in README.read_text(encoding="utf-8").splitlines())
    assert "--centre-features, on by default" in text and "--no-centre-features" in text


def test_readme_cdnow_score_line_runs_as_written() -> None:
    """The score line had `--map "…"`; it now maps the log exactly as the simulate line does."""
    import re
    import shlex

    block = README.read_text(encoding="utf-8").split("## Real purchase logs", 1)[1].split("```")[1]
    commands = block.replace("\\\n", " ").splitlines()
    simulate = next(shlex.split(c) for c in commands if c.startswith("fedchurn simulate"))
    score = next(shlex.split(c) for c in commands if c.startswith("fedchurn score"))
    assert "…" not in " ".join(score) and not re.search(r"\.\.\.", " ".join(score))
    assert score[score.index("--map") + 1] == simulate[simulate.index("--map") + 1]
