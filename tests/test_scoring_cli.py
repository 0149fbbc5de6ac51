from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import RunCli

from fedchurn.client.importer import read_log
from fedchurn.client.pipeline import device_features
from fedchurn.server.run_output import RunOutput
from fedchurn.shared.events import local_day
from fedchurn.shared.model_format import churn_probability, init_params

LOG = (
    "user_id,timestamp,category,action,value\n"
    "alice,2026-01-01T09:00:00+01:00,sessions,session,300\n"
    "alice,2026-01-09T21:00:00+01:00,sessions,session,120\n"
    "bob,2026-01-01T09:00:00Z,sessions,session,60\n"
    "bob,2026-01-02T09:00:00Z,purchases,purchase,15\n"
)


def test_score_prints_each_device_risk(tmp_path: Path, run_cli: RunCli) -> None:
    params = init_params(4) + np.random.default_rng(0).normal(0, 0.05, 2286).astype(np.float32)
    RunOutput(tmp_path / "run").write_model(params, version=7)
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("score", "--model", str(tmp_path / "run"), "--events", str(log), "--json", check=True)
    doc = json.loads(res.stdout)
    assert doc["model_version"] == 7
    by_user = {d["user"]: d for d in doc["devices"]}
    assert set(by_user) == {"alice", "bob"}
    per_user = read_log(log)
    log_today = max(int(local_day(ev["ts"], ev["tz_min"]).max()) for ev in per_user.values())
    for user, events in per_user.items():
        # every user is scored as of the log's last day (bob, silent since Jan 2, on his silence)
        feats = device_features(events, today=log_today).features[-1]
        want = float(churn_probability(params, feats)[()])
        got = by_user[user]
        assert abs(got["probability"] - want) < 1e-9
        assert got["score"] == round(100 * want) and got["tier"] in {"low", "medium", "high"}
        assert len(got["survival"]) == 14 and got["survival"] == sorted(got["survival"], reverse=True)
    assert by_user["alice"]["date"] == by_user["bob"]["date"] == "2026-01-09"


def test_score_refuses_a_folder_without_a_model(tmp_path: Path, run_cli: RunCli) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = run_cli("score", "--model", str(tmp_path), "--events", str(log))
    assert res.returncode == 2 and "no model.json" in res.stderr
