"""`make demo`: a small end-to-end run — population, features, Flower training, baselines, report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.simulate import simulate

DEMO = RunConfig(
    num_server_rounds=5,
    devices=300,
    per_round=40,
    eval_per_round=40,
    eval_fraction=0.3,
    seed=7,
)


def run_demo(out: Path, console: Console) -> None:
    console.rule("fedchurn demo")
    console.print(
        f"{DEMO.devices} simulated devices, {DEMO.num_server_rounds} rounds of {DEMO.per_round}, "
        f"seed {DEMO.seed}; Flower simulation engine; uploads: {DEMO.train_protection().label}"
    )
    summary = simulate(DEMO, console, out)
    fed = summary["federated"]
    after = fed.get("final_evaluation", {}).get("roc_auc")
    xgb = summary.get("baselines", {}).get("xgboost", {}).get("roc_auc")
    console.print(f"ROC-AUC on held-out devices: federated {after}, centralised XGBoost {xgb}")
    console.rule()
    console.print(f"results: [bold]{out.resolve()}[/]")
    for name in (
        "metrics.json",
        "rounds.jsonl",
        "model/",
        "auc_by_round.png",
        "calibration.png",
        "survival_by_tier.png",
    ):
        console.print(f"  {out / name}")
