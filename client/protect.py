"""Update protection on the device: select, clip, quantise, mask, seal.

The device's model delta leaves only as `protect_update`'s bytes: the round's public coordinates,
L2-clipped (the DP sensitivity), quantised with stochastic rounding, lifted into the ring and
masked with a ChaCha20 stream from a fresh 32-byte seed; the seed is sealed (HPKE) to the key
holder the device pinned (never a key the aggregator chose), bound to round, cohort, model version
and parameters. The aggregator sees a uniformly random ring vector; only the key holder can remove
a mask, and only as a cohort sum. The key holder never sees anything that depends on the payload.

`protect_with` is the deterministic core (seed and rounding generator given: golden vectors);
`protect_update` draws the seed from `os.urandom` and, unless told otherwise, the rounding coins
from an OS-seeded generator. `protect_batch` / `protect_batch_with` do the same for many devices at
once (a simulation node answering for hundreds of devices per round): upload i is byte for byte
`protect_with`'s for row i, with the arithmetic vectorised over the devices and one HPKE seal each.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedchurn.shared import wire
from fedchurn.shared.ckks_release import ckks_grid
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import (
    CKKS,
    PLAINTEXT,
    SECAGG,
    ProtectionParams,
    round_seed_bytes,
    select_coordinates,
)

MAX_ROUNDING_TRIES = 32  # each try meets the norm bound with probability >= 0.39; then round toward 0


class NonFiniteUpdateError(ValueError):
    """The update holds NaN or infinity; protecting it would poison the cohort sum."""


def check_update(update: np.ndarray) -> np.ndarray:
    """A 1-D finite float64 copy of `update`, or an error (the device refuses to upload garbage)."""
    x = np.asarray(update)
    if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"update must be a non-empty 1-D numeric vector, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise NonFiniteUpdateError(f"{int(np.sum(~np.isfinite(x)))} non-finite values in the update")
    return x


def clip_l2(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale x down to L2 norm <= clip_norm (unchanged when already inside)."""
    norm = float(np.linalg.norm(x))
    return x * (clip_norm / norm) if norm > clip_norm else x


def selected_clipped(update: np.ndarray, params: ProtectionParams, round_seed: bytes | int) -> np.ndarray:
    """The round's coordinates of the update, L2-clipped then clipped per coordinate."""
    x = check_update(update)
    sub = x[select_coordinates(params, round_seed, x.size)]
    if not math.isfinite(params.clip_norm):
        return sub
    a = params.coord_clip(x.size)
    return np.clip(clip_l2(sub, params.clip_norm), -a, a)


