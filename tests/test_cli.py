from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RunCli

from fedchurn.shared.feature_spec import FEATURE_NAMES
from fedchurn.shared.protection import DEFAULT, max_secagg_coords
from fedchurn.shared.run_config import RunConfig

LOG = (
    "user_id,timestamp,category,action,value\n"
    "alice,2026-01-01T09:00:00+01:00,sessions,session,300\n"
    "alice,2026-01-02T21:00:00+01:00,sessions,session,120\n"
    "alice,2026-01-04T08:00:00+01:00,purchases,purchase,20\n"
    "bob,2026-01-01T09:00:00Z,sessions,session,60\n"
)


def test_features_json_prints_one_vector_per_day(tmp_path: Path, run_cli: RunCli) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("features", "--events", str(log), "--user", "alice", "--json", "--signals", check=True)
    doc = json.loads(res.stdout)
    assert doc["feature_names"] == list(FEATURE_NAMES)
    assert [d["date"] for d in doc["days"]] == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    assert all(len(d["features"]) == len(FEATURE_NAMES) for d in doc["days"])
    assert set(doc["days"][0]["signals"]) >= {"silence_alert", "content_below_mean"}


def test_features_table_shows_each_value_with_its_transform_and_in_natural_units(
    tmp_path: Path, run_cli: RunCli
) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("features", "--events", str(log), "--user", "alice", check=True, columns=100)
    rows = {
        line.split("│")[1].strip(): line.split("│")[2:5] for line in res.stdout.splitlines() if "│" in line
    }
    model_input, transform, natural = (c.strip() for c in rows["sessions.count_7d"])
    assert (model_input, transform, natural) == ("1.099", "log1p", "2")  # two sessions in 7 days
    model_input, transform, natural = (c.strip() for c in rows["rfm.monetary_28d"])
    assert transform == "log1p" and natural == "20"  # the purchase amount, as spent
    assert rows["feature_usage.trend"][1].strip() == "none"


def test_features_asks_which_user_when_there_are_several(tmp_path: Path, run_cli: RunCli) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("features", "--events", str(log))
    assert res.returncode == 2 and "--user" in res.stderr


def test_import_reports_the_bad_row_and_writes_nothing(tmp_path: Path, run_cli: RunCli) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG + "bob,2026-01-02T09:00:00Z,sessions,sesion,60\n")
    res = run_cli("import", "--events", str(log), "--stores", str(tmp_path / "stores"))
    assert res.returncode == 2
    assert "row 5 (line 6)" in res.stderr and "'sesion' is not an action" in res.stderr
    assert not list((tmp_path / "stores").glob("*.sqlite"))
    log.write_text(LOG)
    ok = run_cli("import", "--events", str(log), "--stores", str(tmp_path / "stores"), check=True)
    assert "imported 4 rows for 2 devices" in ok.stdout


def test_simulate_refuses_uploads_the_aggregator_would_refuse_before_starting_flower(
    tmp_path: Path, run_cli: RunCli
) -> None:
    out = tmp_path / "run"
    fit = max_secagg_coords(DEFAULT.max_upload_bytes, RunConfig().ring_bits)
    res = run_cli("simulate", "--devices", "20", "--coords-per-round", str(fit + 1), "--out", str(out))
    said = res.stderr + res.stdout
    assert res.returncode != 0
    assert f"coords-per-round {fit + 1}" in said and f"at most {fit}" in said
    assert not out.exists()  # nothing was written or started


@pytest.mark.parametrize("value", ["-1", "abc", "inf"])
def test_simulate_names_a_bad_target_epsilon_before_starting(
    value: str, tmp_path: Path, run_cli: RunCli
) -> None:
    out = tmp_path / "run"
    res = run_cli("simulate", "--devices", "20", "--target-epsilon", value, "--out", str(out))
    assert res.returncode != 0
    assert f"--target-epsilon must be a positive number or none, got '{value}'" in res.stderr + res.stdout
    assert not out.exists()


def test_version_names_the_package_wire_format_and_flower(run_cli: RunCli) -> None:
    from importlib.metadata import version

    from fedchurn.shared.wire import WIRE_VERSION

    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    assert (
        res.stdout.strip()
        == f"fedchurn {version('fedchurn')} (wire format {WIRE_VERSION}, flwr {version('flwr')})"
    )


