"""Key holder: k-minimum, once per (round, cohort) even across restarts, each seal once, DP policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedchurn.client.protect import protect_update
from fedchurn.server.keyholder import (
    KeyHolder,
    KeyHolderRefusedError,
    KeyHolderStateError,
    MaskSumRequest,
    SealedEntry,
)
from fedchurn.server.secure_sum import CohortAggregator, CohortRefusedError
from fedchurn.shared import wire
from fedchurn.shared.protection import DEFAULT, ProtectionParams, round_seed_bytes
from fedchurn.shared.wire import Reason

P = 2286
SEED = 31


def _entries(
    kh: KeyHolder, n: int, round_id: int = 1, cohort_id: int = 1, p: ProtectionParams = DEFAULT
) -> tuple[SealedEntry, ...]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        blob = protect_update(rng.normal(size=P) * 0.01, p, kh.public(), round_id, cohort_id, 1, SEED, rng)
        sealed = blob[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN]
        out.append(SealedEntry(f"d{i}", sealed))
    return tuple(out)


def _req(
    entries: tuple[SealedEntry, ...], round_id: int = 1, cohort_id: int = 1, p: ProtectionParams = DEFAULT
) -> MaskSumRequest:
    return MaskSumRequest(round_id, cohort_id, 1, round_seed_bytes(SEED), P, p, entries)


def test_answers_a_cohort_once() -> None:
    kh = KeyHolder.generate(k_min=10)
    entries = _entries(kh, 10)
    resp = kh.mask_sum(_req(entries))
    assert resp.mask_sum.shape == (DEFAULT.n_coords(P),) and len(resp.included) == 10 and not resp.dropped
    with pytest.raises(KeyHolderRefusedError) as e:
        kh.mask_sum(_req(entries))
    assert e.value.reason is Reason.ALREADY_ANSWERED


def test_refuses_cohorts_smaller_than_k_without_consuming_anything() -> None:
    kh = KeyHolder.generate(k_min=10)
    entries = _entries(kh, 9)
    with pytest.raises(KeyHolderRefusedError) as e:
        kh.mask_sum(_req(entries))
    assert e.value.reason is Reason.COHORT_TOO_SMALL
    assert not kh.answered(1, 1)


def test_once_only_survives_a_restart(tmp_path: Path) -> None:
    key, state = tmp_path / "kh.key", tmp_path / "kh.sqlite"
    KeyHolder.provision(key, with_ckks=False)
    kh = KeyHolder.open(key, state, k_min=10)
    entries = _entries(kh, 10)
    kh.mask_sum(_req(entries))
    kh.close()
    assert (key.stat().st_mode & 0o777) == 0o600
    again = KeyHolder.open(key, state, k_min=10)
    assert again.public_key() == kh.public_key()
    with pytest.raises(KeyHolderRefusedError) as e:
        again.mask_sum(_req(entries))
    assert e.value.reason is Reason.ALREADY_ANSWERED
    again.close()
    # a state file serves one key: another key's state is refused, and so is a fresh state for a
    # key that has answered with this one (it would answer every cohort again; review 22)
    with pytest.raises(KeyHolderStateError, match="another key holder key"):
        KeyHolder.generate(tmp_path / "kh.sqlite", k_min=10)
    with pytest.raises(KeyHolderStateError, match="not the once-only state this key answered with"):
        KeyHolder.open(key, tmp_path / "fresh.sqlite", k_min=10)
    assert KeyHolder.open(key, state, k_min=10).answered(1, 1)  # its own state still opens


def test_a_seal_is_used_in_one_answer_only() -> None:
    """Overlapping cohorts would let the aggregator difference out one device: refused."""
    kh = KeyHolder.generate(k_min=10)
    entries = _entries(kh, 11)
    kh.mask_sum(_req(entries))
    # same seals presented as another cohort: they do not even open (cohort bound), and are marked used
    with pytest.raises(KeyHolderRefusedError) as e:
        kh.mask_sum(_req(entries[1:], cohort_id=2))
    assert e.value.reason is Reason.COHORT_TOO_SMALL
    assert {d.reason for d in e.value.dropped} == {Reason.SEAL_ALREADY_USED}


def test_duplicates_and_bad_seals_are_named() -> None:
    kh = KeyHolder.generate(k_min=10)
    entries = list(_entries(kh, 13))
    entries.append(SealedEntry("d0", entries[1].sealed_seed))  # device twice
    entries.append(SealedEntry("copycat", entries[2].sealed_seed))  # seal twice
    entries[3] = SealedEntry(
        "d3", entries[3].sealed_seed[:-1] + bytes([entries[3].sealed_seed[-1] ^ 1])
    )  # tag
    entries[4] = SealedEntry("d4", entries[4].sealed_seed[:40] + bytes(40))  # ciphertext replaced
    entries[5] = SealedEntry("d5", entries[5].sealed_seed[:10])  # wrong length
    resp = kh.mask_sum(_req(tuple(entries)))
    assert {(d.device_id, d.reason) for d in resp.dropped} == {
        ("d0", Reason.DUPLICATE_DEVICE),
        ("copycat", Reason.DUPLICATE_SEAL),
        ("d3", Reason.SEAL_INVALID),
        ("d4", Reason.SEAL_INVALID),
        ("d5", Reason.SEAL_INVALID),
    }
    assert len(resp.included) == 10


def test_wrong_context_does_not_open() -> None:
    kh = KeyHolder.generate(k_min=10)
    entries = _entries(kh, 10)
    with pytest.raises(KeyHolderRefusedError) as e:
        kh.mask_sum(MaskSumRequest(1, 1, 2, round_seed_bytes(SEED), P, DEFAULT, entries))  # model version 2
    assert e.value.reason is Reason.COHORT_TOO_SMALL
    assert all(d.reason is Reason.SEAL_INVALID for d in e.value.dropped)


def test_dp_floor_refuses_weaker_noise() -> None:
    kh = KeyHolder.generate(k_min=10, min_noise_multiplier=0.8)
    with pytest.raises(KeyHolderRefusedError) as e:
        kh.mask_sum(_req(_entries(kh, 10)))
    assert e.value.reason is Reason.DP_POLICY


def test_dp_floor_exempts_only_evaluation_histograms_of_their_length() -> None:
    """A DP run's held-out devices still report histograms; model updates stay under the floor."""
    from fedchurn.shared.evaluation import histogram_length
    from fedchurn.shared.run_config import RunConfig

    ev, n = RunConfig(k_min=10).eval_protection(), histogram_length(14)
    kh = KeyHolder.generate(k_min=10, min_noise_multiplier=0.8, noise_exempt=[(ev, n)])
    rng = np.random.default_rng(1)

    def hist_req(length: int, round_id: int) -> MaskSumRequest:
        entries = []
        for i in range(10):
            blob = protect_update(rng.random(length) * 0.1, ev, kh.public(), round_id, 1, 1, SEED, rng)
            sealed = blob[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN]
            entries.append(SealedEntry(f"d{i}", sealed))
        return MaskSumRequest(round_id, 1, 1, round_seed_bytes(SEED), length, ev, tuple(entries))

    assert len(kh.mask_sum(hist_req(n, 1)).included) == 10
    for request in (hist_req(n + 1, 2), _req(_entries(kh, 10, round_id=3), round_id=3)):
        with pytest.raises(KeyHolderRefusedError) as e:
            kh.mask_sum(request)
        assert e.value.reason is Reason.DP_POLICY


