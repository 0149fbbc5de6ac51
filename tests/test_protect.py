"""Device side: selection, clipping, stochastic rounding, packing, masking, sealing, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.protect import NonFiniteUpdateError, protect_update, quantise, selected_clipped
from fedchurn.shared import wire
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import DEFAULT, PLAINTEXT_DEFAULT, ProtectionParams, select_coordinates
from fedchurn.shared.run_config import RunConfig

P = 2286


def _pk() -> KeyHolderPublic:
    return KeyHolderPublic(
        X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 32), st.data())
def test_packing_round_trip_at_every_width(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=40))
    packed = wire.pack_bits(np.asarray(values, dtype=np.uint64), bits)
    assert len(packed) == wire.packed_len(len(values), bits)
    assert wire.unpack_bits(packed, bits, len(values)).tolist() == values


@pytest.mark.parametrize("bits", range(1, 33))
def test_packing_refuses_wrong_length_and_dirty_padding(bits: int) -> None:
    packed = wire.pack_bits(np.arange(3, dtype=np.uint64) % (1 << bits), bits)
    with pytest.raises(wire.WireError) as e:
        wire.unpack_bits(packed + b"\0", bits, 3)
    assert e.value.reason is wire.Reason.WRONG_LENGTH
    if (3 * bits) % 8:
        dirty = packed[:-1] + bytes([packed[-1] | 0x80])
        with pytest.raises(wire.WireError) as e:
            wire.unpack_bits(dirty, bits, 3)
        assert e.value.reason is wire.Reason.MALFORMED_PAYLOAD
    with pytest.raises(ValueError):
        wire.pack_bits(np.asarray([2**bits], dtype=np.uint64), bits)


def test_selection_is_public_deterministic_and_uniform() -> None:
    a = select_coordinates(DEFAULT, 7, P)
    assert a.tolist() == select_coordinates(DEFAULT, (7).to_bytes(32, "little"), P).tolist()
    assert len(a) == len(set(a.tolist())) == DEFAULT.coords_per_round
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < P
    assert a.tolist() != select_coordinates(DEFAULT, 8, P).tolist()
    counts = np.zeros(P)
    for seed in range(300):
        counts[select_coordinates(DEFAULT, seed, P)] += 1
    expected = 300 * DEFAULT.coords_per_round / P
    assert abs(counts.mean() - expected) < 1e-9
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < P + 6 * math.sqrt(2 * P)  # chi-square with P-1 dof, far-out tail


def test_default_upload_is_780_bytes_and_within_budget() -> None:
    blob = protect_update(np.random.default_rng(0).normal(size=P), DEFAULT, _pk(), 1, 2, 3, 4)
    assert len(blob) == DEFAULT.upload_bytes(P) == 780 <= 1024
    assert wire.HEADER_LEN + wire.SEAL_LEN + DEFAULT.payload_bytes(P) == 20 + 80 + 680


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_device_refuses_non_finite(bad: float) -> None:
    u = np.zeros(P)
    u[17] = bad
    with pytest.raises(NonFiniteUpdateError):
        protect_update(u, DEFAULT, _pk(), 1, 2, 3, 4)
    with pytest.raises(NonFiniteUpdateError):
        protect_update(u, PLAINTEXT_DEFAULT, None, 1, 2, 3, 4)


def test_device_refuses_wrong_shape() -> None:
    with pytest.raises(ValueError):
        protect_update(np.zeros((2, 3)), DEFAULT, _pk(), 1, 2, 3, 4)


def test_clipping_bounds_the_uploaded_norm() -> None:
    p = DEFAULT
    big = np.random.default_rng(1).normal(size=P) * 100
    sub = selected_clipped(big, p, 9)
    assert np.linalg.norm(sub) <= p.clip_norm + 1e-12
    assert np.abs(sub).max() <= p.coord_clip(P) + 1e-12
    small = np.full(P, 1e-4)
    np.testing.assert_allclose(selected_clipped(small, p, 9), 1e-4)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 60.0), st.integers(0, 2**31 - 1))
def test_the_run_configs_coord_clip_factor_bounds_every_uploaded_coordinate(factor: float, seed: int) -> None:
    """The run config's factor is what the device clips each coordinate to (and what the server,
    building the same parameters, expects): factor x clip-norm / sqrt(coords)."""
    p = RunConfig(
        coord_clip_factor=factor, quant_bits=8, ring_bits=13, coords_per_round=418
    ).train_protection()
    assert p.coord_clip(P) == pytest.approx(factor * p.clip_norm / math.sqrt(418))
    spiky = np.zeros(P)
    spiky[np.random.default_rng(seed).integers(0, P, 3)] = 10.0  # all the energy in a few coordinates
    sub = selected_clipped(spiky, p, seed)
    assert np.abs(sub).max() <= p.coord_clip(P) + 1e-12
    assert np.linalg.norm(sub) <= p.clip_norm + 1e-12


@pytest.mark.parametrize("factor", [0.0, -1.0, math.nan, math.inf])
def test_a_coord_clip_factor_that_is_not_a_positive_number_is_refused_by_name(factor: float) -> None:
    with pytest.raises(ValueError, match="coord-clip-factor must be a positive number"):
        RunConfig(coord_clip_factor=factor).train_protection()


def test_stochastic_rounding_is_unbiased() -> None:
    p = DEFAULT
    rng = np.random.default_rng(20261123)
    sub = rng.uniform(-1, 1, size=p.coords_per_round or 0) * p.coord_clip(P) * 0.3
    s = p.scale(P)
    draws = np.stack([quantise(sub, p, P, rng) for _ in range(2000)])
    mean = draws.mean(axis=0)
    # each coordinate's rounding has variance <= 1/4: the mean of 2000 draws has std <= 0.0112
    z = (mean - sub * s) / 0.0112
    assert abs(float(z.mean())) < 4 / math.sqrt(z.size)
    assert np.abs(z).max() < 5.5
    assert np.all((draws == np.floor(sub * s)) | (draws == np.ceil(sub * s)))


def test_quantised_norm_never_exceeds_the_sensitivity_bound() -> None:
    p = DEFAULT
    rng = np.random.default_rng(3)
    for _ in range(50):
        sub = selected_clipped(rng.normal(size=P) * 10, p, 1)
        q = quantise(sub, p, P, rng)
        assert float(np.dot(q, q)) <= p.sensitivity_int(P) ** 2
        assert np.abs(q).max() <= p.level


def test_masked_payloads_look_uniform() -> None:
    """The aggregator's inputs: identical updates give unrelated, uniform ring vectors."""
    p, pk = DEFAULT, _pk()
    u = np.full(P, 0.01)
    m, bits = p.n_coords(P), p.ring_bits
    start = wire.HEADER_LEN + wire.SEAL_LEN
    vals = np.concatenate(
        [wire.unpack_bits(protect_update(u, p, pk, 1, 1, 1, 5)[start:], bits, m) for _ in range(60)]
    ).astype(np.int64)
    bins = 64
    counts = np.bincount(vals >> (bits - 6), minlength=bins)
    expected = vals.size / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120  # chi-square, 63 dof: p < 1e-5
    lsb = np.bincount(vals & 1, minlength=2)
    assert abs(int(lsb[0]) - int(lsb[1])) < 5 * math.sqrt(vals.size)


