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
    # decision 140: settings under which the CKKS key holder refuses every request of an upload
    ({"protection": "ckks", "clip_norm": 1000.0}, "the key holder would refuse every training upload"),
    ({"protection": "ckks", "target_epsilon": 1.0}, "would refuse every feature-mean upload"),
    (
        {"protection": "ckks", "target_epsilon": 4.0, "per_round": 70},
        "--per-round 70: under differential privacy a CKKS round is one cohort of up to 138 devices",
    ),
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


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "0"],
        ["--scenario", "nosuch"],
        ["--strategy", "fedprox"],
        ["--protection", "foo"],
        ["--devices", "100", "--per-round", "5000"],
    ],
)
def test_the_cli_refuses_before_loading_torch_sklearn_or_flower(argv: list[str], tmp_path: Path) -> None:
    """A refusal costs the command's start-up only: none of the heavy libraries was imported."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from fedchurn.cli import app\n"
        "try:\n"
        f"    app(['simulate', *{argv!r}, '--out', {str(tmp_path / 'run')!r}])\n"
        "except SystemExit as e:\n"
        "    heavy = sorted(m for m in ('torch', 'sklearn', 'flwr', 'xgboost') if m in sys.modules)\n"
        "    print('EXIT', e.code, 'HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "EXIT 2 HEAVY []" in res.stdout, res.stdout + res.stderr
    assert not (tmp_path / "run").exists()


def test_every_simulate_option_is_built_from_its_run_setting() -> None:
    """`simulate`'s options that set a run setting carry that setting's name (`option_name`), its
    default (`SIMULATE_DEFAULTS`) and its help (`OPTION_HELP`): nothing about a setting is written
    twice (issue 24, item 1)."""
    from dataclasses import fields

    import typer

    from fedchurn.cli import app
    from fedchurn.shared.run_config import OPTION_HELP, SIMULATE_DEFAULTS, option_name

    def as_run_value(name: str, v: Any) -> Any:
        """The option's default as the run setting it sets (a path or a number given as text)."""
        if name == "events_file":
            return v or ""
        if name == "events_tz":
            return "" if v is None else str(v)
        if name == "target_epsilon":
            return 0.0 if v == "none" else float(v)
        return v

    not_settings = {"out", "audit_db", "baselines", "nodes"}
    command = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    settings = {f.name for f in fields(RunConfig)}
    checked = set()
    for p in command.params:
        name = str(p.name)
        if name in not_settings:
            continue
        assert name in settings, f"--{name} sets no run setting"
        assert as_run_value(name, p.default) == getattr(SIMULATE_DEFAULTS, name), name
        assert option_name(name) in p.opts, (name, p.opts)
        assert p.help == OPTION_HELP[name], name
        checked.add(name)
    assert len(checked) >= 34


@pytest.mark.parametrize(
    ("horizon", "silence", "cutoff"),
    [(7, 7, ""), (14, 14, ""), (28, 14, ""), (90, 30, ""), (30, 14, "2025-02-03"), (90, 14, "2025-02-03")],
)
def test_a_runs_horizon_is_its_models_horizon(horizon: int, silence: int, cutoff: str) -> None:
    """`--horizon 28` once trained 14 daily hazards on 28-day labels and scored 14-day probabilities
    against 28-day outcomes. The model is now derived from the run's protocol: its horizon is the
    run's, and every label a device makes for it lands in one of its outputs."""
    import numpy as np

    from fedchurn.client.device_data import prepare_devices
    from fedchurn.simulations.population import generate_devices
    from fedchurn.simulations.scenario import load_scenario

    cfg = RunConfig(horizon=horizon, silence_days=silence, cutoff=cutoff)
    spec = cfg.model_spec()
    assert spec.horizon_days == cfg.horizon == horizon
    assert spec.outputs == cfg.outputs == cfg.protocol().outputs
    # 160 days from 2024-10-06: the cutoff (2025-02-03) is day 120 of them
    events, rows, starts, todays = generate_devices(3, np.arange(40), load_scenario("default"), 160)
    devices = prepare_devices(events, rows, starts, todays, cfg.protocol())
    times = np.concatenate([d.time for d in devices])
    assert times.size > 0 and times.min() >= 1 and times.max() <= spec.outputs
    assert all(d.x.shape[1] == spec.n_features for d in devices if len(d.x))


def test_an_unknown_protection_name_is_refused_naming_the_option() -> None:
    """The scheme a run uses is looked up by name: a name that is none of them (the aggregator
    reads the run config from Flower) is a clear refusal, never a KeyError."""
    with pytest.raises(ValueError, match="--protection: 'SECAGG' is not allowed"):
        RunConfig(protection="SECAGG").scheme  # noqa: B018
