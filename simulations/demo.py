"""`make demo`: a small end-to-end run — population, features, Flower training, baselines, report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.protection_bench import flower_fedavg_reply
from fedchurn.simulations.simulate import simulate

DEMO = RunConfig(
    num_server_rounds=80,
    devices=4_500,
    per_round=300,
    eval_per_round=0,
    eval_fraction=0.3,
    seed=7,
    sampling_source="seeded",  # reproducible from the seed, as `fedchurn simulate`
)


def run_demo(out: Path, console: Console) -> None:
    console.rule("fedchurn demo")
    console.print(
        f"{DEMO.devices} simulated devices, {DEMO.num_server_rounds} rounds of {DEMO.per_round}, "
        f"seed {DEMO.seed}; Flower simulation engine; uploads: {DEMO.train_protection().label}"
    )
    summary = simulate(DEMO, console, out)
    final = summary["federated"].get("final_evaluation", {})
    baselines = summary.get("baselines", {})
    if "roc_auc" in final:
        n, churners = int(final["devices"]), int(final["positives"])
        interval = final.get("roc_auc_ci95")
        ci = f" (95% interval {interval[0]:.3f}–{interval[1]:.3f})" if interval else ""
        console.print(
            f"ROC-AUC on {n:,} held-out devices ({churners:,} churned within the horizon): "
            f"federated {final['roc_auc']:.3f}{ci}"
        )
        for name, label in (("logreg", "logistic regression"), ("xgboost", "XGBoost")):
            if "roc_auc" in baselines.get(name, {}):
                console.print(f"  centralised {label} on the same devices: {baselines[name]['roc_auc']:.3f}")
    else:
        console.print("no federated ROC-AUC: the held-out devices hold only one class")
    rounds = summary["federated"].get("rounds", [])
    if rounds:
        declared = rounds[-1]["upload_bytes_per_device"]
        measured = sum(r["bytes_per_device"] for r in rounds) / len(rounds)
        flower, _ = flower_fedavg_reply(DEMO.model_spec().n_params)
        console.print(
            f"each device sent {declared:,.0f} B per round ({measured:,.0f} B with the reply's framing); "
            f"Flower's own FedAvg reply for the same model: {flower:,} B ({flower / measured:.0f}× more)"
        )
    console.print(
        "no differential privacy in this run: `fedchurn simulate --target-epsilon 1` adds it and "
        "prints ε (README, Differential privacy)"
    )
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
    console.print(
        "next: the plots above; `fedchurn serve --database-url …` for the reviewer page of a run with "
        "--audit-db; docs/benchmarks.md for every measured figure; `fedchurn simulate --events LOG "
        "--cutoff DATE` for your own log; `fedchurn whatif --devices 20000 --policy default --policy "
        "random --policy none` to compare retention policies on users who answer recalls"
    )
