"""Evaluations the key holder releases with noise (`--eval-noise`), and the devices' own floor
(`min-noise`) that refuses a release noised less (decision 151; the attack it answers is
`test_attacks.py::test_attack_an_exact_evaluation_shows_a_held_out_device_alone_in_its_score_bin`)."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from flwr.app import Array, ArrayRecord
from inprocess_grid import simulation_grid

from fedchurn.client.device_config import MIN_NOISE_KEY, noise_floor
from fedchurn.client.flower_app import _check_noise, _upload_params
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.evaluation import (
    N_BINS,
    NOISY_BINS,
    NOISY_MAX_COHORT,
    device_histogram,
    metrics_from_histogram,
)
from fedchurn.shared.keyholder_pin import PinError
from fedchurn.shared.messages import PARAMS_KEY, RoundTask
from fedchurn.shared.model_format import init_params
from fedchurn.shared.run_config import RunConfig

HORIZON = 14
NODES = [101, 102, 103]


def _population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores that rank churners above others (AUC ~0.8), churn days spread over the horizon."""
    rng = np.random.default_rng(seed)
    event = rng.random(n) < 0.3
    logit = rng.normal(size=n) + 1.2 * event - 1.0
    day = np.where(event, rng.integers(1, HORIZON + 1, size=n), 0)
    return 1 / (1 + np.exp(-logit)), day, event


def _histogram(prob: np.ndarray, day: np.ndarray, event: np.ndarray, bins: int, outcomes: int) -> np.ndarray:
    """The population's summed histogram, as the devices' own `device_histogram` builds it."""
    cells = zip(prob, np.minimum(day, outcomes), event, strict=True)
    hists = (device_histogram(float(p), int(t), bool(e), outcomes, bins) for p, t, e in cells)
    return sum(hists, start=np.zeros(2 * bins * (outcomes + 1)))


def test_a_noised_histogram_counts_its_devices_and_ranks_them_as_the_exact_one() -> None:
    """At z = 1 every cell carries noise of ~1.85 devices (`RunConfig.eval_protection`). Cutting
    each cell at zero (as exact histograms allowed) adds a phantom device per few empty cells and
    ranks churners lower. The counts and ROC-AUC now read the cells as they are: on 2,000 devices
    the count stays within a few percent and ROC-AUC within a few hundredths of the exact
    80-bin, 14-day histogram's."""
    prob, day, event = _population(2000, seed=1)
    exact = metrics_from_histogram(_histogram(prob, day, event, N_BINS, HORIZON), HORIZON)
    cfg = RunConfig(eval_noise=1.0)
    clean = _histogram(prob, day, event, cfg.eval_bins, cfg.eval_outcomes)
    p, n = cfg.eval_protection(), cfg.eval_length
    sigma = p.noise_std_int(n) / p.level  # in devices
    assert (cfg.eval_bins, cfg.eval_outcomes, len(clean)) == (NOISY_BINS, 1, n) and 1.5 < sigma < 2.5
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(20):
        noised = metrics_from_histogram(clean + rng.normal(0, sigma, size=n), 1, NOISY_BINS, noised=True)
        assert noised["devices"] == pytest.approx(2000, rel=0.03)
        assert "roc_auc_ci95" not in noised and "pr_auc_ci95" not in noised  # they leave the noise out
        errors.append(noised["roc_auc"] - exact["roc_auc"])
    assert abs(np.mean(errors)) < 0.01 and max(np.abs(errors)) < 0.04


def test_an_exact_histogram_reads_as_before() -> None:
    """Reading the cells as they are changes nothing where no cell is negative."""
    prob, day, event = _population(500, seed=3)
    m = metrics_from_histogram(_histogram(prob, day, event, N_BINS, HORIZON), HORIZON)
    assert m["devices"] == 500 and m["positives"] == float(event.sum())
    ranks = np.empty(len(prob))
    ranks[np.argsort(prob)] = np.arange(1, len(prob) + 1)
    P, N = event.sum(), (~event).sum()
    exact_auc = (ranks[event].sum() - P * (P + 1) / 2) / (P * N)
    assert m["roc_auc"] == pytest.approx(exact_auc, abs=0.01)  # binned: ties inside a bin count half


