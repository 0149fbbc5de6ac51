"""Batched protection, aggregation and mask sums give exactly what the one-at-a-time paths give.

A simulation node protects hundreds of updates per round with `protect_batch`, the aggregator adds
a cohort at once with `add_batch`, and the key holder expands a cohort's masks at once. Each must be
the one-row path it replaces: byte for byte, verdict for verdict, bit for bit. HPKE seals are
randomised, so a batched seal is checked by opening it to the same seed under the same context.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedchurn.client.protect import (
    MAX_ROUNDING_TRIES,
    NonFiniteUpdateError,
    protect_batch,
    protect_batch_with,
    protect_with,
    quantise,
    quantise_rows,
    selected_clipped,
)
from fedchurn.server.keyholder import KeyHolder, MaskSumRequest, SealedEntry
from fedchurn.server.secure_sum import CohortAggregator, CohortRefusedError, PlaintextModeWarning, Verdict
from fedchurn.shared import wire
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import (
    CKKS_DEFAULT,
    DEFAULT,
    PLAINTEXT_DEFAULT,
    PROTECTIVE_NOISE,
    ProtectionParams,
    round_seed_bytes,
    select_coordinates,
)
from fedchurn.shared.run_config import RunConfig
from fedchurn.shared.wire import Reason

P = 2286
ROUND, COHORT, MODEL, SEED = 7, 3, 2, 41
SK = X25519PrivateKey.generate()
PK = KeyHolderPublic(SK.public_key().public_bytes_raw())

SHIPPED = RunConfig().train_protection(0.0)  # 418 of 2,286 coordinates, 8-bit levels, 13-bit ring
# A coarse parameter set (the defaults before issue 20) on which rounding redraws are easy to force.
COARSE = RunConfig(coords_per_round=680, quant_bits=3, ring_bits=8, coord_clip_factor=3.0).train_protection(
    0.0
)
# (params, n_params): ring widths from 7 to 32 bits, from 10 coordinates to all, with and without padding
SECAGG_CASES = [
    (SHIPPED, P),
    (DEFAULT, P),  # 453 x 12 bits: 4 padding bits
    (RunConfig().train_protection(1.0), P),  # under DP: 544 x 10 bits
    (DEFAULT.replace(coords_per_round=10, quant_bits=3, ring_bits=7, max_cohort=16), 25),
    (DEFAULT.replace(coords_per_round=12, ring_bits=13), 40),
    (DEFAULT.replace(coords_per_round=None, quant_bits=5, ring_bits=16, clip_norm=2.0), 30),
    (DEFAULT.replace(coords_per_round=77, quant_bits=9, ring_bits=31, coord_clip_factor=1.5), 300),
    (DEFAULT.replace(coords_per_round=None, quant_bits=20, ring_bits=32, max_cohort=64), 50),
]
CASE_IDS = [f"b{p.ring_bits}-m{p.n_coords(n)}" for p, n in SECAGG_CASES]


# --- helpers ---


def _updates(n: int, n_params: int, seed: int) -> np.ndarray:
    """Rows of every kind: zero, tiny, typical, near and far above the clip norm."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.0, 1e-6, 0.01, 0.1, 10.0], size=(n, 1))
    return rng.normal(size=(n, n_params)) * scale


def _seeds(n: int) -> list[bytes]:
    return [os.urandom(wire.SEED_LEN) for _ in range(n)]


