"""The churn model's layout and forward pass in numpy: what a device needs to score.

The model is a small discrete-time survival net: inputs (features / INPUT_SCALE) -> Linear ->
ReLU -> Linear -> one hazard logit per horizon bin (14 daily bins by default; `ModelSpec`). Its
parameters travel as one flat float32 vector in the order W1, b1, W2, b2 (row-major), which is
also the vector every device's update refers to.
`shared.model` builds the same network in torch for training; a test checks they agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fedchurn.shared.feature_spec import BASE_FEATURES, FEATURE_INDEX, N_FEATURES, RECENCY_CAP

__all__ = [
    "DEFAULT_SPEC",
    "HIGH_RISK",
    "HORIZON_DAYS",
    "INPUT_SCALE",
    "MEDIUM_RISK",
    "ModelSpec",
    "churn_probability",
    "flatten",
    "fold_input_offset",
    "hazards",
    "init_params",
    "survival",
    "tier",
    "unflatten",
]

HORIZON_DAYS = 14
HIGH_RISK = 0.78
MEDIUM_RISK = 0.40


@dataclass(frozen=True)
class ModelSpec:
    """The network's layout. The output layer has one hazard per bin of `bin_days` days covering
    `horizon_days` (the last bin may be shorter): the churn probability is the chance of the event
    in any bin, so the horizon a model predicts travels with it (`shared.protocol` chooses bins)."""

    n_features: int = BASE_FEATURES  # a prefix of the feature vector (`feature_spec`)
    hidden: int = 16
    horizon_days: int = HORIZON_DAYS
    bin_days: int = 1

    def __post_init__(self) -> None:
        if min(self.n_features, self.hidden, self.horizon_days, self.bin_days) < 1:
            raise ValueError(f"a model spec needs positive sizes, got {self}")
        if self.n_features > N_FEATURES:
            raise ValueError(f"a model reads at most the {N_FEATURES} features a device computes")

    @property
    def input_scale(self) -> np.ndarray:
        """What the model divides its inputs by (the first n_features of INPUT_SCALE)."""
        return INPUT_SCALE[: self.n_features]

    @property
    def outputs(self) -> int:
        """Hazard outputs: ceil(horizon_days / bin_days)."""
        return -(-self.horizon_days // self.bin_days)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.hidden, self.n_features), (self.hidden,), (self.outputs, self.hidden), (self.outputs,))

    @property
    def n_params(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes))

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "outputs": self.outputs, "n_params": self.n_params}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ModelSpec:
        """From `to_dict` (derived keys are checked, not trusted)."""
        spec = cls(**{k: int(d[k]) for k in ("n_features", "hidden", "horizon_days", "bin_days") if k in d})
        for key, value in (("outputs", spec.outputs), ("n_params", spec.n_params)):
            if key in d and int(d[key]) != value:
                raise ValueError(f"model spec: {key} is {d[key]}, the layout gives {value}")
        return spec


DEFAULT_SPEC = ModelSpec()


def _input_scale() -> np.ndarray:
    """Divide features by these before the first layer, so every input is roughly O(1)."""
    scale = np.ones(N_FEATURES, dtype=np.float32)
    for name, i in FEATURE_INDEX.items():
        if name.endswith(".recency_days") or name == "promo.days_since_discount_end":
            scale[i] = RECENCY_CAP
        elif name in ("active_days_28d", "activity.days_below_baseline", "content.days_below_40pct"):
            scale[i] = 28
        elif name == "active_days_7d":
            scale[i] = 7
        elif name in ("activity.index", "activity.baseline"):
            scale[i] = 100
        elif name in (
            "activity.ratio",
            "content.vs_mean",
            "commerce.abandoned_cart_streak",
            "history.overdue",
        ):
            scale[i] = 10
        elif name == "account_age_days":
            scale[i] = 6
        elif name == "device.tier":
            scale[i] = 3
    return scale


INPUT_SCALE = _input_scale()


def unflatten(params: np.ndarray, spec: ModelSpec = DEFAULT_SPEC) -> list[np.ndarray]:
    params = np.asarray(params, dtype=np.float32)
    if params.shape != (spec.n_params,):
        raise ValueError(f"expected {spec.n_params} parameters, got shape {params.shape}")
    out, k = [], 0
    for shape in spec.shapes:
        n = int(np.prod(shape))
        out.append(params[k : k + n].reshape(shape))
        k += n
    return out


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])


def fold_input_offset(params: np.ndarray, offset: np.ndarray, spec: ModelSpec = DEFAULT_SPEC) -> np.ndarray:
    """The same model for uncentred inputs: W1 (x/s - offset) + b1 = W1 x/s + (b1 - W1 offset).

    Training may run on centred inputs (better conditioned); every model that leaves the server is
    folded back, so scoring, the ONNX graph and the client spec never see the offset."""
    w1, b1, w2, b2 = unflatten(params, spec)
    offset = np.asarray(offset, dtype=np.float64)
    if offset.shape != (spec.n_features,):
        raise ValueError(f"expected an offset of {spec.n_features} features, got shape {offset.shape}")
    return flatten([w1, b1 - w1.astype(np.float64) @ offset, w2, b2])


def hazards(params: np.ndarray, features: np.ndarray, spec: ModelSpec = DEFAULT_SPEC) -> np.ndarray:
    """Per-bin churn hazards h_1..h_K for each row of features (..., n_features)."""
    w1, b1, w2, b2 = unflatten(params, spec)
    # A device's full feature vector or just the model's prefix: the model reads its prefix.
    x = np.asarray(features, dtype=np.float32)[..., : spec.n_features] / spec.input_scale
    h = np.maximum(x @ w1.T + b1, 0.0)
    logits = h @ w2.T + b2
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float64)


def survival(h: np.ndarray) -> np.ndarray:
    """S(t) = prod_{s<=t} (1 - h_s), t = 1..H."""
    return np.cumprod(1.0 - h, axis=-1)


def churn_probability(params: np.ndarray, features: np.ndarray, spec: ModelSpec = DEFAULT_SPEC) -> np.ndarray:
    """Probability of churn onset within the horizon: 1 - S(H)."""
    return 1.0 - survival(hazards(params, features, spec))[..., -1]


def tier(prob: np.ndarray, high: float = HIGH_RISK, medium: float = MEDIUM_RISK) -> np.ndarray:
    """0 low, 1 medium, 2 high."""
    p = np.asarray(prob)
    return np.where(p >= high, 2, np.where(p >= medium, 1, 0))


def init_params(seed: int, spec: ModelSpec = DEFAULT_SPEC) -> np.ndarray:
    """He-style initial weights, zero biases; the output bias starts at a low daily hazard."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, np.sqrt(2.0 / spec.n_features), spec.shapes[0])
    w2 = rng.normal(0, np.sqrt(1.0 / spec.hidden), spec.shapes[2])
    b2 = np.full(spec.outputs, -4.0)  # sigmoid(-4) ~ 1.8% per bin
    return flatten([w1, np.zeros(spec.hidden), w2, b2])