def test_the_results_table_shows_each_auc_with_its_interval_and_the_sample() -> None:
    from rich.console import Console

    from fedchurn.cli import _print_summary

    con = Console(record=True, width=200)
    fed = {"roc_auc": 0.8612, "roc_auc_ci95": [0.8101, 0.9123], "devices": 1003.0, "positives": 90.0}
    summary = {"federated": {"final_evaluation": fed}, "baselines": {"logreg": {"roc_auc": 0.853}}}
    _print_summary(summary, con)
    text = con.export_text()
    assert "95% interval" in text
    federated = next(line for line in text.splitlines() if "federated" in line)
    assert "0.861" in federated and "0.810–0.912" in federated
    logreg = next(line for line in text.splitlines() if "logistic regression" in line)
    assert "0.853" in logreg and "–" not in logreg  # no interval known: shown as "-", not made up
    assert "1,003 held-out devices, 90 churned within the horizon" in text
    assert "no differential privacy" in text  # said, not left out


def test_results_rows_are_whole_at_80_columns() -> None:
    from rich.console import Console

    from fedchurn.cli import _print_summary

    con = Console(record=True, width=80)
    m = {"roc_auc": 0.8612, "roc_auc_ci95": [0.8101, 0.9123], "pr_auc": 0.61, "lift_top_decile": 5.2}
    m |= {"calibration_error": 0.021, "concordance": 0.855}
    base = {"federated_checked_centrally": dict(m), "logreg": dict(m)}
    _print_summary({"federated": {"final_evaluation": m}, "baselines": base}, con)
    text = con.export_text()
    assert "…" not in text  # nothing cut
    first_column = " ".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert "federated, scored centrally" in first_column and "logistic regression (central)" in first_column
    assert text.count("0.810–0.912") == 3


def test_a_dp_run_prints_both_epsilons_and_the_release() -> None:
    from rich.console import Console

    from fedchurn.cli import _print_summary

    con = Console(record=True, width=300)
    privacy = {
        "dp": True,
        "epsilon_outsiders": 0.99993,
        "epsilon_pld": 0.7101,
        "epsilon_aggregator": 61.2,
        "delta": 1e-7,
        "noise_multiplier": 2.061,
        "rounds_charged": 201,
        "release": {"expected_devices_per_round": 2000.0, "cohorts_per_round": 1},
    }
    fed = {"final_evaluation": {"roc_auc": 0.857}, "privacy": privacy}
    _print_summary({"federated": fed, "wall_seconds": 397.2, "peak_memory_mb": 2900.4}, con)
    text = " ".join(con.export_text().split())
    assert "ε = 1.000 against outsiders (PLD 0.710), 61.2 against the aggregator, δ = 1e-07" in text
    assert "z = 2.061, 2,000 devices per round (one cohort, noise once), 201 rounds charged" in text
    assert "wall 397 s, peak memory 2,900 MB" in text


def test_serve_refuses_a_database_file_that_does_not_exist(tmp_path: Path, run_cli: RunCli) -> None:
    missing = tmp_path / "typo.sqlite"
    res = run_cli("serve", "--port", "9", "--database-url", f"sqlite:///{missing}", timeout=60)
    assert res.returncode != 0
    said = " ".join((res.stderr + res.stdout).split())
    assert f"--database-url names {missing}, which does not exist" in said and "--create" in said
    assert not missing.exists()  # nothing created, nothing served
    bad = run_cli("serve", "--database-url", "not a url", timeout=60)
    assert bad.returncode != 0 and "is not a database URL" in bad.stderr + bad.stdout


def test_every_command_that_reads_a_log_names_an_empty_file(tmp_path: Path, run_cli: RunCli) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for args in (
        ("import", "--events", str(empty), "--stores", str(tmp_path / "stores")),
        ("features", "--events", str(empty)),
        ("simulate", "--events", str(empty), "--out", str(tmp_path / "run")),
    ):
        res = run_cli(*args, timeout=120)
        assert res.returncode != 0, args
        assert f"{empty}: the file is empty" in " ".join((res.stderr + res.stdout).split()), args
    assert not (tmp_path / "run").exists()


def test_every_command_names_the_log_with_events(run_cli: RunCli) -> None:
    """import, features, score and simulate all take the log as --events."""
    for command in ("import", "features", "score", "simulate"):
        res = run_cli(command, "--help")
        assert "--events" in res.stdout, command


def test_one_day_of_history_is_one_day(tmp_path: Path, run_cli: RunCli) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("features", "--events", str(log), "--user", "bob", check=True)
    assert "(1 day of history)" in res.stdout
    res = run_cli("features", "--events", str(log), "--user", "alice", check=True)
    assert "(4 days of history)" in res.stdout


def test_every_command_lets_idle_openmp_threads_sleep_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set before torch, scikit-learn or XGBoost load, and inherited by the Flower processes: beside
    another job on 2 cores, spinning threads made the baselines 1.5-1.8x slower (decision 131). A
    value the user set is kept."""
    import os

    from typer.testing import CliRunner

    from fedchurn.cli import app

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert CliRunner().invoke(app, ["categories", "--json"]).exit_code == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert CliRunner().invoke(app, ["categories", "--json"]).exit_code == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