def _rngs(seeds: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def _same_upload(
    batched: bytes, single: bytes, p: ProtectionParams, seed: bytes, round_seed: bytes | int, n_params: int
) -> None:
    """Equal bytes but for the seal, which HPKE randomises: both seals open to the same seed under
    the same context."""
    if p.mode != "secagg":
        assert batched == single
        return
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    assert len(batched) == len(single)
    assert batched[: wire.HEADER_LEN] == single[: wire.HEADER_LEN]
    assert batched[cut:] == single[cut:]
    info = wire.seal_info(batched[: wire.HEADER_LEN], p.config_digest(round_seed, n_params))
    opened = [wire.SEAL_SUITE.decrypt(b[wire.HEADER_LEN : cut], SK, info=info) for b in (batched, single)]
    # the same seed, its first bit (version 3's data bit) set by the device's values
    assert opened[0] == opened[1] == wire.with_data_bit(seed, wire.carries_data(opened[0]))


def _check_batch(
    p: ProtectionParams,
    n_params: int,
    x: np.ndarray,
    cohorts: list[int],
    round_seeds: list[bytes | int],
    rng_seeds: list[int],
) -> list[bytes]:
    """protect_batch_with against protect_with, device by device, with the same seeds and coins."""
    pk = PK if p.mode != "plaintext" else None
    seeds = _seeds(len(x))
    batched = protect_batch_with(x, p, pk, ROUND, cohorts, MODEL, round_seeds, seeds, _rngs(rng_seeds))
    assert len(batched) == len(x)
    for i in range(len(x)):
        rng = np.random.default_rng(rng_seeds[i])
        single = protect_with(x[i], p, pk, ROUND, cohorts[i], MODEL, round_seeds[i], seeds[i], rng)
        _same_upload(batched[i], single, p, seeds[i], round_seeds[i], n_params)
    return batched


def _rounding_tries(sub: np.ndarray, p: ProtectionParams, n_params: int, rng_seed: int) -> int:
    """How many draws `quantise` makes for this vector and generator seed (its loop, replayed)."""
    rng = np.random.default_rng(rng_seed)
    v = sub * p.scale(n_params)
    low = np.floor(v)
    bound2 = p.sensitivity_int(n_params) ** 2
    for tries in range(1, MAX_ROUNDING_TRIES + 1):
        q = low + (rng.random(v.shape) < v - low)
        if float(np.dot(q, q)) <= bound2:
            return tries
    return MAX_ROUNDING_TRIES + 1


# --- wire: the batched codecs equal the row functions ---


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 32), st.integers(0, 6), st.integers(0, 40), st.data())
def test_pack_and_unpack_rows_equal_the_row_functions(
    bits: int, n_rows: int, count: int, data: st.DataObject
) -> None:
    flat = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n_rows * count, max_size=n_rows * count))
    values = np.asarray(flat, dtype=np.uint64).reshape(n_rows, count)
    rows = wire.pack_bits_rows(values, bits)
    assert rows == [wire.pack_bits(v, bits) for v in values]
    back = wire.unpack_bits_rows(rows, bits, count)
    assert back.dtype == np.uint64 and back.shape == (n_rows, count)
    assert np.array_equal(back, values)
    grid = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n_rows, wire.packed_len(count, bits))
    assert np.array_equal(wire.unpack_bits_rows(grid, bits, count), values)
    assert np.array_equal(wire.fields_rows(grid, bits, count), values)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 32),
    st.integers(1, 30),
    st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=5),
)
def test_padding_verdicts_per_row_equal_unpack_bits(bits: int, count: int, noise: list[bytes]) -> None:
    """Rows of arbitrary bytes: unpack_bits refuses a row exactly when padding_ok_rows says so, and
    reads the others as fields_rows does."""
    n = wire.packed_len(count, bits)
    raw = [(r * n)[:n] for r in noise]
    grid = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), n)
    ok = wire.padding_ok_rows(grid, bits, count)
    fields = wire.fields_rows(grid, bits, count)
    for i, r in enumerate(raw):
        try:
            single = wire.unpack_bits(r, bits, count)
        except wire.WireError as e:
            assert e.reason is Reason.MALFORMED_PAYLOAD and not ok[i]
        else:
            assert ok[i] and np.array_equal(fields[i], single)
    if not ok.all():
        with pytest.raises(wire.WireError) as refused:
            wire.unpack_bits_rows(raw, bits, count)
        assert refused.value.reason is Reason.MALFORMED_PAYLOAD


@pytest.mark.parametrize("bits", [1, 7, 8, 12, 16, 32])
def test_unpack_rows_refuses_a_wrong_length_and_pack_rows_a_wide_value(bits: int) -> None:
    rows = wire.pack_bits_rows(np.ones((3, 5), dtype=np.uint64), bits)
    for bad in ([rows[0], rows[1] + b"\0", rows[2]], [rows[0][:-1]]):
        with pytest.raises(wire.WireError) as e:
            wire.unpack_bits_rows(bad, bits, 5)
        assert e.value.reason is Reason.WRONG_LENGTH
    with pytest.raises(ValueError):
        wire.pack_bits_rows(np.full((2, 3), 2**bits, dtype=np.uint64), bits)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 32), st.integers(0, 700), st.lists(st.binary(min_size=32, max_size=32), max_size=5))
