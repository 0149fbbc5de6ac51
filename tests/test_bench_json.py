"""`fedchurn bench --json`: every figure the issue names is in the JSON, as a finite number.

The default-suite test runs every section for real at the hidden test sizes, in process, except the
Flower runs: those are read from the suite's shared small run (`small_run`), through the same
functions that read a bench run's outputs (the end-to-end tests run the engine itself; the
quickstart app has its own short run below). The `slow` test runs `fedchurn bench --quick` end to
end, three Flower simulations included, exactly as the acceptance asks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import RunCli

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.bench import NO_DP_EPSILON, QUICK, Sizes, epsilon_of_run, to_json

FOUR = ("fedchurn_default", "fedchurn_ckks", "flower_plain_fedavg", "flower_secaggplus")
REQUIRED: dict[str, tuple[str, ...]] = {
    "upload_bytes": FOUR,
    "aggregate_1000_s": FOUR,
    "protect_update_ms": FOUR,
    "features": ("one_device_90d_ms", "batch_100k_devices_s"),
    "population": ("devices_100k_days_120_s", "peak_rss_mb"),
    "simulation": (
        "devices",
        "rounds",
        "per_round",
        "wall_s",
        "updates_per_s",
        "flower_quickstart_updates_per_s",
    ),
    "quality": ("federated_default", "federated_plain", "central_net", "xgboost", "logreg", "epsilon"),
    "scoring": ("devices_per_s",),
    "whatif": (
        "seconds",
        "policy_device_days_per_s_slowest_arm",
        "model_vs_random_success",
        "uplift_vs_random_90d",
    ),
}


def _strict_json(text: str) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    doc: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return doc


def _missing_or_not_numbers(doc: dict[str, Any]) -> list[str]:
    bad = []
    for section, keys in REQUIRED.items():
        for key in keys:
            v = doc.get(section, {}).get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                bad.append(f"{section}.{key} = {v!r}")
    return bad


def _run_bench(run_cli: RunCli, tmp_path: Path, size_flag: str, timeout: float) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out.json"
    res = run_cli(
        "bench", size_flag, "--json", str(out), "--work-dir", str(tmp_path / "work"), timeout=timeout
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return _strict_json(out.read_text()), res.stdout


def _check(doc: dict[str, Any], stdout: str, sizes: Sizes, simulated: bool = True) -> None:
    assert _missing_or_not_numbers(doc) == []
    assert doc["quick"] is True and f"{sizes.name} sizes" in stdout
    sim = doc["simulation"]
    if simulated:  # the run's own configuration (the unit test reads a run of another size)
        assert (sim["devices"], sim["rounds"], sim["per_round"]) == (
            sizes.sim_devices,
            sizes.sim_rounds,
            sizes.sim_per_round,
        )
    assert sim["updates_per_s"] > 0 and sim["flower_quickstart_updates_per_s"] > 0
    # The default upload is the 780-byte protected vector, far below Flower's plaintext reply.
    assert doc["upload_bytes"]["fedchurn_default"] < doc["upload_bytes"]["flower_plain_fedavg"]
    assert doc["simulation"]["bytes_per_device"] < doc["simulation"]["plaintext_bytes_per_device"]
    for model in ("federated_default", "federated_plain", "central_net", "xgboost", "logreg"):
        assert 0.0 <= doc["quality"][model] <= 1.0
    q = doc["quality"]
    assert q["epsilon_bounded"] or q["epsilon"] == NO_DP_EPSILON, q["epsilon_note"]
    # Figures for 100,000 devices measured on fewer say they were extrapolated.
    assert "extrapolated" in doc["features"]["batch_100k_devices_s_note"]
    assert "extrapolated" in doc["population"]["devices_100k_days_120_s_note"]


@pytest.mark.integration  # reads the suite's shared Flower run
def test_bench_json_has_every_figure_as_a_number(
    small_run: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from fedchurn.server.run_output import load_model
    from fedchurn.simulations import bench

    out, summary = small_run
    params, _ = load_model(out)
    plain = json.loads(json.dumps(summary))  # the plaintext run: the same run, its bytes in the clear
    for r in plain["federated"]["rounds"]:
        r["bytes_per_device"] = 4 * len(params) + 100
    runs = {"secagg": summary, "plaintext": plain}
    monkeypatch.setattr(bench, "_fedchurn_run", lambda cfg, *_: bench.run_figures(runs[cfg.protection]))
    status = {"replies": [20, 20], "round_seconds": [2.0, 0.5]}  # 40 updates/s after round 1
    monkeypatch.setattr(
        bench, "_quickstart_run", lambda cfg, *_: bench.quickstart_figures(status, 3.0, 1.0, params)
    )
    console = Console(record=True, width=200)
    figures = bench.run_bench(console=console, sizes=bench.TEST, work_dir=tmp_path / "work")
    text, _ = bench.to_json(figures)
    doc = _strict_json(text)
    _check(doc, console.export_text(), bench.TEST, simulated=False)
    assert doc["simulation"]["updates_per_s_vs_quickstart"] == pytest.approx(
        doc["simulation"]["updates_per_s"] / 40.0
    )


@pytest.mark.integration
def test_the_quickstart_comparison_runs_on_flowers_engine(tmp_path: Path) -> None:
    """Flower's quickstart FedAvg, as the bench runs it beside fedchurn, on a few devices."""
    from rich.console import Console

    from fedchurn.simulations import bench

    # one device a round: the quickstart runs one simulated node per device, so one Ray actor
    cfg = RunConfig(devices=20, num_server_rounds=1, per_round=1, eval_per_round=0, sampling_source="seeded")
    q = bench._quickstart_run(cfg, tmp_path / "q", Console(quiet=True))
    assert q["updates"] == 1 and q["updates_per_s"] > 0
    assert q["params"].shape == (cfg.model_spec().n_params,) and np.all(np.isfinite(q["params"]))


@pytest.mark.slow
@pytest.mark.integration
def test_bench_quick_json_has_every_figure_as_a_number(run_cli: RunCli, tmp_path: Path) -> None:
    doc, stdout = _run_bench(run_cli, tmp_path, "--quick", timeout=1200)
    _check(doc, stdout, QUICK)


def test_json_never_holds_nan_or_infinity_and_says_which_were_dropped() -> None:
    text, replaced = to_json({"a": {"b": float("nan"), "c": [1.0, float("inf")]}, "d": 2})
    assert _strict_json(text) == {"a": {"b": None, "c": [1.0, None]}, "d": 2}
    assert replaced == ["a.b", "a.c[1]"]


def test_a_run_without_dp_reports_an_unbounded_epsilon_never_a_small_one() -> None:
    cfg = RunConfig()
    no_dp = epsilon_of_run(cfg, [{"round": 1, "epsilon": None}])
    assert cfg.target_epsilon == 0 and no_dp["epsilon"] == NO_DP_EPSILON and not no_dp["epsilon_bounded"]
    dp = epsilon_of_run(cfg, [{"round": 1, "epsilon": 0.8}, {"round": 2, "epsilon": 1.2}])
    assert dp["epsilon"] == 1.2 and dp["epsilon_bounded"]
