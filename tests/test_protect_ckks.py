"""CKKS mode: devices hold a public context only; sums decrypt within CKKS tolerance, once, for >= k."""

from __future__ import annotations

import numpy as np
import pytest

from fedchurn.client.ckks import PrivateContextError, load_public_context
from fedchurn.client.protect import protect_update, selected_clipped
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.secure_sum import CohortAggregator, CohortRefusedError
from fedchurn.shared.ckks_release import ckks_noise_free_error, ckks_release_std
from fedchurn.shared.protection import CKKS_DEFAULT, NOISE_TAIL_SIGMAS
from fedchurn.shared.wire import Reason

P, SEED = 2286, 8


@pytest.fixture(scope="module")
def kh() -> KeyHolder:
    return KeyHolder.generate(k_min=10, with_ckks=True)


def _cohort(kh: KeyHolder, n: int, cohort: int) -> tuple[CohortAggregator, list[np.ndarray]]:
    ctx = kh.ckks_public_context()
    rng = np.random.default_rng(cohort)
    ups = [rng.normal(size=P) * 0.01 for _ in range(n)]
    agg = CohortAggregator(CKKS_DEFAULT, 2, cohort, 1, SEED, P, ckks_public_context=ctx)
    for i, u in enumerate(ups):
        assert agg.add(
            f"d{i}", protect_update(u, CKKS_DEFAULT, kh.public(ckks=True), 2, cohort, 1, SEED)
        ).accepted
    return agg, ups


def test_ckks_sum_within_tolerance_and_once(kh: KeyHolder) -> None:
    agg, ups = _cohort(kh, 10, 1)
    res = agg.finalize(kh)
    ref = np.sum([selected_clipped(u, CKKS_DEFAULT, SEED) for u in ups], axis=0)
    # Within the release noise, which every CKKS release carries (review 9), and about that noise.
    residual, sigma = res.sum - ref, ckks_release_std(CKKS_DEFAULT, P)
    assert np.abs(residual).max() < NOISE_TAIL_SIGMAS * sigma + ckks_noise_free_error(CKKS_DEFAULT)
    assert abs(float(residual.std()) / sigma - 1) < 0.1, (residual.std(), sigma)
    assert res.mode == "ckks" and "CKKS" in res.label
    again, _ = _cohort(kh, 10, 1)
    with pytest.raises(CohortRefusedError) as e:
        again.finalize(kh)
    assert e.value.reason is Reason.ALREADY_ANSWERED


def test_ckks_small_cohort_refused(kh: KeyHolder) -> None:
    agg, _ = _cohort(kh, 9, 2)
    with pytest.raises(CohortRefusedError) as e:
        agg.finalize(kh)
    assert e.value.reason is Reason.COHORT_TOO_SMALL


def test_ckks_garbage_refused(kh: KeyHolder) -> None:
    agg, _ = _cohort(kh, 1, 3)
    good = protect_update(np.zeros(P), CKKS_DEFAULT, kh.public(ckks=True), 2, 3, 1, SEED)
    bad = bytearray(good)
    bad[130:150] = bytes(20)  # inside the ciphertext (header 20 B, seal 80 B, chunk count, length)
    assert agg.add("x", bytes(bad)).reason in {Reason.MALFORMED_PAYLOAD, Reason.WRONG_LENGTH}
    assert agg.add("y", good[:-5]).reason in {Reason.MALFORMED_PAYLOAD, Reason.WRONG_LENGTH}
    assert agg.add("z", good + bytes(1 << 20)).reason is Reason.OVERSIZED
    assert agg.count == 1


def test_devices_refuse_a_private_context(kh: KeyHolder) -> None:
    assert kh._ckks_contexts is not None
    secret = kh._ckks_contexts[0]
    with pytest.raises(PrivateContextError):
        load_public_context(secret)
    assert not load_public_context(kh.ckks_public_context()).is_private()