def test_mask_streams_equal_mask_stream(bits: int, count: int, seeds: list[bytes]) -> None:
    masks = wire.mask_streams(seeds, count, bits)
    assert masks.shape == (len(seeds), count) and masks.dtype == np.uint64
    for i, s in enumerate(seeds):
        assert np.array_equal(masks[i], wire.mask_stream(s, count, bits))


# --- device: protect_batch_with equals protect_with, device by device ---


@pytest.mark.parametrize(("p", "n_params"), SECAGG_CASES, ids=CASE_IDS)
def test_secagg_batch_equals_single_uploads(p: ProtectionParams, n_params: int) -> None:
    n = 24
    x = _updates(n, n_params, seed=p.ring_bits)
    x[0] = 0.0
    pool: list[bytes | int] = [SEED, SEED + 1, b"\x05" * 32]
    _check_batch(p, n_params, x, [i % 4 for i in range(n)], [pool[i % 3] for i in range(n)], list(range(n)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SECAGG_CASES))),
    st.integers(0, 12),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3),
)
def test_secagg_batch_equals_single_uploads_for_any_mix(
    case: int, n: int, seed: int, pool: list[int]
) -> None:
    """Any number of devices, each with its own cohort and one of a few round seeds."""
    p, n_params = SECAGG_CASES[case]
    rng = np.random.default_rng(seed)
    x = _updates(n, n_params, seed)
    cohorts = [int(c) for c in rng.integers(0, 2**32, size=n)]
    round_seeds: list[bytes | int] = [pool[int(k)] for k in rng.integers(0, len(pool), n)]
    _check_batch(p, n_params, x, cohorts, round_seeds, [int(s) for s in rng.integers(0, 2**63, size=n)])


def _near_the_bound(n: int, seed: int) -> np.ndarray:
    """Coarse-parameter updates just inside the clip norm with every selected coordinate half-way
    between two levels: their rounded norm exceeds the bound on some draws (a redraw)."""
    p = COARSE
    m, s = p.n_coords(P), p.scale(P)
    rng = np.random.default_rng(seed)
    # |v| in {2.5, 1.5, 0.5} ring units with 6 n1 + 2 n2 = 508 < 2 m: ||v|| just below C s
    levels = np.array([2.5] * 80 + [1.5] * 14 + [0.5] * (m - 94))
    v = np.stack([rng.permutation(levels) * rng.choice([-1.0, 1.0], size=m) for _ in range(n)])
    x = np.zeros((n, P))
    x[:, select_coordinates(p, SEED, P)] = v / s
    subs = np.stack([selected_clipped(x[i], p, SEED) for i in range(n)])
    assert np.allclose(subs * s, v)  # neither clip moved anything
    return x


def test_rounding_retries_draw_each_devices_own_generator_in_order() -> None:
    """The batch redraws only the devices above the bound, from their own generators, and leaves
    every generator where the one-device path leaves it."""
    p, n_params, n = COARSE, P, 60
    x = _near_the_bound(n, seed=3)
    subs = np.stack([selected_clipped(x[i], p, SEED) for i in range(n)])
    tries = [_rounding_tries(subs[i], p, n_params, i) for i in range(n)]
    assert max(tries) > 1, tries
    _check_batch(p, n_params, x, [COHORT] * n, [SEED] * n, list(range(n)))
    gens = _rngs(list(range(n)))
    quantise_rows(subs, p, n_params, gens)
    for i in range(n):
        ref = np.random.default_rng(i)
        quantise(subs[i], p, n_params, ref)
        assert gens[i].random() == ref.random()


def test_rows_that_never_meet_the_bound_round_toward_zero_after_every_try() -> None:
    """A vector beyond the clip (no honest device sends one) fails every try: 32 draws, then trunc."""
    p, n_params = DEFAULT, P
    a = p.coord_clip(n_params)
    subs = np.full((3, p.n_coords(n_params)), a * 0.999)
    subs[1] *= -1
    subs[2, ::2] = 0.3 * a
    gens = _rngs([0, 1, 2])
    got = quantise_rows(subs, p, n_params, gens)
    for i in range(3):
        ref = np.random.default_rng(i)
        assert np.array_equal(got[i], quantise(subs[i], p, n_params, ref))
        assert gens[i].random() == ref.random()


