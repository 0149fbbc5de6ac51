"""On-device scoring with numpy alone: survival curve, churn probability, 0–100 score, tier."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np

from fedchurn.client.pipeline import device_features
from fedchurn.shared.model_format import HIGH_RISK, MEDIUM_RISK, hazards, survival

TIERS = ("low", "medium", "high")


def score_features(
    params: np.ndarray, x: np.ndarray, high: float = HIGH_RISK, medium: float = MEDIUM_RISK
) -> dict[str, Any]:
    s = survival(hazards(params, x))
    prob = float(1.0 - s[-1])
    t = 2 if prob >= high else 1 if prob >= medium else 0
    return {
        "probability": prob,
        "score": round(100 * prob),
        "tier": TIERS[t],
        "survival": [float(v) for v in s],
    }


def score_device(
    params: np.ndarray, events: np.ndarray, high: float = HIGH_RISK, medium: float = MEDIUM_RISK
) -> dict[str, Any]:
    """Score a device on its last day of history."""
    res = device_features(events)
    out = score_features(params, res.features[-1], high, medium)
    out["date"] = (date(1970, 1, 1) + timedelta(days=int(res.days[-1]))).isoformat()
    return out
