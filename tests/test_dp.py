"""DP: calibration hits the target, more noise spends less, the accountant reports every round."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedchurn.server import dp


def test_calibrated_noise_meets_the_target() -> None:
    z = dp.calibrate_noise_multiplier(4.0, 1e-5, 0.01, 200)
    acc = dp.PrivacyAccountant(z, 0.01)
    acc.step(150)
    for _ in range(50):
        acc.step()
    assert acc.epsilon(1e-5) <= 4.0
    assert acc.epsilon(1e-5) > 3.9  # and it is not wastefully large
    assert dp.epsilon_for(z * 0.98, 1e-5, 0.01, 200) > 4.0


def test_fixed_size_sampling_needs_more_noise() -> None:
    zp = dp.calibrate_noise_multiplier(4.0, 1e-5, 0.05, 10)
    zf = dp.calibrate_noise_multiplier(4.0, 1e-5, 0.05, 10, sampling="fixed", population=1_000)
    assert zf > zp
    assert dp.epsilon_for(zf, 1e-5, 0.05, 10, "fixed", 1_000) <= 4.0
    with pytest.raises(ValueError):
        dp.calibrate_noise_multiplier(4.0, 1e-5, 0.01, 100, sampling="fixed")


def test_more_noise_spends_less() -> None:
    eps = [dp.epsilon_for(z, 1e-5, 0.02, 50) for z in (0.6, 0.8, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in itertools.pairwise(eps))
    targets = [dp.calibrate_noise_multiplier(e, 1e-5, 0.02, 50) for e in (1.0, 8.0)]
    assert targets[0] > targets[1]


def test_accountant_reports_every_round() -> None:
    acc = dp.PrivacyAccountant(1.0, 0.01)
    eps = [e for _ in range(5) if (e := acc.step(delta=1e-5)) is not None]
    assert len(eps) == 5 and eps == sorted(eps) and len(acc.history) == 5
    rep = acc.report(1e-5)
    assert rep["dp"] is True and rep["rounds"] == 5 and rep["epsilon"] == eps[-1]


def test_no_dp_is_explicit() -> None:
    acc = dp.PrivacyAccountant.none()
    acc.step()
    assert math.isinf(acc.epsilon(1e-5))
    assert acc.report(1e-5)["label"] == "NO DIFFERENTIAL PRIVACY"


def test_discrete_gaussian_moments() -> None:
    x = dp.discrete_gaussian(3.0, 4000)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 4 * 3.0 / math.sqrt(4000)
    assert 2.8 < x.std() < 3.2
    assert not dp.discrete_gaussian(0.0, 5).any()
    with pytest.raises(ValueError):
        dp.discrete_gaussian(-1.0, 2)