def test_one_generator_shared_by_every_device_is_drawn_in_device_order() -> None:
    """A simulation may hand every device the same generator: its draws then follow device order."""
    p, n = COARSE, 30
    x = _near_the_bound(n, seed=5)  # redraws: the order of draws matters
    seeds = _seeds(n)
    shared = np.random.default_rng(9)
    batched = protect_batch_with(x, p, PK, ROUND, [COHORT] * n, MODEL, [SEED] * n, seeds, [shared] * n)
    ref = np.random.default_rng(9)
    for i in range(n):
        single = protect_with(x[i], p, PK, ROUND, COHORT, MODEL, SEED, seeds[i], ref)
        _same_upload(batched[i], single, p, seeds[i], SEED, P)
    assert shared.random() == ref.random()


@pytest.mark.parametrize(
    "p",
    [PLAINTEXT_DEFAULT, PLAINTEXT_DEFAULT.replace(clip_norm=0.5, coords_per_round=100)],
    ids=["unclipped", "clipped"],
)
def test_plaintext_batch_equals_single_uploads(p: ProtectionParams) -> None:
    n = 10
    x = _updates(n, P, seed=1)
    _check_batch(p, P, x, list(range(n)), [SEED if i % 2 else SEED + 9 for i in range(n)], list(range(n)))


def test_ckks_batch_sums_like_single_uploads() -> None:
    """CKKS loops over protect_with (its ciphertexts are randomised): compare what they sum to,
    within the noise every CKKS release carries (review 9), with updates far above it (up to 1.5
    per coordinate) so that a misplaced coordinate could not hide in it."""
    from fedchurn.shared.ckks_release import ckks_noise_free_error, ckks_release_std
    from fedchurn.shared.protection import NOISE_TAIL_SIGMAS

    p = CKKS_DEFAULT.replace(k_min=2, coords_per_round=100, clip_norm=5.0)
    kh = KeyHolder.generate(k_min=2, with_ckks=True, ckks_params=p)
    pub = kh.public(ckks=True)
    x = np.random.default_rng(2).normal(size=(3, P))
    blobs = protect_batch(x, p, pub, ROUND, [COHORT] * 3, MODEL, [SEED] * 3, [None] * 3)
    agg = CohortAggregator(p, ROUND, COHORT, MODEL, SEED, P, ckks_public_context=pub.ckks_context)
    assert all(v.accepted for v in agg.add_batch(["a", "b", "c"], blobs))
    res = agg.finalize(kh)
    ref = np.sum([selected_clipped(u, p, SEED) for u in x], axis=0)
    bound = NOISE_TAIL_SIGMAS * ckks_release_std(p, P) + ckks_noise_free_error(p)
    assert np.abs(res.sum[res.selected] - ref).max() < bound < np.abs(ref).max() / 2


def test_batch_refuses_what_the_single_path_refuses() -> None:
    x = _updates(3, P, seed=0)
    gens = _rngs([0, 1, 2])
    bad = x.copy()
    bad[1, 7] = np.nan
    with pytest.raises(NonFiniteUpdateError):
        protect_batch_with(bad, SHIPPED, PK, ROUND, [1, 2, 3], MODEL, [SEED] * 3, _seeds(3), gens)
    with pytest.raises(ValueError, match="key holder"):
        protect_batch_with(x, SHIPPED, None, ROUND, [1, 2, 3], MODEL, [SEED] * 3, _seeds(3), gens)
    with pytest.raises(ValueError, match="one entry per device"):
        protect_batch_with(x[:2], SHIPPED, PK, ROUND, [1, 2, 3], MODEL, [SEED] * 3, _seeds(3), gens)
    with pytest.raises(ValueError, match="32 bytes"):
        protect_batch_with(x, SHIPPED, PK, ROUND, [1, 2, 3], MODEL, [SEED] * 3, [b"short"] * 3, gens)
    with pytest.raises(ValueError):
        protect_batch_with(x[0], SHIPPED, PK, ROUND, [1] * P, MODEL, [SEED] * P, _seeds(P), [gens[0]] * P)
    assert protect_batch_with(np.zeros((0, P)), SHIPPED, PK, ROUND, [], MODEL, [], [], []) == []


