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

from fedchurn.client.protect import check_update, seal_seed, selected_clipped
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


def encrypt_update(
    update: np.ndarray,
    params: ProtectionParams,
    keyholder: KeyHolderPublic,
    round_id: int,
    cohort_id: int,
    model_version: int,
    round_seed: bytes | int,
    seed: bytes,
) -> bytes:
    """header || seal(seed) || CKKS body (the round's clipped coordinates plus the seed's mask,
    encrypted, in ceil(m / slots) chunks)."""
    if params.mode != "ckks":
        raise ValueError("encrypt_update needs mode='ckks'")
    if keyholder.ckks_context is None:
        raise ValueError("CKKS mode needs the key holder's (checked) public context")
    x = check_update(update)
    ctx = load_public_context(keyholder.ckks_context)
    sub = selected_clipped(x, params, round_seed)
    masked = sub + wire.ckks_mask(seed, sub.size, params.ckks_mask_bound)
    header = wire.Header(
        wire.Mode.CKKS, round_id, cohort_id, model_version, params.config_tag(round_seed, x.size)
    )
    head = header.pack()
    sealed = seal_seed(seed, keyholder.x25519, wire.seal_info(head, params.config_digest(round_seed, x.size)))
    return head + sealed + wire.pack_ckks_body(encrypt_chunks(masked, ctx, params.ckks_poly_modulus // 2))