@pytest.mark.parametrize(("horizon", "eval_noise"), [(14, 0.0), (30, 0.0), (90, 0.0), (14, 1.5)])
def test_a_deployed_key_holder_exempts_the_evaluations_a_run_of_its_horizon_sends(
    horizon: int, eval_noise: float
) -> None:
    """`fedchurn deploy keyholder --horizon H` must exempt what the aggregator asks for a run of
    horizon H (`SecureRounds`): from 15 days on the histogram's rows are hazard bins, not days."""
    from fedchurn.server.deploy_services import evaluation_exemptions
    from fedchurn.server.secure_rounds import SecureRounds
    from fedchurn.shared.run_config import RunConfig

    for protection in ("secagg", "ckks"):
        for cutoff in ("", "2024-11-25"):  # review 13: a cutoff run's histogram is shorter
            cfg = RunConfig(
                horizon=horizon, k_min=10, protection=protection, cutoff=cutoff, eval_noise=eval_noise
            )
            in_process = SecureRounds(cfg, 100).keyholder  # exempts what this run's evaluations send
            assert isinstance(in_process, KeyHolder)
            exempt = set(evaluation_exemptions(horizon, 10, eval_noise))
            assert set(in_process.noise_exempt) <= exempt
            if eval_noise > 0:  # only the operator's noise: an exact evaluation is not exempt
                assert not exempt & set(evaluation_exemptions(horizon, 10))


def test_key_holder_drops_lead_to_aggregator_dropping_the_masked_vector() -> None:
    kh = KeyHolder.generate(k_min=10)
    rng = np.random.default_rng(4)
    agg = CohortAggregator(DEFAULT, 1, 1, 1, SEED, P)
    other = KeyHolder.generate()
    for i in range(12):
        pk = other.public() if i == 0 else kh.public()  # sealed to the wrong key
        agg.add(f"d{i}", protect_update(rng.normal(size=P) * 0.01, DEFAULT, pk, 1, 1, 1, SEED, rng))
    res = agg.finalize(kh)
    assert [(d.device_id, d.reason) for d in res.dropped] == [("d0", Reason.SEAL_INVALID)]
    assert res.count == 11 and np.abs(res.sum).max() < 1.0  # no stray mask left in the sum


def test_aggregator_refusal_when_key_holder_refuses() -> None:
    kh = KeyHolder.generate(k_min=10)
    rng = np.random.default_rng(4)
    agg = CohortAggregator(DEFAULT, 1, 1, 1, SEED, P)
    for i in range(10):
        agg.add(f"d{i}", protect_update(rng.normal(size=P) * 0.01, DEFAULT, kh.public(), 1, 1, 1, SEED, rng))
    kh.mask_sum(_req(_entries(kh, 10)))  # someone else used (round 1, cohort 1) first
    with pytest.raises(CohortRefusedError) as e:
        agg.finalize(kh)
    assert e.value.reason is Reason.ALREADY_ANSWERED