def test_protect_batch_uploads_sum_through_the_aggregator_and_key_holder() -> None:
    kh = KeyHolder.generate(k_min=10)
    x = np.random.default_rng(4).normal(size=(20, P)) * 0.01
    blobs = protect_batch(x, SHIPPED, kh.public(), ROUND, [COHORT] * 20, MODEL, [SEED] * 20, [None] * 20)
    assert {len(b) for b in blobs} == {780} and len(set(blobs)) == 20
    agg = CohortAggregator(SHIPPED, ROUND, COHORT, MODEL, SEED, P)
    assert all(v.accepted for v in agg.add_batch([f"d{i}" for i in range(20)], blobs))
    res = agg.finalize(kh)
    ref = np.sum([selected_clipped(u, SHIPPED, SEED) for u in x], axis=0)
    assert np.abs(res.sum[res.selected] - ref).max() <= 20 / SHIPPED.scale(P)


# --- aggregator: add_batch equals add, upload after upload ---

N_GOOD = 16


def _mixed_params(mode: str) -> ProtectionParams:
    if mode == "plaintext":
        return PLAINTEXT_DEFAULT.replace(coords_per_round=60, clip_norm=1.0, max_cohort=14, k_min=3)
    return DEFAULT.replace(max_cohort=14, k_min=3)  # 453 x 12 bits: 4 padding bits to dirty


@functools.cache
def _mixed_uploads(mode: str) -> tuple[tuple[str, bytes], ...]:
    """N_GOOD good uploads (devices d0..d15), then every kind of bad one, some under repeated ids."""
    p = _mixed_params(mode)
    pk = PK if mode == "secagg" else None
    x = np.random.default_rng(8).normal(size=(N_GOOD, P)) * 0.05
    good = protect_batch_with(
        x, p, pk, ROUND, [COHORT] * N_GOOD, MODEL, [SEED] * N_GOOD, _seeds(N_GOOD), _rngs(list(range(N_GOOD)))
    )
    other = PLAINTEXT_DEFAULT if mode == "secagg" else SHIPPED
    other_pk = PK if other.mode == "secagg" else None
    other_blob = protect_with(x[0], other, other_pk, ROUND, COHORT, MODEL, SEED, bytes(32), _rngs([0])[0])

    def edit(blob: bytes, at: int, value: bytes) -> bytes:
        return blob[:at] + value + blob[at + len(value) :]

    g = good[0]
    items: list[tuple[str, bytes]] = [(f"d{i}", b) for i, b in enumerate(good)]
    items += [
        ("garbage", os.urandom(len(g))),
        ("short", g[:10]),
        ("empty", b""),
        ("magic", edit(g, 0, b"XX")),
        ("version", edit(g, 2, b"\x01")),
        ("mode_byte", edit(g, 3, b"\x09")),
        ("other_mode", edit(g, 3, bytes([2]))),
        ("other_blob", other_blob),
        ("round", edit(g, 4, (ROUND + 1).to_bytes(4, "little"))),
        ("cohort", edit(g, 8, (COHORT + 1).to_bytes(4, "little"))),
        ("model", edit(g, 12, (MODEL + 1).to_bytes(4, "little"))),
        ("config", edit(g, 16, b"\0\0\0\0")),
        ("truncated", g[:-1]),
        ("extended", g + b"\0"),
        ("oversized", g + bytes(p.max_upload_bytes)),
        ("d1", good[2]),  # a device id twice, the second time with another device's upload
        ("d0", good[0]),  # the same upload twice
        ("sybil", good[5]),  # secagg: a replayed seal under another id
        ("late", good[-1]),
    ]
    if mode == "secagg":
        items.append(("dirty", g[:-1] + bytes([g[-1] | 0xF0])))
    else:
        items.append(("nan", edit(g, wire.HEADER_LEN + 8, np.float32(np.nan).tobytes())))
        items.append(("inf", edit(g, wire.HEADER_LEN + 4, np.float32(-np.inf).tobytes())))
    return tuple(items)


def _state(agg: CohortAggregator) -> tuple:
    uploads = [(d, np.asarray(u.values).tobytes(), u.sealed_seed) for d, u in agg._uploads.items()]
    sums = np.asarray(agg._sum.total).tobytes()
    return agg.bytes_received, sums, agg.count, uploads, sorted(agg._seals), list(agg._refused)


