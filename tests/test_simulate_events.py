"""`fedchurn simulate --events FILE` on an imported log, with differential privacy and an audit
database, then `fedchurn serve --database-url URL`: the run trains on the log's own activity and
horizon, and the reviewer sees its rounds and the ε spent after each one, the feature-mean round
included.

One run serves the module (a Flower run costs ~40 s of a loaded core): the imported-log checks and
the DP-audit checks read the same outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from conftest import VENV_BIN, fedchurn_cli

from fedchurn.server.app_package import free_port
from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.simulations.population import generate_population
from fedchurn.simulations.scenario import load_scenario

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it

TARGET_EPSILON = 8.0
PER_ROUND = 20


def _log(path: Path, devices: int) -> Path:
    pop = generate_population(devices, 3, load_scenario("default"), 150)
    ev = pop.events
    cats = [CATEGORIES[int(c)] for c in ev["cat"]]
    table = pa.table(
        {
            "uid": [f"user-{int(d):03d}" for d in ev["device"]],
            "time": np.asarray(ev["ts"]),
            "offset": np.asarray(ev["tz_min"]),
            "kind": [c.id for c in cats],
            "what": [c.actions[int(a)].name for c, a in zip(cats, ev["action"], strict=True)],
            "amount": np.asarray(ev["value"]),
        }
    )
    pq.write_table(table, path)
    return path


@dataclass(frozen=True)
class LogRun:
    out: Path
    audit_url: str
    refusal: Result  # the same command without the column mapping (in process: it runs nothing)


@pytest.fixture(scope="module")
def log_run(tmp_path_factory: pytest.TempPathFactory) -> LogRun:
    tmp = tmp_path_factory.mktemp("events")
    log = _log(tmp / "log.parquet", 700)
    out = tmp / "run"
    url = f"sqlite:///{tmp / 'audit.sqlite'}"
    common = "--activity sessions,purchases --horizon 28 --silence-days 28 --rounds 2"
    common += f" --per-round {PER_ROUND} --eval-per-round 0 --eval-fraction 0.5 --no-baselines --nodes 1"
    common += f" --centre-features --target-epsilon {TARGET_EPSILON} --audit-db {url} --out {out}"
    from typer.testing import CliRunner

    from fedchurn.cli import app

    refusal = CliRunner().invoke(app, ["simulate", "--events", str(log), *common.split()])
    mapping = "user=uid,timestamp=time,tz_offset=offset,category=kind,action=what,value=amount"
    res = fedchurn_cli("simulate", "--events", str(log), "--map", mapping, *common.split(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return LogRun(out, url, refusal)


def test_simulate_on_an_imported_log_with_its_own_activity_and_horizon(log_run: LogRun) -> None:
    res = log_run.refusal
    # the log's column names differ from the defaults: the mapping is required
    assert res.exit_code == 2, (res.output, res.exception)
    assert "missing columns" in res.stderr
    out = log_run.out
    cfg = json.loads((out / "config.json").read_text())["run"]
    assert cfg["devices"] == 700 and cfg["horizon"] == 28 and cfg["activity"] == "sessions,purchases"
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["trained"] > 0 for r in rounds)
    assert (out / "model" / "params.npy").exists()


def test_serve_shows_the_rounds_and_epsilon_of_a_dp_run(log_run: LogRun) -> None:
    url = log_run.audit_url
    doc = json.loads((log_run.out / "federated.json").read_text())
    assert doc["final_evaluation"].get("devices", 0) > 0  # held-out histograms are answered under DP too
    # the feature mean is divided by the devices summed, not by the count coordinate's noisy sum
    assert doc["feature_mean"]["devices"] == PER_ROUND and len(doc["feature_mean"]["offset"]) == 127
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
    assert rounds["total"] == 3 and [r["round"] for r in rounds["items"]] == [0, 1, 2]
    assert rounds["items"][0]["metrics"] == {"feature_mean_round": 1.0}
    eps = [r["epsilon_spent"] for r in rounds["items"]]
    assert 0 < eps[0] < eps[1] < eps[2] <= TARGET_EPSILON  # ε grows round by round, within the target
    assert all(r["dp_noise_std"] > 0 for r in rounds["items"])
    assert budget["epsilon_spent"] == eps[2] and budget["target_epsilon"] == TARGET_EPSILON
    assert "RDP" in budget["accountant"] and budget["noise_multiplier"] > 0
    assert "one cohort per round" in budget["mechanism"] and budget["epsilon_aggregator_spent"] > eps[2]
    privacy = doc["privacy"]  # the run's own report: both figures, the release's shape
    assert privacy["epsilon_outsiders"] == eps[2] and privacy["release"]["cohorts_per_round"] == 1
    assert 0 < privacy["epsilon_pld"] <= privacy["epsilon_outsiders"]
