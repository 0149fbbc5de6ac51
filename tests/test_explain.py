"""On-device explanation: which data categories push this user's churn score up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedchurn.client.explain import (
    CATEGORY_SHARE,
    explain,
    explain_history,
    feature_contributions,
    probability_and_gradient,
)
from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.feature_spec import BASE_FEATURES, FEATURE_INDEX
from fedchurn.shared.model_format import DEFAULT_SPEC, churn_probability, flatten, init_params

VEC = Path(__file__).parent / "vectors" / "policy"


def _params() -> np.ndarray:
    return np.array(json.loads((VEC / "model_params.json").read_text())["params"], dtype=np.float32)


def _history() -> np.ndarray:
    doc = json.loads((VEC / "history.json").read_text())
    return np.array([d["features"] for d in doc["expected"]["days"]], dtype=np.float32)


def test_gradient_matches_finite_differences() -> None:
    params = _params()
    feats = _history()
    for x in (feats[20], feats[45], feats[-1]):
        p, g = probability_and_gradient(params, x.astype(np.float64))
        np.testing.assert_allclose(p, churn_probability(params, x), atol=1e-6)
        for i in range(0, BASE_FEATURES, 7):
            h = 1e-4 * max(1.0, abs(float(x[i])))
            up, dn = x.astype(np.float64).copy(), x.astype(np.float64).copy()
            up[i] += h
            dn[i] -= h
            fd = (probability_and_gradient(params, up)[0] - probability_and_gradient(params, dn)[0]) / (2 * h)
            assert abs(fd - g[i]) < 1e-5 + 1e-3 * abs(g[i]), (i, fd, g[i])


def test_contributions_add_up_to_the_change_in_probability() -> None:
    params = _params()
    feats = _history()
    x, ref = feats[45], feats[:44].mean(axis=0)
    c = feature_contributions(params, x, ref, steps=2048)
    want = probability_and_gradient(params, x)[0] - probability_and_gradient(params, ref)[0]
    assert abs(c.sum() - want) < 1e-3
    assert abs(want - float(churn_probability(params, x) - churn_probability(params, ref))) < 1e-5
    np.testing.assert_allclose(CATEGORY_SHARE.sum(axis=1), 1.0)


def test_the_category_that_drives_the_model_comes_first() -> None:
    """A model whose only input is days since the last session: sessions is the one reason."""
    w1 = np.zeros((DEFAULT_SPEC.hidden, BASE_FEATURES))
    w1[0, FEATURE_INDEX["sessions.recency_days"]] = 5.0
    w2 = np.zeros((DEFAULT_SPEC.outputs, DEFAULT_SPEC.hidden))
    w2[:, 0] = 1.0
    params = flatten([w1, np.zeros(DEFAULT_SPEC.hidden), w2, np.full(DEFAULT_SPEC.outputs, -4.0)])
    x = np.zeros(BASE_FEATURES, dtype=np.float32)
    x[FEATURE_INDEX["sessions.recency_days"]] = 20
    top = explain(params, x)
    assert [c.category for c in top] == ["sessions"]
    assert top[0].top_features[0][0] == "sessions.recency_days" and top[0].points > 0
    x[FEATURE_INDEX["sessions.recency_days"]] = 0
    assert explain(params, x) == []  # nothing pushes the score up


def test_a_silent_user_is_explained_by_what_went_quiet() -> None:
    params = _params()
    feats = _history()
    silent_day = 40  # day 9 of the first silence in the golden history
    out = explain_history(params, feats[: silent_day + 1])
    assert out and all(c.contribution > 0 for c in out)
    assert [c.contribution for c in out] == sorted((c.contribution for c in out), reverse=True)
    assert all(c.category in CATEGORY_IDS for c in out)
    assert "sessions" in {c.category for c in out}
    assert out[0].to_dict()["points"] == out[0].points


def test_explanation_needs_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, fedchurn.client.explain; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert init_params(0).shape == (DEFAULT_SPEC.n_params,)