def _result(agg: CohortAggregator, kh: KeyHolder) -> tuple:
    try:
        r = agg.finalize(kh)
    except CohortRefusedError as e:
        return ("refused", e.reason, e.detail, e.dropped)
    return r.sum.tobytes(), r.count, r.included, r.dropped, r.bytes_received, r.out_of_range, r.norm_clipped


def _reference_add(agg: CohortAggregator, device_id: str, blob: bytes) -> Verdict:
    """`CohortAggregator.add` as it was before `add_batch` (one upload, scalar checks), kept here
    as the oracle: `add` now runs through `add_batch`, so comparing the two alone would compare the
    batch code with itself."""
    agg.bytes_received += len(blob)
    p = agg.params
    if agg._closed:
        return agg._refuse(device_id, Reason.COHORT_CLOSED, "cohort already finalized")
    if device_id in agg._uploads:
        return agg._refuse(device_id, Reason.DUPLICATE_DEVICE, "one upload per device and round")
    if len(blob) > p.max_upload_bytes:
        return agg._refuse(device_id, Reason.OVERSIZED, f"{len(blob)} B > {p.max_upload_bytes} B")
    try:
        h = wire.Header.parse(blob)
        checks = (
            (h.mode is p.wire_mode, Reason.WRONG_MODE, f"mode {h.mode.name}"),
            (h.round_id == agg.round_id, Reason.WRONG_ROUND, f"round {h.round_id} != {agg.round_id}"),
            (h.cohort_id == agg.cohort_id, Reason.WRONG_COHORT, f"cohort {h.cohort_id}"),
            (h.model_version == agg.model_version, Reason.WRONG_MODEL_VERSION, f"model {h.model_version}"),
            (h.config_tag == agg._tag, Reason.WRONG_CONFIG, "parameters or round seed differ"),
        )
        for ok, reason, detail in checks:
            if not ok:
                return agg._refuse(device_id, reason, detail)
        if agg.count >= p.max_cohort:
            return agg._refuse(device_id, Reason.COHORT_FULL, f"max_cohort={p.max_cohort}")
        upload = agg._sum.parse(blob)
    except wire.WireError as e:
        return agg._refuse(device_id, e.reason, e.detail)
    if upload.sealed_seed:
        sid = upload.sealed_seed[: wire.X25519_KEY_LEN]
        if sid in agg._seals:
            return agg._refuse(device_id, Reason.DUPLICATE_SEAL, "this sealed seed was already submitted")
        agg._seals.add(sid)
    agg._sum.add(upload.values)
    agg._uploads[device_id] = upload
    return Verdict(device_id, True)


def _add_both_ways(mode: str, order: list[tuple[str, bytes]], cuts: list[int]) -> list[Verdict]:
    """Add `order` with the reference one-upload path, with `add`, and in batches split at `cuts`:
    the same verdicts, state, key holder result, and refusal once closed."""
    p = _mixed_params(mode)
    ids = [d for d, _ in order]
    blobs = [b for _, b in order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlaintextModeWarning)
        ref, one, many = (CohortAggregator(p, ROUND, COHORT, MODEL, SEED, P) for _ in range(3))
        expected = [_reference_add(ref, d, b) for d, b in order]
        assert [one.add(d, b) for d, b in order] == expected
        batched: list[Verdict] = []
        for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
            batched += many.add_batch(ids[lo:hi], blobs[lo:hi])
        assert batched == expected
        assert _state(many) == _state(one) == _state(ref)
        results = [_result(agg, KeyHolder(SK, k_min=p.k_min)) for agg in (ref, one, many)]
        assert results[0] == results[1] == results[2]
        late = many.add_batch(["z"], [blobs[0]])[0]
        assert late == one.add("z", blobs[0]) == _reference_add(ref, "z", blobs[0])
        assert late.reason is Reason.COHORT_CLOSED
        assert many.bytes_received == one.bytes_received == ref.bytes_received
    return expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["secagg", "plaintext"]), st.data())
def test_add_batch_equals_sequential_add_in_any_order_and_split(mode: str, data: st.DataObject) -> None:
    order = data.draw(st.permutations(list(_mixed_uploads(mode))))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=4)))
    reasons = {v.reason for v in _add_both_ways(mode, order, cuts)}
    # whatever the order: short blobs, bad headers, oversized ones, and more good devices than room
    assert {Reason.WRONG_LENGTH, Reason.BAD_MAGIC, Reason.WRONG_ROUND, Reason.OVERSIZED} <= reasons
    assert Reason.COHORT_FULL in reasons


