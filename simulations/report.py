"""Plots of a run: ROC-AUC by round beside the central baselines, calibration with the devices per
bin, survival curves by risk tier. Every panel says what it measures, in which unit, on how many
held-out devices and churners; measurements are markers, never joined by a line that would suggest
learning between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fedchurn.server.run_output import load_model
from fedchurn.shared.model_format import HIGH_RISK, MEDIUM_RISK, ModelSpec, hazards, survival, tier

BASELINES = ("recency", "logreg", "xgboost", "central_net")
LABELS = {
    "federated": "federated (protected)",
    "recency": "recency only",
    "logreg": "logistic regression (central)",
    "xgboost": "XGBoost (central)",
    "central_net": "same net (central)",
}
TIERS = (
    ("low", f"low (< {MEDIUM_RISK:g})"),
    ("medium", f"medium ({MEDIUM_RISK:g}–{HIGH_RISK:g})"),
    ("high", f"high (≥ {HIGH_RISK:g})"),
)


def _sample(m: dict[str, Any]) -> str:
    """`n = 1,256 devices, 693 churners` from a metrics dict (empty when unknown)."""
    if "devices" not in m:
        return ""
    return f"n = {int(m['devices']):,} devices, {int(m.get('positives', 0)):,} churners"


def write_report(out: Path, summary: dict[str, Any], test_x: np.ndarray | None = None) -> list[Path]:
    params, meta = load_model(out)
    spec = ModelSpec.from_dict(meta["spec"])
    horizon = f"churn within {spec.horizon_days} days"
    return [
        _auc_by_round(out, summary, horizon),
        _calibration(out, summary, horizon),
        *([_survival(out, params, spec, test_x)] if test_x is not None and len(test_x) else []),
    ]


def _auc_by_round(out: Path, summary: dict[str, Any], horizon: str) -> Path:
    fed, base = summary["federated"], summary.get("baselines", {})
    final = fed.get("final_evaluation", {})
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sampled = [r for r in fed.get("rounds", []) if r.get("evaluation", {}).get("roc_auc") is not None]
    if sampled:
        ax.plot(
            [r["round"] for r in sampled],
            [r["evaluation"]["roc_auc"] for r in sampled],
            "o",
            alpha=0.6,
            label="federated, after a round (a sample of held-out devices)",
        )
    last = len(fed.get("rounds", []))
    for x, m, marker, text in (
        (0, fed.get("initial_evaluation", {}), "v", "federated, initial model"),
        (last, final, "s", "federated, final model"),
    ):
        if "roc_auc" in m:
            ax.plot([x], [m["roc_auc"]], marker, color="C0", markersize=8, label=f"{text} (all held-out)")
            interval = m.get("roc_auc_ci95")
            if interval:
                err = [[m["roc_auc"] - interval[0]], [interval[1] - m["roc_auc"]]]
                ax.errorbar([x], [m["roc_auc"]], yerr=err, color="C0", capsize=4)
    for k, name in enumerate(BASELINES):
        if "roc_auc" in base.get(name, {}):
            ax.axhline(base[name]["roc_auc"], linestyle="--", color=f"C{k + 1}", label=LABELS[name])
    ax.axhline(0.5, color="grey", linewidth=0.6)
    ax.set_xlim(-0.04 * max(last, 1) - 0.5, 1.04 * max(last, 1) + 0.5)  # round 0 .. the last round
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("federated round")
    ax.set_ylabel("ROC-AUC on held-out devices (0.5 = chance)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"ROC-AUC, {horizon}\n{_sample(final)} (bars: 95 % interval)", fontsize=10)
    return _save(fig, out / "auc_by_round.png")


def _calibration(out: Path, summary: dict[str, Any], horizon: str) -> Path:
    fed, base = summary["federated"], summary.get("baselines", {})
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect calibration")
    shown = [("federated", fed.get("final_evaluation", {}))] + [(b, base.get(b, {})) for b in BASELINES]
    for k, (name, m) in enumerate(shown):
        if "calib_predicted" not in m:
            continue
        ax.plot(m["calib_predicted"], m["calib_observed"], "o", markersize=3, color=f"C{k}",
                label=f"{LABELS[name]}: ECE {m['calibration_error']:.3f}")  # fmt: skip
        if name == "federated":
            bars.bar(m["calib_predicted"], m["calib_count"], width=0.012, color="C0")
    ax.set_ylabel("observed churn rate in the bin")
    ax.legend(fontsize=7)
    ax.set_title(f"Calibration, {horizon}\n{_sample(fed.get('final_evaluation', {}))}", fontsize=10)
    bars.set_xlabel("predicted churn probability (mean of the score bin)")
    bars.set_ylabel("devices per bin\n(federated)")
    bars.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out / "calibration.png")


def _survival(out: Path, params: np.ndarray, spec: ModelSpec, test_x: np.ndarray) -> Path:
    s = survival(hazards(params, test_x, spec))
    tiers = tier(1 - s[:, -1])
    days = np.minimum(np.arange(1, s.shape[1] + 1) * spec.bin_days, spec.horizon_days)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (_name, label) in enumerate(TIERS):
        n = int((tiers == k).sum())
        if n:
            ax.plot(np.concatenate([[0], days]), np.concatenate([[1.0], s[tiers == k].mean(axis=0)]),
                    "o", markersize=4, color=f"C{k}", label=f"{label}: {n:,} devices")  # fmt: skip
        else:  # a tier nobody is in is named, not silently missing
            ax.plot([], [], "o", color=f"C{k}", label=f"{label}: no device")
    ax.set_xlabel("days ahead")
    ax.set_ylabel("predicted share still active, S(t)")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, title="risk tier (churn probability)", title_fontsize=8)
    ax.set_title(
        f"Predicted survival by risk tier, mean per tier\n{len(test_x):,} held-out devices "
        f"(model bins of {spec.bin_days} day{'s' if spec.bin_days > 1 else ''})",
        fontsize=10,
    )
    return _save(fig, out / "survival_by_tier.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
