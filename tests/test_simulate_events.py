"""`fedchurn simulate --events FILE` on an imported log, through the installed command, with
differential privacy and an audit database, then `fedchurn score` and `fedchurn serve
--database-url URL` on what it left.

The log is a gzipped purchase log under the standard churn protocol (issue 22): a 90-day horizon
after a cutoff, so a one-output model; two simulation nodes (two shards, two Ray actors: the
suite's other simulation runs have one). The reviewer sees the run's rounds and the ε spent after
each one, the feature-mean round included.

One run serves the module (a Flower run costs ~60 s of CPU): the real-log protocol checks and the
DP-audit checks read the same outputs. Another log format and protocol (parquet with its own
offsets, silence-day labels, a 28-day model) is checked in process in `tests/test_real_logs.py`:
the command up to Flower's start, then the simulation ClientApp's rows and training for such a
log (decision 124).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from conftest import VENV_BIN, fedchurn_cli
from event_logs import MAP, purchase_log

from fedchurn.server.app_package import free_port
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.model_format import ModelSpec

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it

TARGET_EPSILON = 8.0
PER_ROUND = 60
ROUNDS = 3


@dataclass(frozen=True)
class LogRun:
    log: Path
    out: Path
    audit_url: str
    stdout: str
    refusal: Result  # the same command without the column mapping (in process: it runs nothing)


@pytest.fixture(scope="module")
def log_run(tmp_path_factory: pytest.TempPathFactory) -> LogRun:
    tmp = tmp_path_factory.mktemp("events")
    log = purchase_log(tmp / "buys.csv.gz")
    out = tmp / "run"
    url = f"sqlite:///{tmp / 'audit.sqlite'}"
    common = [
        "--tz", "60", "--cutoff", "1997-12-31", "--horizon", "90", "--population", "active:90",
        "--activity", "purchases", "--eval-fraction", "0.4", "--rounds", str(ROUNDS),
        "--per-round", str(PER_ROUND), "--eval-per-round", "0", "--no-baselines", "--nodes", "2",
        "--centre-features", "--target-epsilon", str(TARGET_EPSILON), "--audit-db", url, "--out", str(out),
    ]  # fmt: skip
    from typer.testing import CliRunner

    from fedchurn.cli import app

    refusal = CliRunner().invoke(app, ["simulate", "--events", str(log), *common])
    res = fedchurn_cli("simulate", "--events", str(log), "--map", MAP, *common, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return LogRun(log, out, url, res.stdout, refusal)


def test_a_gzipped_purchase_log_runs_the_standard_protocol_with_a_90_day_model(log_run: LogRun) -> None:
    res = log_run.refusal
    # the log's column names differ from the defaults: the mapping is required
    assert res.exit_code == 2, (res.output, res.exception)
    assert "missing columns" in res.stderr
    out = log_run.out
    assert "cutoff 1997-12-31: churn = no activity in the 90 days after" in " ".join(log_run.stdout.split())
    meta = json.loads((out / "model" / "model.json").read_text())
    spec = ModelSpec.from_dict(meta["spec"])
    assert spec.horizon_days == 90 and spec.outputs == 1 and spec.n_features == N_FEATURES  # extended
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["trained"] > 0 for r in rounds)
    fed = json.loads((out / "federated.json").read_text())["final_evaluation"]
    assert fed["devices"] >= 40 and 20 <= fed["positives"] <= fed["devices"] - 20  # answered under DP too
    from typer.testing import CliRunner

    from fedchurn.cli import app

    # in process (typer's runner): the installed command has run above, and this saves a start-up
    args = ["score", "--model", str(out), "--events", str(log_run.log), "--map", MAP, "--tz", "60"]
    scored = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert scored.exit_code == 0, (scored.output, scored.exception)
    assert "within 90 days" in scored.stdout


def test_serve_shows_the_rounds_and_epsilon_of_a_dp_run(log_run: LogRun) -> None:
    url = log_run.audit_url
    doc = json.loads((log_run.out / "federated.json").read_text())
    # the feature mean is divided by the devices summed, not by the count coordinate's noisy sum
    assert doc["feature_mean"]["devices"] == PER_ROUND and len(doc["feature_mean"]["offset"]) == N_FEATURES
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FEDCHURN_WRITE_TOKEN"}
    server = subprocess.Popen(
        [str(VENV_BIN / "fedchurn"), "serve", "--port", str(port), "--database-url", url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "fedchurn serve did not come up"
            time.sleep(0.2)
        rounds = httpx.get(f"{base}/v1/audit/rounds").json()
        budget = httpx.get(f"{base}/v1/privacy-budget").json()
    finally:
        server.terminate()
        server.wait(timeout=10)
    # --centre-features: round 0 measured the feature mean through the same noisy secure sum
    assert rounds["total"] == ROUNDS + 1 and [r["round"] for r in rounds["items"]] == list(range(ROUNDS + 1))
    assert rounds["items"][0]["metrics"] == {"feature_mean_round": 1.0}
    eps = [r["epsilon_spent"] for r in rounds["items"]]
    assert eps[0] > 0 and eps == sorted(set(eps)) and eps[-1] <= TARGET_EPSILON  # grows each round
    assert all(r["dp_noise_std"] > 0 for r in rounds["items"])
    assert budget["epsilon_spent"] == eps[-1] and budget["target_epsilon"] == TARGET_EPSILON
    assert "RDP" in budget["accountant"] and budget["noise_multiplier"] > 0
    assert "one cohort per round" in budget["mechanism"] and budget["epsilon_aggregator_spent"] > eps[-1]
    privacy = doc["privacy"]  # the run's own report: both figures, the release's shape
    assert privacy["epsilon_outsiders"] == eps[-1] and privacy["release"]["cohorts_per_round"] == 1
    assert 0 < privacy["epsilon_pld"] <= privacy["epsilon_outsiders"]