@pytest.mark.parametrize("mode", ["secagg", "plaintext"])
def test_add_batch_equals_sequential_add_with_the_bad_uploads_first(mode: str) -> None:
    """Bad uploads before the good ones, so that none is refused only because the cohort is full,
    in one batch: every reason appears, each exactly as `add` gives it."""
    items = list(_mixed_uploads(mode))
    verdicts = _add_both_ways(mode, items[N_GOOD:] + items[:N_GOOD], [])
    expected = {
        Reason.WRONG_LENGTH,
        Reason.BAD_MAGIC,
        Reason.UNSUPPORTED_VERSION,
        Reason.WRONG_MODE,
        Reason.WRONG_ROUND,
        Reason.WRONG_COHORT,
        Reason.WRONG_MODEL_VERSION,
        Reason.WRONG_CONFIG,
        Reason.OVERSIZED,
        Reason.DUPLICATE_DEVICE,
        Reason.COHORT_FULL,
        Reason.MALFORMED_PAYLOAD if mode == "secagg" else Reason.NON_FINITE,
    }
    if mode == "secagg":
        expected.add(Reason.DUPLICATE_SEAL)
    assert expected <= {v.reason for v in verdicts}


def test_add_batch_after_earlier_adds_refuses_their_devices_and_seals() -> None:
    p = _mixed_params("secagg")
    good = [b for _, b in _mixed_uploads("secagg")[:N_GOOD]]
    one = CohortAggregator(p, ROUND, COHORT, MODEL, SEED, P)
    many = CohortAggregator(p, ROUND, COHORT, MODEL, SEED, P)
    for agg in (one, many):
        assert agg.add("first", good[0]).accepted and agg.add("second", good[1]).accepted
        assert not agg.add("third", good[2][:-1]).accepted
    ids = ["first", "other", "d2", "d2", "d3", "d4", "third"]
    blobs = [good[2], good[1], good[2], good[3], good[3], good[2], good[4]]
    expected = [_reference_add(one, d, b) for d, b in zip(ids, blobs, strict=True)]
    got = many.add_batch(ids, blobs)
    assert got == expected
    assert [v.reason for v in got] == [
        Reason.DUPLICATE_DEVICE,  # accepted in an earlier add
        Reason.DUPLICATE_SEAL,  # its seal was accepted in an earlier add
        None,
        Reason.DUPLICATE_DEVICE,  # accepted earlier in this batch
        None,  # the refused duplicate did not spend this seal
        Reason.DUPLICATE_SEAL,  # accepted earlier in this batch
        None,  # refused before, accepted now: only an accepted upload is the device's one
    ]
    assert _state(many) == _state(one)
    with pytest.raises(ValueError):
        many.add_batch(["a"], [])
    assert many.add_batch([], []) == []


# --- key holder: the vectorised mask sum is the sum of every seed's mask ---


@pytest.mark.parametrize(("p", "n_params"), SECAGG_CASES, ids=CASE_IDS)
def test_key_holder_mask_sum_is_the_sum_of_every_seeds_mask(p: ProtectionParams, n_params: int) -> None:
    n = min(p.max_cohort, 40)
    # k = 1: at 7 bits and 10 coordinates most of these rows round to nothing (no data bit)
    p = p.replace(k_min=1, noise_multiplier=0.0)
    seeds = _seeds(n)
    x = _updates(n, n_params, seed=1)
    blobs = protect_batch_with(x, p, PK, ROUND, [COHORT] * n, MODEL, [SEED] * n, seeds, _rngs(list(range(n))))
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    entries = tuple(SealedEntry(f"d{i}", b[wire.HEADER_LEN : cut]) for i, b in enumerate(blobs))
    request = MaskSumRequest(ROUND, COHORT, MODEL, round_seed_bytes(SEED), n_params, p, entries)
    resp = KeyHolder(SK, k_min=p.k_min).mask_sum(request)
    m = p.n_coords(n_params)
    exact = [0] * m
    info = wire.seal_info(blobs[0][: wire.HEADER_LEN], p.config_digest(SEED, n_params))
    sent = [wire.SEAL_SUITE.decrypt(b[wire.HEADER_LEN : cut], SK, info=info) for b in blobs]
    assert all(o[1:] == s[1:] for o, s in zip(sent, seeds, strict=True))  # only the data bit set
    for s in sent:  # Python integers: no overflow whatever the width
        mask = wire.mask_stream(s, m, p.ring_bits)
        exact = [a + int(b) for a, b in zip(exact, mask, strict=True)]
    assert resp.mask_sum.dtype == np.uint64
    assert [int(v) for v in resp.mask_sum] == [v % (1 << p.ring_bits) for v in exact]
    assert len(resp.included) == n and not resp.dropped


