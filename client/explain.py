"""Which kinds of data push this user's churn score up, computed on the device (numpy only).

Integrated gradients over the model's own forward pass: each feature's contribution is
(x_i − ref_i) × the average of ∂P/∂x_i along the straight line from a reference vector to x, so
the contributions add up to P(x) − P(reference) (to within the quadrature error). A feature's
contribution is split equally among the data categories it is computed from
(`feature_spec.FEATURES[i].categories`), and the categories are ranked by their positive share.

The recommended reference is the user's own recent normal: the mean of their previous 28 days'
feature vectors (`explain_history`), so the answer reads "compared with your usual weeks, these
kinds of activity raise your risk". Nothing here leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.shared.catalogue import BY_ID, CATEGORY_IDS
from fedchurn.shared.feature_spec import FEATURE_NAMES, FEATURES, N_FEATURES
from fedchurn.shared.model_format import DEFAULT_SPEC, ModelSpec, unflatten


def _category_matrix() -> np.ndarray:
    """(N_FEATURES, 17): share of each feature's contribution given to each category."""
    m = np.zeros((N_FEATURES, len(CATEGORY_IDS)))
    for i, f in enumerate(FEATURES):
        for c in f.categories:
            m[i, CATEGORY_IDS.index(c)] = 1.0 / len(f.categories)
    return m


CATEGORY_SHARE = _category_matrix()


def probability_and_gradient(
    params: np.ndarray, x: np.ndarray, spec: ModelSpec = DEFAULT_SPEC
) -> tuple[np.ndarray, np.ndarray]:
    """P(churn within the horizon) and ∂P/∂features for each row of x (..., F), in float64. F is
    the model's inputs or a device's whole vector (features the model does not read get 0).

    With S = Π(1 − h_t) and h_t = sigmoid(z_t): ∂P/∂z_t = S·h_t, then back through the two layers.
    """
    w1, b1, w2, b2 = (a.astype(np.float64) for a in unflatten(params, spec))
    x = np.asarray(x, dtype=np.float64)
    scale = spec.input_scale.astype(np.float64)
    u = (x[..., : spec.n_features] / scale) @ w1.T + b1
    a = np.maximum(u, 0.0)
    z = a @ w2.T + b2
    h = 1.0 / (1.0 + np.exp(-z))
    s = np.prod(1.0 - h, axis=-1, keepdims=True)
    dz = s * h
    du = (dz @ w2) * (u > 0)
    grad = np.zeros(x.shape)
    grad[..., : spec.n_features] = (du @ w1) / scale
    return 1.0 - s[..., 0], grad


def feature_contributions(
    params: np.ndarray, x: np.ndarray, reference: np.ndarray | None = None, steps: int = 64
) -> np.ndarray:
    """Integrated-gradients contribution of every feature to P(x) − P(reference) (midpoint rule)."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.zeros_like(x) if reference is None else np.asarray(reference, dtype=np.float64)
    if x.shape != ref.shape or x.shape not in ((N_FEATURES,), (DEFAULT_SPEC.n_features,)):
        raise ValueError(f"expected two vectors of {DEFAULT_SPEC.n_features} or {N_FEATURES} features")
    alphas = (np.arange(steps) + 0.5) / steps
    path = ref + alphas[:, None] * (x - ref)
    _, grads = probability_and_gradient(params, path)
    return (x - ref) * grads.mean(axis=0)


@dataclass(frozen=True)
class CategoryContribution:
    category: str
    name_en: str
    contribution: float  # change in churn probability attributed to this category
    points: float  # the same on the 0–100 score scale
    top_features: tuple[tuple[str, float], ...]  # this category's largest positive feature shares

    def to_dict(self) -> dict[str, object]:
        return {
            "category": self.category,
            "name_en": self.name_en,
            "contribution": self.contribution,
            "points": self.points,
            "top_features": [{"feature": n, "contribution": v} for n, v in self.top_features],
        }


def explain(
    params: np.ndarray,
    x: np.ndarray,
    reference: np.ndarray | None = None,
    top: int = 3,
    steps: int = 64,
) -> list[CategoryContribution]:
    """The data categories that push this user's score up relative to `reference`, largest first.

    Only categories with a positive contribution are returned (at most `top`).
    """
    contrib = feature_contributions(params, x, reference, steps)
    share = CATEGORY_SHARE[: len(contrib)]  # the model's inputs: a prefix of the feature vector
    per_cat = contrib @ share
    out = []
    for k in np.argsort(-per_cat, kind="stable")[:top]:
        if per_cat[k] <= 0:
            break
        shares = contrib * share[:, k]
        idx = [i for i in np.argsort(-shares, kind="stable")[:3] if shares[i] > 0]
        cat = CATEGORY_IDS[int(k)]
        out.append(
            CategoryContribution(
                category=cat,
                name_en=BY_ID[cat].name_en,
                contribution=float(per_cat[k]),
                points=float(100 * per_cat[k]),
                top_features=tuple((FEATURE_NAMES[i], float(shares[i])) for i in idx),
            )
        )
    return out


def explain_history(
    params: np.ndarray, features: np.ndarray, baseline_days: int = 28, top: int = 3, steps: int = 64
) -> list[CategoryContribution]:
    """Explain the last day of a (D, N_FEATURES) history against the mean of the days before it.

    With no earlier day the reference is the empty vector (all zeros).
    """
    f = np.asarray(features, dtype=np.float64)
    prev = f[max(0, len(f) - 1 - baseline_days) : len(f) - 1]
    ref = prev.mean(axis=0) if len(prev) else None
    return explain(params, f[-1], ref, top, steps)