def quantise(
    sub: np.ndarray, params: ProtectionParams, n_params: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Signed integers in [-L, L]: unbiased stochastic rounding, conditioned on the norm bound.

    Redraws while the rounded vector's norm exceeds the sensitivity bound (KLS21), so the key
    holder's noise is calibrated to a bound every honest upload meets; after MAX_ROUNDING_TRIES
    it rounds toward zero, which never increases the norm.
    """
    rng = rng if rng is not None else np.random.default_rng()
    v = np.asarray(sub, dtype=np.float64) * params.scale(n_params)
    bound2 = params.sensitivity_int(n_params) ** 2
    low = np.floor(v)
    frac = v - low
    for _ in range(MAX_ROUNDING_TRIES):
        q = low + (rng.random(v.shape) < frac)
        if float(np.dot(q, q)) <= bound2:
            break
    else:
        q = np.trunc(v)
    return np.clip(q, -params.level, params.level).astype(np.int64)


def to_ring(q: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement lift of signed integers into Z_{2^bits}."""
    return (np.asarray(q, dtype=np.int64) % (1 << bits)).astype(np.uint64)


def seal_seed(seed: bytes, keyholder_public_key: bytes | X25519PublicKey, info: bytes) -> bytes:
    """HPKE-seal the 32-byte mask seed to the key holder: 80 bytes (enc || ciphertext || tag)."""
    if len(seed) != wire.SEED_LEN:
        raise ValueError("mask seed must be 32 bytes")
    pk = (
        keyholder_public_key
        if isinstance(keyholder_public_key, X25519PublicKey)
        else X25519PublicKey.from_public_bytes(keyholder_public_key)
    )
    sealed = wire.SEAL_SUITE.encrypt(seed, pk, info=info)
    assert len(sealed) == wire.SEAL_LEN
    return sealed


def secagg_upload(
    ring_values: np.ndarray,
    seed: bytes,
    params: ProtectionParams,
    keyholder_public_key: bytes,
    header: wire.Header,
    config_digest: bytes,
) -> bytes:
    """header || seal(seed) || pack((values + mask(seed)) mod 2^b); split out for the wire vectors."""
    bits = params.ring_bits
    masked = (ring_values + wire.mask_stream(seed, ring_values.size, bits)) & np.uint64((1 << bits) - 1)
    head = header.pack()
    sealed = seal_seed(seed, keyholder_public_key, wire.seal_info(head, config_digest))
    return head + sealed + wire.pack_bits(masked, bits)


def protect_with(
    update: np.ndarray,
    params: ProtectionParams,
    keyholder: KeyHolderPublic | None,
    round_id: int,
    cohort_id: int,
    model_version: int,
    round_seed: bytes | int,
    seed: bytes,
    rng: np.random.Generator,
) -> bytes:
    """The upload for a given mask seed and rounding generator (the deterministic core): the
    batch path with a batch of one, so a phone runs exactly a simulation node's code."""
    check_keyholder(params, keyholder)
    x = check_update(update)
    return protect_batch_with(
        x[None, :], params, keyholder, round_id, [cohort_id], model_version, [round_seed], [seed], [rng]
    )[0]


def protect_update(
    update: np.ndarray,
    params: ProtectionParams,
    keyholder: KeyHolderPublic | None,
    round_id: int,
    cohort_id: int,
    model_version: int,
    round_seed: bytes | int,
    rng: np.random.Generator | None = None,
) -> bytes:
    """The device's upload for this round.

    `keyholder` holds the pinned key holder's X25519 key (every protected mode) and, in CKKS mode,
    its checked public context; None only in the plaintext baseline. The mask seed always comes
    from `os.urandom`; `rng` drives stochastic rounding only: None (every real device) draws an
    OS-seeded generator, a simulation passes its simulated device's seeded one so that a run is
    reproducible from its seed.
    """
    return protect_with(
        update,
        params,
        keyholder,
        round_id,
        cohort_id,
        model_version,
        round_seed,
        os.urandom(wire.SEED_LEN),
        rng if rng is not None else np.random.default_rng(),
    )


# --- many devices at once (simulation nodes) ---


def check_updates(updates: np.ndarray) -> np.ndarray:
    """`check_update` for every row of a (D, P) array: a float64 copy, or an error naming the rows."""
    x = np.asarray(updates)
    if x.ndim != 2 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"updates must be a (devices, params) numeric array with params > 0, got {x.shape}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise NonFiniteUpdateError(
            f"{int(bad.sum())} non-finite values in the updates of rows {rows[:10].tolist()}"
        )
    return x


def _selected_clipped_rows(x: np.ndarray, params: ProtectionParams, round_seed: bytes) -> np.ndarray:
    """`selected_clipped` of every row (one round seed). The L2 norm is taken per row exactly as the
    one-row path takes it (`np.linalg.norm` of a vector, a BLAS dot): a 2-D norm sums in another
    order and could differ in the last bit, which would change the upload."""
    sub = x[:, select_coordinates(params, round_seed, x.shape[1])]
    if not math.isfinite(params.clip_norm):
        return sub
    c = params.clip_norm
    norms = [float(np.linalg.norm(row)) for row in sub]
    factors = np.array([c / n if n > c else 1.0 for n in norms], dtype=np.float64)
    a = params.coord_clip(x.shape[1])
    return np.clip(sub * factors[:, None], -a, a)


