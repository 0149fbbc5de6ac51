"""Every value a run cannot use is refused before anything starts, naming its option and what it
accepts (issue 24, item 1): before, `--scenario nosuch`, `--strategy fedprox`, `--rounds 0` or a
`--per-round` above the pool ran Flower and ended "successfully" 20-40 s later."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli
from rich.console import Console

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.simulate import simulate

BAD = [
    ({"num_server_rounds": 0}, "--rounds: 0 is not allowed; expected a whole number of rounds >= 1"),
    ({"scenario": "nosuch"}, "--scenario: unknown scenario 'nosuch'; known: clean, default, stress"),
    ({"strategy": "fedprox"}, "--strategy: 'fedprox' is not allowed; expected fedavg or fedadam"),
    ({"protection": "foo"}, "--protection: 'foo' is not allowed; expected secagg, ckks or plaintext"),
    ({"per_round": 5000}, "--per-round 5000 is above the 78 training devices (100 devices, 0.2 held out)"),
    (
        {"eval_fraction": 1.5},
        "--eval-fraction: 1.5 is not allowed; expected a share strictly between 0 and 1",
    ),
    ({"local_epochs": -1}, "--local-epochs: -1 is not allowed"),
    ({"delta": 2.0}, "--delta: 2.0 is not allowed"),
    ({"k_min": 1}, "--k-min: 1 is not allowed"),
    (
        {"server_lr_schedule": "linear"},
        "--server-lr-schedule: 'linear' is not allowed; expected constant or cosine",
    ),
    ({"horizon": 14, "silence_days": 30}, "--silence-days: 30 days"),
    ({"features": "all"}, "--features: 'all': expected auto, base or extended"),
]


@pytest.mark.parametrize(("change", "says"), BAD)
def test_a_bad_value_is_refused_before_anything_is_written(
    change: dict[str, Any], says: str, tmp_path: Path
) -> None:
    cfg = replace(RunConfig(devices=100, per_round=10, sampling_source="seeded"), **change)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        simulate(cfg, Console(quiet=True), out, baselines=False)
    assert says in str(info.value)
    assert not out.exists()  # nothing started, nothing written


def test_the_cli_names_the_option(tmp_path: Path, run_cli: RunCli) -> None:
    res = run_cli("simulate", "--devices", "100", "--rounds", "0", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "--rounds: 0 is not allowed" in res.stderr
    assert not (tmp_path / "run").exists()
