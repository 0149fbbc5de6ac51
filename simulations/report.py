"""Plots of a run: metric by round (federated vs baselines), calibration, survival curves by tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedchurn.server.run_output import load_model
from fedchurn.shared.model_format import ModelSpec, hazards, survival, tier

BASELINES = ("logreg", "xgboost", "central_net")


def write_report(out: Path, summary: dict[str, Any], test_x: np.ndarray | None = None) -> list[Path]:
    paths = []
    fed = summary["federated"]
    base = summary.get("baselines", {})
    rounds = [r for r in fed.get("rounds", []) if r.get("evaluation", {}).get("roc_auc") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if rounds:
        ax.plot(
            [r["round"] for r in rounds],
            [r["evaluation"]["roc_auc"] for r in rounds],
            "o:",
            alpha=0.6,
            label="federated, each round (a sample of held-out devices)",
        )
    last = len(fed.get("rounds", []))
    full = [
        (0, fed.get("initial_evaluation", {}).get("roc_auc", np.nan)),
        (last, fed.get("final_evaluation", {}).get("roc_auc", np.nan)),
    ]
    ax.plot(
        [x for x, _ in full],
        [y for _, y in full],
        "s-",
        color="C0",
        label="federated, all held-out devices (before / after)",
    )
    for name in BASELINES:
        if name in base and "roc_auc" in base[name]:
            ax.axhline(
                base[name]["roc_auc"],
                linestyle="--",
                label=f"{name} (centralised)",
                color=f"C{BASELINES.index(name) + 1}",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("ROC-AUC on held-out devices")
    ax.legend(fontsize=8)
    ax.set_title(f"Churn within {summary['config']['horizon']} days")
    paths.append(_save(fig, out / "auc_by_round.png"))

    params, meta = load_model(out)
    spec = ModelSpec.from_dict(meta["spec"])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    for name, m in [("federated", fed.get("final_evaluation", {}))] + [
        (b, base.get(b, {})) for b in BASELINES
    ]:
        if "calib_predicted" in m:
            ax.plot(
                m["calib_predicted"],
                m["calib_observed"],
                "o-",
                markersize=3,
                label=f"{name}: ECE {m['calibration_error']:.3f}",
            )
    ax.set_xlabel("predicted churn probability (score bin mean)")
    ax.set_ylabel("observed churn rate")
    ax.legend(fontsize=8)
    ax.set_title("Calibration on held-out devices")
    paths.append(_save(fig, out / "calibration.png"))

    if test_x is not None:
        h = hazards(params, test_x, spec)
        s = survival(h)
        tiers = tier(1 - s[:, -1])
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, name in enumerate(("low", "medium", "high")):
            if (tiers == k).any():
                ax.plot(
                    np.minimum(np.arange(1, s.shape[1] + 1) * spec.bin_days, spec.horizon_days),
                    s[tiers == k].mean(axis=0),
                    "o-",
                    markersize=3,
                    label=f"{name} ({(tiers == k).sum()})",
                )
        ax.set_xlabel("days ahead")
        ax.set_ylabel("S(t): still active")
        ax.legend()
        ax.set_title("Survival curves by risk tier (held-out devices)")
        paths.append(_save(fig, out / "survival_by_tier.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
