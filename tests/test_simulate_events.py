"""`fedchurn simulate --events FILE`: train on an imported log instead of the synthetic population."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunCli

from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.simulations.population import generate_population
from fedchurn.simulations.scenario import load_scenario

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it


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


def test_simulate_on_an_imported_log_with_its_own_activity_and_horizon(
    tmp_path: Path, run_cli: RunCli
) -> None:
    log = _log(tmp_path / "log.parquet", 700)
    out = tmp_path / "run"
    common = "--activity sessions,purchases --horizon 28 --silence-days 28 --rounds 2 --per-round 20"
    common += f" --eval-per-round 0 --eval-fraction 0.5 --no-baselines --out {out}"
    res = run_cli("simulate", "--events", str(log), *common.split(), timeout=600)
    assert res.returncode == 2, "the log's column names differ from the defaults: the mapping is required"
    assert "missing columns" in res.stderr
    mapping = "user=uid,timestamp=time,tz_offset=offset,category=kind,action=what,value=amount"
    res = run_cli("simulate", "--events", str(log), "--map", mapping, *common.split(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = json.loads((out / "config.json").read_text())["run"]
    assert cfg["devices"] == 700 and cfg["horizon"] == 28 and cfg["activity"] == "sessions,purchases"
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["trained"] > 0 for r in rounds)
    assert (out / "model" / "params.npy").exists()
