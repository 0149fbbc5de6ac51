from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from fedchurn.client.labels import survival_labels
from fedchurn.client.training import TrainConfig, local_train
from fedchurn.shared.evaluation import device_histogram, histogram_length, metrics_from_histogram
from fedchurn.shared.model import ChurnNet, survival_nll
from fedchurn.shared.model_format import DEFAULT_SPEC, churn_probability, hazards, init_params, survival
from fedchurn.shared.run_config import RunConfig, is_eval_device
from fedchurn.simulations.flower_runner import app_pyproject

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_has_the_brief_size() -> None:
    assert DEFAULT_SPEC.n_params == 127 * 16 + 16 + 16 * 14 + 14 == 2286


def test_numpy_forward_equals_torch() -> None:
    params = init_params(3) + np.random.default_rng(1).normal(0, 0.1, DEFAULT_SPEC.n_params).astype(
        np.float32
    )
    x = np.abs(np.random.default_rng(2).normal(0, 3, (64, 127))).astype(np.float32)
    net = ChurnNet()
    net.set_vector(params)
    with torch.no_grad():
        h_torch = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(hazards(params, x), h_torch, atol=1e-5)
    np.testing.assert_array_equal(net.get_vector(), params)


def test_survival_nll_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5]])
    h = torch.sigmoid(logits)
    # row 0: event on day 2; row 1: censored after day 3
    want = -(torch.log(1 - h[0, 0]) + torch.log(h[0, 1]) + torch.log(1 - h[1]).sum()) / 2
    got = survival_nll(logits, torch.tensor([2, 3]), torch.tensor([True, False]))
    assert torch.allclose(got, want)


def test_probability_score_and_survival_are_consistent() -> None:
    params = init_params(0)
    x = np.zeros((3, 127), dtype=np.float32)
    s = survival(hazards(params, x))
    assert np.all(np.diff(s, axis=-1) <= 0) and np.all((s > 0) & (s <= 1))
    np.testing.assert_allclose(churn_probability(params, x), 1 - s[:, -1])


def _brute_labels(active: np.ndarray, horizon: int, silence: int) -> list[tuple[int, bool, bool]]:
    """Reference: walk forward day by day."""
    D = len(active)

    def in_long_silence(d: int) -> bool | None:  # None: not known by today
        if d >= D:
            return None
        if active[d]:
            return False
        start = d
        while start > 0 and not active[start - 1]:
            start -= 1
        end = d
        while end + 1 < D and not active[end + 1]:
            end += 1
        length = end - start + 1
        if length >= silence:
            return True
        return False if end + 1 < D else None

    out = []
    for t in range(D):
        time, event = horizon, False
        for s in range(1, horizon + 1):
            v = in_long_silence(t + s)
            if v is None:
                time = s - 1
                break
            if v:
                time, event = s, True
                break
        last = max((d for d in range(t + 1) if active[d]), default=-(10**6))
        out.append((time, event, t - last < silence and time >= 1))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=70), st.integers(1, 8), st.integers(2, 10))
def test_labels_match_a_day_by_day_reference(days: list[bool], horizon: int, silence: int) -> None:
    active = np.array(days)
    lab = survival_labels(active, horizon=horizon, silence_days=silence)
    got = [(int(t), bool(e), bool(u)) for t, e, u in zip(lab.time, lab.event, lab.usable, strict=True)]
    want = _brute_labels(active, horizon, silence)
    for (t, e, u), (wt, we, wu) in zip(got, want, strict=True):
        assert u == wu
        if u:
            assert (t, e) == (wt, we)


def test_local_training_lowers_the_loss_on_the_device() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (100, 127)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0])
    event = x[:, 0] > 1.0  # a learnable rule
    time = np.where(event, 3, 14)
    p0 = init_params(0)
    before = float(survival_nll(_logits(p0, x), torch.tensor(time), torch.tensor(event)))
    res = local_train(p0, x, time, event, TrainConfig(epochs=5), seed=1)
    after = float(survival_nll(_logits(res.params, x), torch.tensor(time), torch.tensor(event)))
    assert res.n_examples == 100 and after < before * 0.8
    assert np.array_equal(local_train(p0, x, time, event, TrainConfig(epochs=5), seed=1).params, res.params)


def _logits(params: np.ndarray, x: np.ndarray) -> torch.Tensor:
    net = ChurnNet()
    net.set_vector(params)
    with torch.no_grad():
        return net(torch.from_numpy(x))


def test_histogram_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.random(n) < 0.1
    p = 1 / (1 + np.exp(-(rng.normal(-3, 1, n) + 2.0 * y)))
    t = rng.integers(1, 15, n)
    hist = np.zeros(histogram_length(14))
    for pi, ti, yi in zip(p, t, y, strict=True):
        hist += device_histogram(float(pi), int(ti), bool(yi), 14)
    m = metrics_from_histogram(hist, 14)
    assert m["devices"] == n and m["positives"] == y.sum()
    assert abs(m["roc_auc"] - roc_auc_score(y, p)) < 0.005
    assert abs(m["pr_auc"] - average_precision_score(y, p)) < 0.03
    assert abs(m["mean_predicted"] - p.mean()) < 1e-9
    assert m["lift_top_decile"] > 1 and 0 <= m["calibration_error"] <= 1 and 0.5 < m["concordance"] <= 1


def test_histogram_without_both_outcomes_reports_no_auc() -> None:
    hist = device_histogram(0.2, 3, False, 14)
    assert "roc_auc" not in metrics_from_histogram(hist, 14)


def test_run_config_defaults_match_pyproject_and_the_generated_app() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    generated = tomllib.loads(app_pyproject())["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_flower() == generated
    with pytest.raises(ValueError, match="unknown run-config key"):
        RunConfig.from_flower({"num-rounds": 3})


def test_eval_membership_is_deterministic_and_near_the_fraction() -> None:
    picks = [is_eval_device(5, i, 0.2) for i in range(5000)]
    assert picks == [is_eval_device(5, i, 0.2) for i in range(5000)]
    assert abs(sum(picks) / 5000 - 0.2) < 0.02
    assert picks != [is_eval_device(6, i, 0.2) for i in range(5000)]
