"""`fedchurn simulate --audit-db URL` with differential privacy, then `fedchurn serve --database-url URL`:
the reviewer sees the run's rounds and the ε spent after each one, the feature-mean round included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import VENV_BIN, RunCli

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it

TARGET_EPSILON = 8.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_shows_the_rounds_and_epsilon_of_a_dp_run(tmp_path: Path, run_cli: RunCli) -> None:
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    args = "--devices 60 --rounds 2 --per-round 20 --eval-per-round 0 --eval-fraction 0.3 --no-baselines"
    res = run_cli(
        "simulate",
        *args.split(),
        "--centre-features",
        "--target-epsilon",
        str(TARGET_EPSILON),
        "--audit-db",
        url,
        "--out",
        str(tmp_path / "run"),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((tmp_path / "run" / "federated.json").read_text())
    assert doc["final_evaluation"].get("devices", 0) > 0  # held-out histograms are answered under DP too
    # the feature mean is divided by the devices summed, not by the count coordinate's noisy sum
    assert doc["feature_mean"]["devices"] == 20 and len(doc["feature_mean"]["offset"]) == 127
    port = _free_port()
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
