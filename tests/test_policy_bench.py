"""The scoring + policy benchmark on a small population: its counts are consistent and within the rules."""

from __future__ import annotations

import json

import numpy as np

from fedchurn.simulations.policy_bench import VECTOR_MODEL, bench_scoring_policy, reference_params


def test_bench_counts_are_consistent() -> None:
    res = bench_scoring_policy(devices=150, days=90, seed=3, single_device_sample=5)
    pol = res["policy"]
    assert res["model"] == reference_params()[1]
    assert sum(pol["decisions_by_reason"].values()) == res["device_days"]
    assert sum(pol["decisions_by_action"].values()) == res["device_days"]
    assert pol["recalls"] == pol["decisions_by_reason"].get("episode_start", 0) + pol[
        "decisions_by_reason"
    ].get("episode_follow_up", 0)
    assert pol["recalls"] == sum(pol["recalls_by_content"].values()) > 0
    assert pol["max_recalls_in_a_calendar_month"] <= 3
    assert 0 <= pol["opted_out_at_end"] <= pol["devices_recalled"] <= res["devices"]
    assert sum(res["scoring"]["tiers_last_day"].values()) == res["devices"]


def test_bench_uses_a_trained_model_not_random_weights() -> None:
    params, source = reference_params()
    assert params.shape == (2286,) and np.isfinite(params).all() and "reference model" in source
    doc = json.loads(VECTOR_MODEL.read_text())
    np.testing.assert_array_equal(params, np.array(doc["params"], dtype=np.float32))
    assert doc["training"]["test_roc_auc"] > 0.7  # trained, not initial weights