def quantise_rows(
    sub: np.ndarray, params: ProtectionParams, n_params: int, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """`quantise` of every row, row i drawing from rngs[i] exactly as `quantise` draws.

    Each try draws `rng.random(m)` from the generator of every row still above the bound. When
    every row has its own generator the interleaving of rows does not matter (each generator sees
    only its own draws); when rows share one (or its bit generator), its draws must follow the
    one-row order (all of a row's tries before the next row's), so the rows are then rounded one
    after another by `quantise`.
    The squared norms are summed for all rows at once when that is exact in any order (integers
    whose sum of squares stays below 2^53, as with every shipped parameter set); otherwise row by
    row with `quantise`'s own dot product, so the accept/redraw decision is the same to the bit.
    """
    if len({id(r.bit_generator) for r in rngs}) < len(rngs):
        return np.array(
            [quantise(row, params, n_params, rng) for row, rng in zip(sub, rngs, strict=True)],
            dtype=np.int64,
        ).reshape(np.shape(sub))
    v = np.asarray(sub, dtype=np.float64) * params.scale(n_params)
    bound2 = params.sensitivity_int(n_params) ** 2
    low = np.floor(v)
    frac = v - low
    q = np.trunc(v)  # rows still pending after MAX_ROUNDING_TRIES round toward zero
    pending = np.arange(v.shape[0])
    m = v.shape[1]
    exact = (float(np.abs(v).max(initial=0.0)) + 1.0) ** 2 * m < 2.0**53
    for _ in range(MAX_ROUNDING_TRIES):
        if pending.size == 0:
            break
        coins = np.empty((pending.size, m), dtype=np.float64)
        for k, i in enumerate(pending.tolist()):
            coins[k] = rngs[i].random(m)
        draw = low[pending] + (coins < frac[pending])
        if exact:
            ok = np.einsum("ij,ij->i", draw, draw) <= bound2
        else:
            ok = np.array([float(np.dot(r, r)) <= bound2 for r in draw], dtype=bool)
        q[pending[ok]] = draw[ok]
        pending = pending[~ok]
    return np.clip(q, -params.level, params.level).astype(np.int64)


def check_keyholder(params: ProtectionParams, keyholder: KeyHolderPublic | None) -> None:
    """Refuse a private scheme without its pinned key holder (and CKKS without its checked context)."""
    scheme = params.scheme
    if keyholder is None and scheme.private:
        raise ValueError(f"{scheme.name} protection needs the pinned key holder")
    if scheme.homomorphic and keyholder is not None and keyholder.ckks_context is None:
        raise ValueError("CKKS mode needs the key holder's (checked) public context")


def _pinned(params: ProtectionParams, keyholder: KeyHolderPublic | None) -> KeyHolderPublic:
    """A private scheme's encoder: its checked key holder (an explicit error, not an assert)."""
    check_keyholder(params, keyholder)
    if keyholder is None:  # plaintext parameters handed to a private scheme's encoder
        raise ValueError(f"{params.mode} parameters given to a private scheme's encoder")
    return keyholder


@dataclass(frozen=True)
class Batch:
    """What the scheme-independent steps produce for D devices: the round's clipped coordinates
    (D, m), each device's packed header and config digest (bound into its seal), mask seeds and
    rounding generators."""

    sub: np.ndarray
    n_params: int
    heads: list[bytes]
    digests: list[bytes]
    seeds: Sequence[bytes]
    rngs: Sequence[np.random.Generator]


def _with_data_bits(seeds: Sequence[bytes], has_data: np.ndarray, params: ProtectionParams) -> list[bytes]:
    """Each seed with its data bit (`wire.with_data_bit`): the key holder counts towards k only
    uploads that carry something, since zeros are values the aggregator can predict (review 13).

    Under noise that protects one device (`ProtectionParams.noise_protects_one`: a multiplier of
    at least `PROTECTIVE_NOISE`) every seed carries the bit: the key holder's noise, calibrated to
    one device, protects the release whoever else is in the cohort, while its refusal for want of
    data is an answer without noise. Beside k − 1 Sybil seals that carry data, the refusal gave
    away whether a held-out device had a scored day, and with a model crafted to give a NaN score
    (zeros) above a feature threshold, any threshold of its features: 16 of 16 right through a
    node pinning `min-noise` (review 16). Below that multiplier the bit follows the upload: the
    multiplier is the aggregator's to name, and at 1e-300 (any value above 0 once forced every
    bit) the key holder drew exact zeros, so k − 1 new devices with nothing to upload released one
    old device's update, feature means or churn outcome alone (review 18)."""
    if params.noise_protects_one:
        has_data = np.ones(len(seeds), dtype=bool)
    return [wire.with_data_bit(s, bool(h)) for s, h in zip(seeds, has_data, strict=True)]


class Encoder(Protocol):
    """A protection scheme's last step on the device: a batch's clipped coordinates to uploads."""

    def encode(
        self, batch: Batch, params: ProtectionParams, keyholder: KeyHolderPublic | None
    ) -> list[bytes]:
        """Upload i for device i of `batch` (header first)."""
        ...


class PlaintextEncoder:
    """The labelled baseline: the clipped coordinates as little-endian float32, in the clear."""

    def encode(
        self, batch: Batch, params: ProtectionParams, keyholder: KeyHolderPublic | None
    ) -> list[bytes]:
        rows = batch.sub.astype("<f4")
        return [head + rows[i].tobytes() for i, head in enumerate(batch.heads)]


class SecAggEncoder:
    """Quantise, lift into the ring, mask with each device's seed stream, pack; seal each seed."""

    def encode(
        self, batch: Batch, params: ProtectionParams, keyholder: KeyHolderPublic | None
    ) -> list[bytes]:
        keyholder = _pinned(params, keyholder)
        bits = params.ring_bits
        q = quantise_rows(batch.sub, params, batch.n_params, batch.rngs)
        # The data bit follows the rounded integers the device uploads, not the floats before
        # rounding: a crafted model gave devices values of 1e-33, which set a bit computed from
        # the floats and then rounded to exact zeros the aggregator could predict (review 14).
        seeds = _with_data_bits(batch.seeds, np.any(q != 0, axis=1), params)
        ring = to_ring(q, bits)
        masked = (ring + wire.mask_streams(seeds, ring.shape[1], bits)) & np.uint64((1 << bits) - 1)
        payloads = wire.pack_bits_rows(masked, bits)
        pk = X25519PublicKey.from_public_bytes(keyholder.x25519)  # parsed once for every seal
        return [
            head + seal_seed(seed, pk, wire.seal_info(head, digest)) + payload
            for head, digest, seed, payload in zip(batch.heads, batch.digests, seeds, payloads, strict=True)
        ]


class CkksEncoder:
    """Mask with each device's real-valued seed stream, encrypt to the pinned public context
    (`client/ckks.py`; TenSEAL encrypts one vector at a time), seal each seed."""

    def encode(
        self, batch: Batch, params: ProtectionParams, keyholder: KeyHolderPublic | None
    ) -> list[bytes]:
        from fedchurn.client.ckks import encrypt_rows

        # CKKS encrypts the floats themselves: a value below the release grid is lost in the
        # decryption's error and the key holder's rounding, so it carries nothing (review 14).
        has_data = np.any(np.abs(batch.sub) >= ckks_grid(params), axis=1)
        flagged = replace(batch, seeds=_with_data_bits(batch.seeds, has_data, params))
        return encrypt_rows(flagged, params, _pinned(params, keyholder))


ENCODERS: dict[str, Encoder] = {
    SECAGG.name: SecAggEncoder(),
    CKKS.name: CkksEncoder(),
    PLAINTEXT.name: PlaintextEncoder(),
}


def protect_batch_with(
    updates: np.ndarray,
    params: ProtectionParams,
    keyholder: KeyHolderPublic | None,
    round_id: int,
    cohort_ids: Sequence[int],
    model_version: int,
    round_seeds: Sequence[bytes | int],
    seeds: Sequence[bytes],
    rngs: Sequence[np.random.Generator],
) -> list[bytes]:
    """The uploads of D devices, with the given mask seeds and rounding generators. The first bit
    of each seed is replaced by whether what that device uploads is not all zero (the encoder
    decides: `wire.with_data_bit`); the other 255 bits are the caller's.

    Upload i depends on row i alone (tested: a batch equals its rows one by one). Devices are
    grouped by round seed, which selects the coordinates and enters the config digest; selection
    and clipping run per group, then the scheme's encoder (`ENCODERS`) does the rest for all
    devices at once (secagg: rounding, ring lift, masks with one keystream per device, packing;
    one HPKE seal each).
    """
    n = len(updates)
    if not len(cohort_ids) == len(round_seeds) == len(seeds) == len(rngs) == n:
        raise ValueError("updates, cohort_ids, round_seeds, seeds and rngs must have one entry per device")
    scheme = params.scheme
    check_keyholder(params, keyholder)
    if n == 0:
        return []
    x = check_updates(updates)
    n_params = x.shape[1]
    if scheme.private:
        for s in seeds:
            if len(s) != wire.SEED_LEN:
                raise ValueError("mask seed must be 32 bytes")
    groups: dict[bytes, list[int]] = {}
    for i, r in enumerate(round_seeds):
        groups.setdefault(round_seed_bytes(r), []).append(i)
    heads: list[bytes] = [b""] * n
    digests: list[bytes] = [b""] * n
    sub = np.empty((n, params.n_coords(n_params)), dtype=np.float64)
    for round_seed, members in groups.items():  # the coordinates and config differ per round seed
        digest = params.config_digest(round_seed, n_params)
        tag = digest[: wire.CONFIG_TAG_LEN]
        for i in members:
            heads[i] = wire.Header(scheme.wire_mode, round_id, cohort_ids[i], model_version, tag).pack()
            digests[i] = digest
        idx = np.asarray(members, dtype=np.int64)
        sub[idx] = _selected_clipped_rows(x[idx], params, round_seed)
    batch = Batch(sub, n_params, heads, digests, seeds, rngs)
    return ENCODERS[scheme.name].encode(batch, params, keyholder)


def protect_batch(
    updates: np.ndarray,
    params: ProtectionParams,
    keyholder: KeyHolderPublic | None,
    round_id: int,
    cohort_ids: Sequence[int],
    model_version: int,
    round_seeds: Sequence[bytes | int],
    rngs: Sequence[np.random.Generator | None],
) -> list[bytes]:
    """The uploads of D devices (a simulation node answering for many): `protect_update` for each.

    Every device gets a fresh mask seed from `os.urandom`; rngs[i] drives device i's stochastic
    rounding (None: an OS-seeded generator, as on a real device).
    """
    return protect_batch_with(
        updates,
        params,
        keyholder,
        round_id,
        cohort_ids,
        model_version,
        round_seeds,
        [os.urandom(wire.SEED_LEN) for _ in range(len(updates))],
        [r if r is not None else np.random.default_rng() for r in rngs],
    )
