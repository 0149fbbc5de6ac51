"""Aggregator: exact cohort sums, and every malformed, replayed or duplicated upload refused untouched."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedchurn.client.protect import protect_update, selected_clipped
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.secure_sum import (
    AggregateResult,
    CohortAggregator,
    CohortRefusedError,
    PlaintextModeWarning,
    apply_update,
)
from fedchurn.shared import wire
from fedchurn.shared.protection import DEFAULT, PLAINTEXT_DEFAULT, ProtectionParams
from fedchurn.shared.wire import Reason

P = 2286
ROUND, COHORT, MODEL, SEED = 5, 2, 11, 99
_RNG = np.random.default_rng(1)  # stochastic rounding: independent draws per device


def _updates(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=P) * 0.02
    return [base + rng.normal(size=P) * 0.01 for _ in range(n)]


def _agg(p: ProtectionParams = DEFAULT, round_id: int = ROUND) -> CohortAggregator:
    return CohortAggregator(p, round_id, COHORT, MODEL, SEED, P)


def _blob(kh: KeyHolder, u: np.ndarray, p: ProtectionParams = DEFAULT, round_id: int = ROUND) -> bytes:
    return protect_update(u, p, kh.public(), round_id, COHORT, MODEL, SEED, _RNG)


def _clipped_sum(ups: list[np.ndarray], p: ProtectionParams = DEFAULT) -> np.ndarray:
    return np.sum([selected_clipped(u, p, SEED) for u in ups], axis=0)


def test_aggregate_equals_plaintext_sum_within_quantisation_error() -> None:
    kh = KeyHolder.generate(k_min=10)
    ups = _updates(40)
    agg = _agg()
    for i, u in enumerate(ups):
        assert agg.add(f"d{i}", _blob(kh, u)).accepted
    res = agg.finalize(kh)
    ref = _clipped_sum(ups)
    step = 1 / DEFAULT.scale(P)
    err = res.sum[res.selected] - ref
    assert np.abs(err).max() <= len(ups) * step  # worst case: every device rounded the same way
    assert np.abs(err).mean() < 0.5 * np.sqrt(len(ups)) * step  # typical: a random walk of roundings
    assert abs(err.mean()) < 4 * 0.5 * step * np.sqrt(len(ups) / err.size)  # unbiased
    unselected = np.setdiff1d(np.arange(P), res.selected)
    assert np.all(res.sum[unselected] == 0)
    assert res.count == 40 and res.mode == "secagg" and res.bytes_received == 40 * 780
    np.testing.assert_allclose(res.mean(), res.sum / 40)


def test_dp_noise_is_in_the_sum_with_the_declared_std() -> None:
    p = DEFAULT.replace(noise_multiplier=1.0, k_min=2)
    kh = KeyHolder.generate(k_min=2)
    ups = _updates(10)
    agg = _agg(p)
    for i, u in enumerate(ups):
        agg.add(f"d{i}", _blob(kh, u, p))
    res = agg.finalize(kh)
    err = res.sum[res.selected] - _clipped_sum(ups, p)
    assert res.noise_std == pytest.approx(p.noise_std(P))
    assert 0.8 * res.noise_std < err.std() < 1.2 * res.noise_std


def _refused(agg: CohortAggregator, blob: bytes, reason: Reason, device: str = "evil") -> None:
    before = agg._sum.total.copy(), agg.count
    v = agg.add(device, blob)
    assert not v.accepted and v.reason is reason, v
    assert np.array_equal(agg._sum.total, before[0]) and agg.count == before[1]


def test_refusals_never_touch_the_sum_and_the_model() -> None:
    kh = KeyHolder.generate(k_min=10)
    ups = _updates(12)
    agg = _agg()
    for i, u in enumerate(ups):
        agg.add(f"d{i}", _blob(kh, u))
    good = _blob(kh, ups[0])
    bad_header = bytearray(good)
    bad_header[0] ^= 1
    _refused(agg, bytes(bad_header), Reason.BAD_MAGIC)
    v1 = bytearray(good)
    v1[2] = 1  # version 1 bound a payload digest the key holder could test guesses against
    _refused(agg, bytes(v1), Reason.UNSUPPORTED_VERSION)
    _refused(agg, _blob(kh, ups[0], round_id=ROUND - 1), Reason.WRONG_ROUND)  # replay from an earlier round
    other_cohort = protect_update(ups[0], DEFAULT, kh.public(), ROUND, COHORT + 1, MODEL, SEED)
    _refused(agg, other_cohort, Reason.WRONG_COHORT)
    stale = protect_update(ups[0], DEFAULT, kh.public(), ROUND, COHORT, MODEL - 1, SEED)
    _refused(agg, stale, Reason.WRONG_MODEL_VERSION)
    other_params = protect_update(
        ups[0], DEFAULT.replace(clip_norm=2.0), kh.public(), ROUND, COHORT, MODEL, SEED
    )
    _refused(agg, other_params, Reason.WRONG_CONFIG)
    other_seed = protect_update(ups[0], DEFAULT, kh.public(), ROUND, COHORT, MODEL, SEED + 1)
    _refused(agg, other_seed, Reason.WRONG_CONFIG)
    _refused(agg, good[:-1], Reason.WRONG_LENGTH)
    _refused(agg, good + b"\0", Reason.WRONG_LENGTH)
    _refused(agg, good[:10], Reason.WRONG_LENGTH)
    _refused(agg, good + bytes(2000), Reason.OVERSIZED)
    plain = protect_update(ups[0], PLAINTEXT_DEFAULT, None, ROUND, COHORT, MODEL, SEED)
    _refused(agg, plain, Reason.OVERSIZED)
    dirty = bytearray(good)
    dirty[-1] |= 0xF0  # 453 x 12 bits leaves 4 padding bits in the last byte
    _refused(agg, bytes(dirty), Reason.MALFORMED_PAYLOAD)
    _refused(agg, good, Reason.DUPLICATE_DEVICE, device="d3")
    replay = agg._uploads["d3"]
    copied = wire.Header(wire.Mode.SECAGG, ROUND, COHORT, MODEL, DEFAULT.config_tag(SEED, P)).pack()
    copied += replay.sealed_seed + wire.pack_bits(replay.values, DEFAULT.ring_bits)
    _refused(agg, copied, Reason.DUPLICATE_SEAL, device="sybil")
    res = agg.finalize(kh)
    assert res.count == 12 and set(res.included) == {f"d{i}" for i in range(12)}
    assert {d.reason for d in res.dropped} >= {Reason.WRONG_ROUND, Reason.OVERSIZED, Reason.DUPLICATE_SEAL}
    ref = _clipped_sum(ups)
    assert np.abs(res.sum[res.selected] - ref).max() <= 12 / DEFAULT.scale(P)
    w0 = np.zeros(P, dtype=np.float32)
    w1 = apply_update(w0, [res])
    assert np.all(np.isfinite(w1)) and np.allclose(w1, res.sum / 12, atol=1e-6)
    assert agg.add("late", good).reason is Reason.COHORT_CLOSED


def test_a_flipped_payload_byte_moves_only_its_coordinate_and_stays_in_the_honest_range() -> None:
    """Wire v2 binds nothing of the payload into the seal (so the key holder has nothing to test
    guesses against): a flipped payload bit is summed like any device's value, and, like any
    malicious device's value, it is bounded by what honest devices can produce (TLS protects
    payloads in transit; the aggregator could change its sum anyway)."""
    kh = KeyHolder.generate(k_min=10)
    ups = _updates(12)
    agg = _agg()
    for i, u in enumerate(ups[:11]):
        agg.add(f"d{i}", _blob(kh, u))
    flipped = bytearray(_blob(kh, ups[11]))
    offset = 200  # payload byte 100, its lowest bit: bit 800 of the payload
    flipped[offset] ^= 0x01
    assert agg.add("flipper", bytes(flipped)).accepted
    res = agg.finalize(kh)
    assert res.count == 12 and not res.dropped
    diff = np.abs(res.sum[res.selected] - _clipped_sum(ups))
    coord = (offset - wire.HEADER_LEN - wire.SEAL_LEN) * 8 // DEFAULT.ring_bits
    assert diff[coord] > 12 / DEFAULT.scale(P)  # nobody could tell, and it counted
    assert np.delete(diff, coord).max() <= 12 / DEFAULT.scale(P)
    per_coord, _ = DEFAULT.honest_sum_bounds(P, 12)
    assert np.abs(res.sum).max() <= per_coord + 1e-9


def test_flipped_seal_byte_is_dropped() -> None:
    kh = KeyHolder.generate(k_min=10)
    ups = _updates(11)
    agg = _agg()
    for i, u in enumerate(ups):
        b = bytearray(_blob(kh, u))
        if i == 4:
            b[wire.HEADER_LEN + 40] ^= 0x80
        agg.add(f"d{i}", bytes(b))
    res = agg.finalize(kh)
    assert [(d.device_id, d.reason) for d in res.dropped] == [("d4", Reason.SEAL_INVALID)]
    assert res.count == 10


def test_cohort_smaller_than_k_is_refused() -> None:
    kh = KeyHolder.generate(k_min=10)
    agg = _agg()
    for i, u in enumerate(_updates(9)):
        agg.add(f"d{i}", _blob(kh, u))
    with pytest.raises(CohortRefusedError) as e:
        agg.finalize(kh)
    assert e.value.reason is Reason.COHORT_TOO_SMALL
    assert not kh.answered(ROUND, COHORT)


def test_key_holder_enforces_its_own_k_even_if_the_aggregator_asks_for_less() -> None:
    kh = KeyHolder.generate(k_min=10)
    p = DEFAULT.replace(k_min=2)
    agg = _agg(p)
    for i, u in enumerate(_updates(5)):
        agg.add(f"d{i}", _blob(kh, u, p))
    with pytest.raises(CohortRefusedError) as e:
        agg.finalize(kh)
    assert e.value.reason is Reason.COHORT_TOO_SMALL


def test_cohort_full() -> None:
    p = DEFAULT.replace(max_cohort=12, k_min=2)
    kh = KeyHolder.generate(k_min=2)
    agg = _agg(p)
    ups = _updates(13)
    for i, u in enumerate(ups[:12]):
        assert agg.add(f"d{i}", _blob(kh, u, p)).accepted
    _refused(agg, _blob(kh, ups[12], p), Reason.COHORT_FULL)


def test_plaintext_mode_is_labelled_and_warns() -> None:
    kh = KeyHolder.generate(k_min=10)
    ups = _updates(10)
    with pytest.warns(PlaintextModeWarning):
        agg = _agg(PLAINTEXT_DEFAULT)
    for i, u in enumerate(ups):
        assert agg.add(
            f"d{i}", protect_update(u, PLAINTEXT_DEFAULT, None, ROUND, COHORT, MODEL, SEED)
        ).accepted
    nan = np.full(P, np.nan, dtype="<f4").tobytes()
    head = wire.Header(
        wire.Mode.PLAINTEXT, ROUND, COHORT, MODEL, PLAINTEXT_DEFAULT.config_tag(SEED, P)
    ).pack()
    assert agg.add("nan", head + nan).reason is Reason.NON_FINITE
    with pytest.warns(PlaintextModeWarning):
        res = agg.finalize(kh)
    assert "PLAINTEXT" in res.label and "NOT PRIVATE" in res.label
    assert "NOT PRIVATE" in res.summary()["label"]
    np.testing.assert_allclose(res.sum, np.sum([u.astype(np.float32) for u in ups], axis=0), atol=1e-5)


def test_summary_names_dropped_devices() -> None:
    r = AggregateResult("secagg", DEFAULT.label, 1, 2, 3, np.zeros(4), 0, (), np.arange(2), (), 0, 0.0)
    assert r.summary()["dropped"] == [] and r.summary()["label"] == DEFAULT.label


def test_finalize_twice_is_refused() -> None:
    kh = KeyHolder.generate(k_min=10)
    agg = _agg()
    for i, u in enumerate(_updates(10)):
        agg.add(f"d{i}", _blob(kh, u))
    agg.finalize(kh)
    with pytest.raises(CohortRefusedError):
        agg.finalize(kh)


def test_no_warnings_in_secagg_mode() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _agg()
