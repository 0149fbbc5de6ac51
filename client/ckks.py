"""CKKS mode on the device: encrypt the clipped, masked update to the key holder's public context.

Same roles as the masked mode: the device holds only a public context (no secret key; its SHA-256
pinned), the aggregator adds ciphertexts, the key holder decrypts cohort sums. The device adds a
real-valued mask from a fresh seed before encrypting and seals the seed to the key holder, exactly as
in secagg: the key holder removes the masks of the seals it opened, so a ciphertext that is not
the sum of exactly those devices' ciphertexts (one device's ciphertext scaled, a cohort of made-up
ids) decrypts to mask-dominated values, which it refuses. Much larger on the wire (see the
benchmark), kept for reviewers who ask for homomorphic encryption.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedchurn.client.protect import Batch, seal_seed
from fedchurn.shared import wire
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import ProtectionParams


class PrivateContextError(ValueError):
    """A device was handed a context holding the secret key: it refuses to use it."""


@functools.lru_cache(maxsize=4)
def _context(digest: str, data: bytes) -> Any:
    ctx = ts.context_from(data)
    if ctx.is_private():
        raise PrivateContextError("the CKKS context holds a secret key; devices accept public contexts only")
    return ctx


def load_public_context(data: bytes) -> Any:
    """Deserialise (and cache) a public TenSEAL context; refuses one with a secret key."""
    return _context(hashlib.sha256(data).hexdigest(), data)


def encrypt_chunks(values: np.ndarray, ctx: Any, slots: int) -> list[bytes]:
    """One CKKS vector per `slots` values (TenSEAL warns and disables ops beyond one ciphertext)."""
    return [
        ts.ckks_vector(ctx, values[i : i + slots].tolist()).serialize() for i in range(0, values.size, slots)
    ]


def encrypt_rows(batch: Batch, params: ProtectionParams, keyholder: KeyHolderPublic) -> list[bytes]:
    """Upload i: header || seal(seed i) || CKKS body (device i's clipped coordinates plus its seed's
    mask, encrypted, in ceil(m / slots) chunks)."""
    if not params.scheme.homomorphic:
        raise ValueError(f"encrypt_rows needs mode='ckks', got {params.mode!r}")
    if keyholder.ckks_context is None:
        raise ValueError("CKKS mode needs the key holder's (checked) public context")
    ctx = load_public_context(keyholder.ckks_context)
    pk = X25519PublicKey.from_public_bytes(keyholder.x25519)
    slots = params.ckks_poly_modulus // 2
    out = []
    for sub, head, digest, seed in zip(batch.sub, batch.heads, batch.digests, batch.seeds, strict=True):
        masked = sub + wire.ckks_mask(seed, sub.size, params.ckks_mask_bound)
        sealed = seal_seed(seed, pk, wire.seal_info(head, digest))
        out.append(head + sealed + wire.pack_ckks_body(encrypt_chunks(masked, ctx, slots)))
    return out