def test_seals_and_payloads_differ_every_time() -> None:
    p, pk, u = DEFAULT, _pk(), np.zeros(P)
    a, b = (protect_update(u, p, pk, 1, 1, 1, 5) for _ in range(2))
    assert a[: wire.HEADER_LEN] == b[: wire.HEADER_LEN]
    assert a[wire.HEADER_LEN :] != b[wire.HEADER_LEN :]


def test_params_refuse_a_ring_that_could_wrap() -> None:
    with pytest.raises(ValueError, match="ring"):
        ProtectionParams(quant_bits=8, ring_bits=12, max_cohort=128)
    with pytest.raises(ValueError, match="ring"):
        DEFAULT.replace(noise_multiplier=5.0)
    ok = DEFAULT.replace(noise_multiplier=1.0)
    assert ok.noise_std_int(P) > 0


def test_params_round_trip_and_label() -> None:
    d = DEFAULT.to_dict()
    assert ProtectionParams.from_dict(d) == DEFAULT
    assert "NOT PRIVATE" in PLAINTEXT_DEFAULT.label
    assert "NOT PRIVATE" not in DEFAULT.label
    with pytest.raises(ValueError):
        ProtectionParams(mode="secagg", clip_norm=math.inf)


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 3000), st.integers(0, 2999))
def test_the_fast_selection_is_the_word_by_word_fisher_yates(seed: bytes, n: int, short: int) -> None:
    """`_selection` takes the i-th keystream word for the i-th draw when no word is rejected; the
    word-by-word walk (with rejection) must give the same coordinates."""
    from fedchurn.shared.protection import _draws_with_rejection, _selection

    m = max(1, n - short % n)
    key = wire.sha256(wire.SELECT_LABEL + seed)
    perm = list(range(n))
    for i, j in enumerate(_draws_with_rejection(key, m, n)):
        perm[i], perm[j] = perm[j], perm[i]
    fast = _selection.__wrapped__(m, n, seed)
    assert fast.tolist() == sorted(perm[:m])
    assert not fast.flags.writeable


def test_every_scheme_has_its_device_encoder_and_its_aggregator_sum() -> None:
    """A scheme is declared once (`SCHEMES`, the `ModeName` literal) and each party looks its part
    up there: one missing would leave a mode half-handled."""
    from typing import get_args

    from fedchurn.client.protect import ENCODERS
    from fedchurn.server.secure_sum import SCHEME_SUMS
    from fedchurn.shared.protection import SCHEMES, ModeName

    assert set(ENCODERS) == set(SCHEME_SUMS) == set(SCHEMES) == set(get_args(ModeName))
    assert len({s.wire_mode for s in SCHEMES.values()}) == len(SCHEMES)
    assert [s.name for s in SCHEMES.values() if not s.private] == ["plaintext"]


def test_a_missing_key_holder_is_named_before_the_update_is_looked_at() -> None:
    """A private scheme without its pinned key holder is refused first, whatever the update."""
    from fedchurn.client.ckks import encrypt_rows
    from fedchurn.client.protect import Batch, protect_with
    from fedchurn.shared.protection import DEFAULT

    for update in (np.full(P, np.nan), np.zeros((2, 2)), np.zeros(0)):
        with pytest.raises(ValueError, match="needs the pinned key holder"):
            protect_with(update, DEFAULT, None, 1, 1, 1, 0, bytes(32), np.random.default_rng(0))
    batch = Batch(np.zeros((1, 4)), 4, [b""], [b""], [bytes(32)], [np.random.default_rng(0)])
    with pytest.raises(ValueError, match="needs mode='ckks'"):
        encrypt_rows(batch, DEFAULT, KeyHolderPublic(bytes(32), None))