@pytest.mark.parametrize("z", [0.5, 2.0, 8.0])
def test_the_report_gives_the_held_out_devices_epsilon_from_dp_accounting(z: float) -> None:
    """One evaluation per device per run (its ledger). Two held-out devices' histograms, as the
    device's own code quantises them, differ by at most 2 x level (each has a count of exactly the
    level and a score sum of at most it), so epsilon is one Gaussian release at the noise over that
    distance (replace-one), not over the looser bound the noise is calibrated to (review 16)."""
    from fedchurn.client.protect import _selected_clipped_rows, quantise_rows
    from fedchurn.server.secure_rounds import SecureRounds

    cfg = RunConfig(eval_noise=z, k_min=10)
    p, n = cfg.eval_protection(), cfg.eval_length
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.random(300), [0.0, 1.0, 1 - 1e-12]])
    rows = np.stack([device_histogram(float(q), e, bool(e), 1, NOISY_BINS) for q in probs for e in (0, 1)])
    coins = [np.random.default_rng(i) for i in range(len(rows))]
    q = quantise_rows(_selected_clipped_rows(rows, p, bytes(32)), p, n, coins).astype(np.float64)
    moved = max(np.linalg.norm(q[i] - q[j]) for i in (0, 1, len(q) - 2, len(q) - 1) for j in range(len(q)))
    assert moved <= 2 * p.level
    report = SecureRounds(cfg, 100).privacy_report(0)["evaluation"]
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.GaussianDpEvent(p.noise_std_int(n) / (2 * p.level)))
    assert report["epsilon_per_run"] == pytest.approx(acc.get_epsilon(cfg.delta), rel=1e-6)
    loose = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    loose.compose(dp_accounting.GaussianDpEvent(z / 2))
    assert report["epsilon_per_run"] < loose.get_epsilon(cfg.delta)  # the z / 2 of the first version
    assert report["counts"] == "noised" and report["score_bins"] == NOISY_BINS
    assert report["upload_bytes"] == p.upload_bytes(n)
    exact = SecureRounds(RunConfig(k_min=10), 100).privacy_report(0)["evaluation"]
    assert exact["epsilon_per_run"] is None and exact["counts"] == "exact"


