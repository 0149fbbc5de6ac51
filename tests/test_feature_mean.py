"""centre-features: the device's feature summary, its protected upload, and the folded model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedchurn.client.feature_mean import centre_rows, feature_summary, mean_from_sum
from fedchurn.client.protect import protect_update
from fedchurn.server.app import Recovery
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.secure_sum import CohortAggregator
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.feature_spec import BASE_FEATURES
from fedchurn.shared.messages import PARAMS_KEY, RoundTask
from fedchurn.shared.model import ChurnNet
from fedchurn.shared.model_format import INPUT_SCALE, fold_input_offset, hazards, init_params
from fedchurn.shared.run_config import STATS_BOUND, RunConfig

N = BASE_FEATURES + 1
_finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (5, BASE_FEATURES), elements=st.floats(0, 100, width=32)),
    arrays(np.float64, BASE_FEATURES, elements=st.floats(-4, 4)),
    st.integers(0, 2**31 - 1),
)
def test_folding_the_offset_gives_the_model_trained_on_centred_rows(
    x: np.ndarray, offset: np.ndarray, seed: int
) -> None:
    """What a device trains (raw rows minus the offset) and what it scores with (the folded model
    on raw rows) are the same function, in numpy and in torch."""
    params = init_params(seed % 1000) + np.random.default_rng(seed).normal(0, 0.1, init_params(0).shape)
    params = params.astype(np.float32)
    folded = fold_input_offset(params, offset)
    centred = hazards(params, centre_rows(x, offset))
    np.testing.assert_allclose(hazards(folded, x), centred, rtol=2e-3, atol=1e-6)
    net = ChurnNet()
    net.set_vector(params)
    with torch.no_grad():
        logits = net(torch.from_numpy(centre_rows(x, offset))).numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), centred, rtol=2e-3, atol=1e-6)


def test_folding_refuses_an_offset_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="offset of 127 features"):
        fold_input_offset(init_params(0), np.zeros(5))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(0, 12), st.just(BASE_FEATURES)), elements=_finite))
def test_a_summary_is_the_clipped_scaled_mean_and_a_count_of_one(x: np.ndarray) -> None:
    s = feature_summary(x)
    assert s.shape == (N,)
    if len(x) == 0:
        assert not s.any()  # a device without training rows adds nothing, not even to the count
        return
    assert s[-1] == 1.0 and np.all(np.abs(s[:-1]) <= STATS_BOUND)
    np.testing.assert_allclose(
        s[:-1], np.clip((x / INPUT_SCALE[:BASE_FEATURES]).mean(0), -STATS_BOUND, STATS_BOUND)
    )
    assert np.linalg.norm(s) <= RunConfig().stats_protection().clip_norm + 1e-9  # never clipped again


def test_the_mean_of_summaries_weights_devices_not_rows() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 2, (3, BASE_FEATURES)), rng.uniform(0, 2, (40, BASE_FEATURES))
    total = feature_summary(a) + feature_summary(b) + feature_summary(np.zeros((0, BASE_FEATURES)))
    expected = ((a / INPUT_SCALE[:BASE_FEATURES]).mean(0) + (b / INPUT_SCALE[:BASE_FEATURES]).mean(0)) / 2
    mean = mean_from_sum(total)
    assert mean is not None
    np.testing.assert_allclose(mean, expected)
    assert mean_from_sum(np.zeros(N)) is None


@pytest.mark.parametrize("noise", [0.0, 0.8])
def test_the_protected_summaries_sum_to_the_exact_count_and_the_mean(noise: float) -> None:
    """Through the real upload and cohort sum: the count coordinate comes back exact (without DP),
    the mean within the quantisation step, and no summary value travels in the clear."""
    params = RunConfig().stats_protection(noise)
    assert params.upload_bytes(N) == 356 and params.scale(N) == pytest.approx(32)
    kh = KeyHolder.generate(k_min=10, min_noise_multiplier=noise)
    rng = np.random.default_rng(3)
    agg = CohortAggregator(params, 0, 200_000, 0, b"\x07" * 32, N)
    summaries = []
    for i in range(25):
        s = feature_summary(rng.uniform(0, 60, (rng.integers(1, 90), BASE_FEATURES)))
        summaries.append(s)
        blob = protect_update(s, params, kh.public(), 0, 200_000, 0, b"\x07" * 32, rng)
        assert len(blob) == 356
        assert s[:4].astype(np.float32).tobytes() not in blob and s[:4].tobytes() not in blob
        assert agg.add(f"d{i}", blob).accepted
    res = agg.finalize(kh)
    truth = np.sum(summaries, axis=0)
    if noise == 0:
        assert res.sum[-1] == pytest.approx(25, abs=1e-9)  # 800 ring units, exactly
        np.testing.assert_allclose(res.sum[:-1], truth[:-1], atol=25 / 32)
        mean = mean_from_sum(res.sum)
        assert mean is not None
        np.testing.assert_allclose(mean, truth[:-1] / 25, atol=1 / 32)
    else:
        assert res.noise_std == pytest.approx(params.noise_std(N))
        assert abs(res.sum[-1] - 25) < 8 * params.noise_std(N)


def test_the_feature_mean_ring_widens_until_the_dp_noise_fits() -> None:
    rings = [RunConfig().stats_protection(z).ring_bits for z in (0.0, 0.8, 5.0, 20.0)]
    assert rings == sorted(rings) and rings[0] == 16 and rings[-1] > 16
    for z in (0.0, 5.0, 20.0):
        RunConfig().stats_protection(z).check_ring(N)


def test_a_feature_mean_round_a_crashed_start_reached_the_key_holder_with_is_charged(tmp_path: Path) -> None:
    """Crash after the key holder answered the feature-mean round, before the first checkpoint:
    the restarted run starts afresh but its accountant already holds that round."""
    cfg = RunConfig(
        devices=60,
        per_round=20,
        target_epsilon=4.0,
        centre_features=True,
        run_name="crashed",
    )
    state_db = f"sqlite:///{tmp_path / 'state.sqlite'}"
    recovery = Recovery(cfg, state_db)
    attempt = recovery.store.begin_attempt("crashed", 0, "stats")
    recovery.store.mark(attempt, "contacted")
    recovery.store.begin_attempt("crashed", 0, "eval")  # evaluation costs no privacy budget
    restarted = Recovery(cfg, state_db)
    assert restarted.last is None  # nothing was checkpointed: the run starts afresh
    strategy = make_strategy(cfg, [(d, d) for d in range(1, 61)])
    assert strategy.secure is not None and strategy.secure.accountant.rounds == 0
    assert restarted.charge_before_first_checkpoint(strategy) == 1
    assert strategy.secure.accountant.rounds == 1


@pytest.mark.usefixtures("serverapp_identity")
@pytest.mark.parametrize("nodes", ["phones", "shards"])
def test_every_training_message_carries_the_measured_offset(nodes: str) -> None:
    """Phones (a list of one each) and simulation shards alike: every node that trains gets the
    offset the server measured, so its devices train on the rows the server's model expects."""
    cfg = RunConfig(devices=40, per_round=12, centre_features=True)
    roster = [(d + 1, d) for d in range(40)] if nodes == "phones" else simulation_roster([1, 2, 3, 4], 40)
    strategy = make_strategy(cfg, roster)
    strategy.offset = np.linspace(-1.0, 1.0, BASE_FEATURES)
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord(), None))  # type: ignore[arg-type]
    assert sum(len(RoundTask.from_message(m, init_params(0).size, BASE_FEATURES).devices) for m in msgs) == 12
    for msg in msgs:
        got = RoundTask.from_message(msg, init_params(0).size, BASE_FEATURES).input_offset
        assert got is not None
        np.testing.assert_allclose(got, strategy.offset)
