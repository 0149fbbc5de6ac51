"""Issue 21: the key holder's noise is added once per round release, and the accountant's ε is
dp-accounting's ε for the same events.

The round test drives the real strategy and the real simulated ClientApp (`InProcessGrid`) with a
local learning rate of 0, so every device's update is exactly zero and the released round sum is
the key holder's noise and nothing else: its variance, summed over the released coordinates, is
what one noise draw per coordinate carries. Before issue 21 a round of 200 devices was ten cohorts
of 20, each noised: ten times the noise in the same round."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from flwr.app import Array, ArrayRecord, ConfigRecord
from inprocess_grid import simulation_grid

from fedchurn.server.dp import RDP_ORDERS, PrivacyAccountant, calibrate_noise_multiplier
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.messages import PARAMS_KEY
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("serverapp_identity")

NODES = [11, 12, 13, 14]
N_PARAMS = DEFAULT_SPEC.n_params


def test_a_dp_round_carries_the_key_holders_noise_once() -> None:
    cfg = RunConfig(
        devices=500,
        per_round=200,
        days=40,
        # Updates of about a quantisation step (each device's rounded upload is not all zero, so
        # its data bit is set and it counts towards k), far below the noise: what is released
        # is, within the test's tolerance, the noise alone.
        lr=3e-3,
        strategy="fedavg",
        target_epsilon=2.0,
        delta=1e-6,
        centre_features=False,
        sampling_source="seeded",
        eval_fraction=0.2,
    )
    strategy = make_strategy(cfg, simulation_roster(NODES, cfg.devices))
    grid = simulation_grid(strategy, NODES)
    start = init_params(0)
    msgs = list(strategy.configure_train(1, ArrayRecord({PARAMS_KEY: Array(start)}), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs)
    assert not grid.errors, grid.errors[:2]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.stats.trained == strategy.stats.sampled > 100

    params = strategy.secure.train_params
    m = params.n_coords(N_PARAMS)
    released = (arrays[PARAMS_KEY].numpy().astype(np.float64) - start) * strategy.secure.expected_devices
    sigma = params.noise_std(N_PARAMS)  # one discrete Gaussian draw, in units of the update
    ratio = float(np.sum(released**2)) / (m * sigma**2)
    # chi-square with m ~ 300 degrees of freedom: within +-30 % far beyond 5 sigma
    assert 0.7 < ratio < 1.3, f"the round carries {ratio:.2f} x the noise of one release"
    moved = np.flatnonzero(released)
    # one cohort: every device uploaded the same m coordinates, and only those moved
    assert m - 3 <= len(moved) <= m  # (a coordinate whose noise draw is 0 does not move)


def test_the_accountants_epsilon_is_dp_accountings() -> None:
    """RDP and PLD, against outsiders (Poisson-subsampled Gaussian over the rounds) and against
    the aggregator (the same Gaussian every round, no amplification), computed here directly."""
    z, q, rounds, delta = 1.1, 0.02, 60, 1e-7
    acc = PrivacyAccountant(z, q, sampling="poisson")
    acc.step(rounds)
    rel = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    sampled = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    unsampled = dp_accounting.GaussianDpEvent(z)
    for event, mine in ((sampled, acc.epsilon(delta)), (unsampled, acc.epsilon_aggregator(delta))):
        ref = rdp.RdpAccountant(list(RDP_ORDERS), rel)
        ref.compose(event, rounds)
        assert mine == pytest.approx(ref.get_epsilon(delta), rel=1e-9)
    for event, aggregator in ((sampled, False), (unsampled, True)):
        ref_pld = pld.PLDAccountant(rel, value_discretization_interval=1e-3)
        ref_pld.compose(event, rounds)
        assert acc.epsilon_pld(delta, aggregator=aggregator) == pytest.approx(
            ref_pld.get_epsilon(delta), rel=1e-6
        )
    tight = acc.epsilon_pld(delta)
    assert tight is not None and tight <= acc.epsilon(delta)  # PLD is the tighter of the two
    # no amplification is claimed against the aggregator, which knows who took part
    assert acc.epsilon_aggregator(delta) > 5 * acc.epsilon(delta)
    report = acc.report(delta)
    assert report["epsilon_outsiders"] == acc.epsilon(delta)
    assert report["epsilon_aggregator"] == acc.epsilon_aggregator(delta)


def test_a_run_is_calibrated_for_the_rounds_it_runs() -> None:
    """The noise a DP run uses meets its target after every round it will run (+1 feature-mean
    round), Poisson-sampled at per-round / training devices."""
    cfg = RunConfig(devices=2000, per_round=100, num_server_rounds=30, target_epsilon=1.0, delta=1e-7)
    strategy = make_strategy(cfg, simulation_roster(NODES, cfg.devices))
    secure = strategy.secure
    pool = len(strategy.sampler.train_pool)
    z = calibrate_noise_multiplier(1.0, 1e-7, 100 / pool, 31, sampling="poisson")
    assert secure.noise_multiplier == pytest.approx(z)
    acc = PrivacyAccountant(z, 100 / pool, sampling="poisson")
    acc.step(31)
    assert acc.epsilon(1e-7) <= 1.0 + 1e-6 and not math.isinf(acc.epsilon_aggregator(1e-7))


def test_dp_rounds_are_poisson_samples() -> None:
    """Under DP each training device joins a round independently with rate q: the count is
    Binomial(pool, q) (its variance is npq, not 0 as with a fixed size) and every device joins
    about q of the rounds. Without DP a round is exactly per-round devices."""
    from fedchurn.server.sampling import Sampler

    cfg = RunConfig(devices=500, per_round=50, target_epsilon=1.0, sampling_source="seeded", seed=3)
    sampler = Sampler(cfg, simulation_roster(NODES, cfg.devices))
    n, q = len(sampler.train_pool), sampler.sample_rate
    draws = [sampler.train() for _ in range(3000)]
    counts = np.array([len(d) for d in draws])
    assert counts.mean() == pytest.approx(n * q, rel=0.02)
    assert counts.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    joined = np.zeros(cfg.devices)
    for d in draws:
        assert len({p for p in d}) == len(d)  # without replacement within a round
        joined[[device for _, device in d]] += 1
    train = [device for _, device in sampler.train_pool]
    assert np.abs(joined[train] / len(draws) - q).max() < 0.04
    fixed = Sampler(RunConfig(devices=500, per_round=50, sampling_source="seeded"), sampler.roster)
    assert {len(fixed.train()) for _ in range(20)} == {50}