def test_an_evaluation_counts_its_devices_in_either_scheme_noised_or_not(serverapp_identity: None) -> None:
    """The simulation ClientApp uploads its histograms, the aggregator accepts their size, the key
    holder releases the cohort (noised as asked; the noise itself: the attack test), and the
    metrics count the same devices as secagg's exact release, give or take the release's noise.
    CKKS clipped each coordinate to 0.09 (its default factor), so a release of 99 devices read
    as 8: every count arrived as 0.09 (decision 151)."""
    from fedchurn.shared.ckks_release import ckks_release_std

    arrays = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    counted: dict[tuple[str, float], tuple[float, float]] = {}
    for run_id, (protection, z) in enumerate(itertools.product(("secagg", "ckks"), (0.0, 1.0)), start=5):
        cfg = RunConfig(
            devices=240, per_round=12, k_min=5, eval_fraction=0.5, strategy="fedavg", days=60,
            eval_noise=z, protection=protection,
        )  # fmt: skip
        strategy = make_strategy(cfg, simulation_roster(NODES, cfg.devices))
        grid = simulation_grid(strategy, NODES, run_id=run_id)  # a new run: a device evaluates once per run
        metrics = strategy.evaluate_all(grid, arrays, 1, 60.0)  # type: ignore[arg-type]
        assert not grid.errors, grid.errors[:2]
        p, n = cfg.eval_protection(), cfg.eval_length
        cell = ckks_release_std(p, n) if p.scheme.homomorphic else p.noise_std_int(n) / p.level
        counted[protection, z] = metrics["devices"], cell * math.sqrt(n // 2)  # the count's noise
    reference = counted["secagg", 0.0][0]
    assert reference >= 30 and reference == round(reference)
    for (protection, z), (devices, sigma) in counted.items():
        assert devices == pytest.approx(reference, abs=5 * sigma + 1e-9), (protection, z)


@pytest.mark.parametrize("raw", ["-1", "nan", "abc", "101", True])
def test_a_bad_min_noise_is_refused_naming_it(raw: object) -> None:
    with pytest.raises(PinError, match=MIN_NOISE_KEY):
        noise_floor({MIN_NOISE_KEY: raw})


@pytest.mark.parametrize(
    ("purpose", "z", "cfg", "refused"),
    [
        ("train", 0.0, RunConfig(), True),
        ("train", 0.99, RunConfig(), True),
        ("train", 1.0, RunConfig(), False),
        ("stats", 0.5, RunConfig(), True),
        ("evaluate", 0.0, RunConfig(eval_noise=0.5), True),
        ("evaluate", 0.0, RunConfig(eval_noise=1.0), False),
        ("train", 5.0, RunConfig(protection="plaintext"), True),  # no key holder, no noise at all
    ],
)
def test_a_node_pinning_min_noise_refuses_a_release_noised_less(
    purpose: str, z: float, cfg: RunConfig, refused: bool
) -> None:
    task = RoundTask(purpose, 1, 1, 1, z, (7,), (0,), (bytes(32),), init_params(0), None)  # type: ignore[arg-type]
    pinned = {MIN_NOISE_KEY: "1.0"}
    params = _upload_params(cfg, task)[0]
    if refused:
        with pytest.raises(ValueError, match=MIN_NOISE_KEY):
            _check_noise(pinned, cfg, task, params)
    else:
        _check_noise(pinned, cfg, task, params)
    _check_noise({}, cfg, task, params)  # not pinned: every release is answered


def test_a_runs_held_out_devices_carry_the_noise_once() -> None:
    """Each release is noised, so a noised evaluation is summed in one cohort where the ring allows
    (secagg: up to 16,384 devices); exact evaluations keep cohorts of 128. A first version of
    decision 151 kept the one-cohort rule of DP training, whose cohort of 128 left all but 128 of a
    default run's 1,474 held-out devices out of the final evaluation."""
    from fedchurn.server.secure_rounds import SecureRounds

    noised, exact = RunConfig(eval_noise=1.0, k_min=10), RunConfig(k_min=10)
    assert SecureRounds(noised, 100).cohorts(2000, noised.eval_protection(), largest=True) == 1
    assert SecureRounds(noised, 100).cohorts(20_000, noised.eval_protection(), largest=True) == 2
    assert SecureRounds(exact, 100).cohorts(2000, exact.eval_protection(), largest=True) == 16
    assert noised.eval_protection().max_cohort == NOISY_MAX_COHORT


def test_noise_on_a_few_churners_never_reads_as_an_auc_outside_0_to_1() -> None:
    rng = np.random.default_rng(4)
    prob, day, event = _population(60, seed=5)
    clean = _histogram(prob, day, event, NOISY_BINS, 1)
    for _ in range(200):
        m = metrics_from_histogram(clean + rng.normal(0, 4.0, size=len(clean)), 1, NOISY_BINS, noised=True)
        assert "roc_auc" not in m or 0.0 <= m["roc_auc"] <= 1.0


def test_eval_noise_is_checked_with_the_other_settings() -> None:
    with pytest.raises(ValueError, match="--eval-noise"):
        RunConfig(eval_noise=-0.5).check()
    with pytest.raises(ValueError, match="--eval-noise"):
        RunConfig(eval_noise=math.inf).check()
    for z in (0.0, 1.0, 100.0):  # the ring widens until the largest cohort and the noise's tail fit
        cfg = RunConfig(eval_noise=z)
        cfg.check()
        cfg.eval_protection().check_ring(cfg.eval_length)


def test_deploy_pins_min_noise_and_the_node_reads_it() -> None:
    """`fedchurn deploy supernode --min-noise Z` writes the pin into the node's configuration, where
    the node reads it (Flower's own parser), and writes nothing when not asked."""
    from flwr.common.config import parse_config_args

    from fedchurn.deploy_cli import DEFAULT_REPLY_AFTER, _node_extra

    written = _node_extra(5, None, DEFAULT_REPLY_AFTER, None, 0.0, 2.5)
    assert noise_floor(parse_config_args([f'store-dir="/s" {written}'])) == 2.5
    assert MIN_NOISE_KEY not in _node_extra(5, None, DEFAULT_REPLY_AFTER)