def test_masks_of_a_large_32_bit_cohort_sum_without_overflow() -> None:
    seeds = _seeds(300)
    masks = wire.mask_streams(seeds, 50, 32)
    exact = [sum(int(masks[i, j]) for i in range(300)) % 2**32 for j in range(50)]
    assert [int(v) for v in masks.sum(axis=0, dtype=np.uint64) & np.uint64(2**32 - 1)] == exact


def test_the_shipped_scale_bench_reports_both_sizes() -> None:
    """The benchmark's figures exist and are consistent (their values are machine-dependent)."""
    from fedchurn.simulations.protection_bench import bench_shipped_scale

    out = bench_shipped_scale(n_small=20)
    shipped = RunConfig().train_protection(0.0)
    assert out["params"]["coords_per_round"] == shipped.coords_per_round
    assert out["params"]["ring_bits"] == shipped.ring_bits
    assert out["cohorts_1000"] == 1 and out["cohorts_10000"] == 7  # 200 updates in cohorts of <= 32
    for key in ("aggregate_1000_s", "aggregate_10000_s", "protect_batch_ms_per_device", "hpke_open_us"):
        assert out[key] > 0, key
    assert out["aggregate_measured"].keys() == {"20", "200"} and "scaled linearly" in out["aggregate_note"]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=wire.SEED_LEN, max_size=wire.SEED_LEN), st.booleans())
def test_the_data_bit_is_the_seeds_first_bit_and_nothing_else(seed: bytes, has_data: bool) -> None:
    marked = wire.with_data_bit(seed, has_data)
    assert wire.carries_data(marked) is has_data
    assert marked[0] & 0x7F == seed[0] & 0x7F and marked[1:] == seed[1:]
    assert wire.with_data_bit(marked, has_data) == marked


@pytest.mark.parametrize(
    ("p", "n_params"),
    [*SECAGG_CASES[:3], (RunConfig().train_protection(1e-300), P)],
    ids=[*CASE_IDS[:3], "negligible-noise"],
)
def test_a_device_says_in_its_seal_whether_its_upload_carries_anything(
    p: ProtectionParams, n_params: int
) -> None:
    """Decision 150: a row whose rounded values are all zero (a device without data, or values
    far below a quantisation step) seals a seed with the data bit clear, any other row with it
    set, whatever seed it was given; under noise that protects one device every row sets it
    (review 16: the key holder's refusal for want of data is an answer without noise), under less
    the bit follows the row (review 18: a multiplier of 1e-300 drew exact zeros)."""
    n = 6
    x = np.random.default_rng(5).normal(size=(n, n_params)) * 0.01
    x[0] = 0.0
    x[1, :] = 0.0
    x[1, 3] = 1e-9  # one tiny value: it rounds to 0 (its chance of a step is ~1e-7)
    seeds = [bytes([0x80 if i % 2 else 0x00]) + os.urandom(wire.SEED_LEN - 1) for i in range(n)]
    blobs = protect_batch_with(x, p, PK, ROUND, [COHORT] * n, MODEL, [SEED] * n, seeds, _rngs(list(range(n))))
    info = wire.seal_info(blobs[0][: wire.HEADER_LEN], p.config_digest(SEED, n_params))
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    opened = [wire.SEAL_SUITE.decrypt(b[wire.HEADER_LEN : cut], SK, info=info) for b in blobs]
    forced = p.noise_multiplier >= PROTECTIVE_NOISE
    expected = [True] * n if forced else [False, False, True, True, True, True]
    assert [wire.carries_data(s) for s in opened] == expected
    assert all(o[1:] == s[1:] for o, s in zip(opened, seeds, strict=True))
