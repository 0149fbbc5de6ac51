"""Update protection on the device: select, clip, quantise, mask, seal.

The device's model delta leaves only as `protect_update`'s bytes: the round's public coordinates,
L2-clipped (the DP sensitivity), quantised with stochastic rounding, lifted into the ring and
masked with a ChaCha20 stream from a fresh 32-byte seed; the seed is sealed (HPKE) to the key
holder the device pinned (never a key the aggregator chose), bound to round, cohort, model version
and parameters. The aggregator sees a uniformly random ring vector; only the key holder can remove
a mask, and only as a cohort sum. The key holder never sees anything that depends on the payload.

`protect_with` is the deterministic core (seed and rounding generator given: golden vectors);
`protect_update` draws the seed from `os.urandom` and, unless told otherwise, the rounding coins
from an OS-seeded generator.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedchurn.shared import wire
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import ProtectionParams, select_coordinates

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


def seal_seed(seed: bytes, keyholder_public_key: bytes, info: bytes) -> bytes:
    """HPKE-seal the 32-byte mask seed to the key holder: 80 bytes (enc || ciphertext || tag)."""
    if len(seed) != wire.SEED_LEN:
        raise ValueError("mask seed must be 32 bytes")
    pk = X25519PublicKey.from_public_bytes(keyholder_public_key)
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
    """The upload for a given mask seed and rounding generator (the deterministic core)."""
    if keyholder is None and params.mode != "plaintext":
        raise ValueError(f"{params.mode} protection needs the pinned key holder")
    if params.mode == "ckks":
        assert keyholder is not None
        from fedchurn.client.ckks import encrypt_update

        return encrypt_update(update, params, keyholder, round_id, cohort_id, model_version, round_seed, seed)
    x = check_update(update)
    n = x.size
    header = wire.Header(
        params.wire_mode, round_id, cohort_id, model_version, params.config_tag(round_seed, n)
    )
    sub = selected_clipped(x, params, round_seed)
    if params.mode == "plaintext":
        return header.pack() + sub.astype("<f4").tobytes()
    assert keyholder is not None
    ring = to_ring(quantise(sub, params, n, rng), params.ring_bits)
    digest = params.config_digest(round_seed, n)
    return secagg_upload(ring, seed, params, keyholder.x25519, header, digest)


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
