"""Regenerate the wire-format vectors: `python tests/vectors/wire/make_wire_vectors.py`.

Run it only when the wire format changes on purpose (and bump `wire.WIRE_VERSION`). Everything
is derived from fixed, documented TEST-ONLY inputs: the key holder's test key below is public and
must never be used outside tests. Stochastic rounding and the HPKE seal are random by design, so
each vector records the quantised integers it used and one valid seal; a port checks that the
seal opens to the recorded seed and that every deterministic byte (config, selection, mask,
payload, header, seal info, upload) is identical.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedchurn.client.protect import quantise, secagg_upload, selected_clipped, to_ring
from fedchurn.shared import wire
from fedchurn.shared.protection import DEFAULT, ProtectionParams, select_coordinates
from fedchurn.shared.run_config import RunConfig

HERE = Path(__file__).parent
# TEST ONLY. Public, derived from a label, never used in production.
TEST_KEYHOLDER_PRIVATE_KEY = hashlib.sha256(b"fedchurn wire test key holder v1 - TEST ONLY").digest()


def test_public_key() -> bytes:
    sk = X25519PrivateKey.from_private_bytes(TEST_KEYHOLDER_PRIVATE_KEY)
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def mask_seed(name: str) -> bytes:
    """TEST ONLY: devices draw the seed from os.urandom; vectors need a fixed one."""
    return hashlib.sha256(b"fedchurn wire test mask seed v1 - TEST ONLY/" + name.encode()).digest()


CASES: dict[str, dict[str, Any]] = {
    "upload_b12_small": {
        "params": ProtectionParams(coords_per_round=12, k_min=1, max_cohort=128),
        "n_params": 40,
        "round_id": 7,
        "cohort_id": 3,
        "model_version": 2,
        "round_seed": 42,
        "norm": 0.8,
    },
    "upload_b7_odd_width": {
        "params": ProtectionParams(coords_per_round=10, quant_bits=3, ring_bits=7, max_cohort=16, k_min=1),
        "n_params": 25,
        "round_id": 1,
        "cohort_id": 0,
        "model_version": 1,
        "round_seed": 2**64 - 1,
        "norm": 3.0,
    },
    "upload_b16_clip": {
        "params": ProtectionParams(coords_per_round=9, quant_bits=8, ring_bits=16, clip_norm=0.5, k_min=1),
        "n_params": 30,
        "round_id": 4_000_000_000,
        "cohort_id": 65_535,
        "model_version": 9,
        "round_seed": 7,
        "norm": 5.0,
    },
    "upload_default_2286": {
        "params": DEFAULT.replace(k_min=1),
        "n_params": 2286,
        "round_id": 12,
        "cohort_id": 1,
        "model_version": 12,
        "round_seed": 20261123,
        "norm": 1.5,
    },
    # What `fedchurn simulate` and a deployment send by default (RunConfig().train_protection()):
    # 418 coordinates, 8-bit levels, 13-bit ring, coordinate clip factor 20; k_min only for the test.
    "upload_run_default_2286": {
        "params": RunConfig().train_protection(0.0).replace(k_min=1),
        "n_params": 2286,
        "round_id": 3,
        "cohort_id": 2,
        "model_version": 3,
        "round_seed": 20261206,
        "norm": 2.0,
    },
}


def upload_case(name: str, c: dict[str, Any], seal: bytes | None) -> dict[str, Any]:
    p: ProtectionParams = c["params"]
    n = c["n_params"]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    update = np.random.default_rng(len(name)).normal(size=n)
    update = (update * c["norm"] / np.linalg.norm(update)).astype(np.float32).astype(np.float64)
    sub = selected_clipped(update, p, c["round_seed"])
    quantised = quantise(sub, p, n, rng)
    ring = to_ring(quantised, p.ring_bits)
    seed = wire.with_data_bit(mask_seed(name), bool(np.any(quantised != 0)))  # version 3: the data bit
    mask = wire.mask_stream(seed, ring.size, p.ring_bits)
    masked = (ring + mask) & np.uint64((1 << p.ring_bits) - 1)
    header = wire.Header(
        p.wire_mode, c["round_id"], c["cohort_id"], c["model_version"], p.config_tag(c["round_seed"], n)
    )
    payload = wire.pack_bits(masked, p.ring_bits)
    digest = p.config_digest(c["round_seed"], n)
    info = wire.seal_info(header.pack(), digest)
    upload = secagg_upload(ring, seed, p, test_public_key(), header, digest)
    if seal is not None and _opens(seal, info, seed):  # keep a committed seal that still opens, so the
        upload = (
            upload[: wire.HEADER_LEN] + seal + upload[wire.HEADER_LEN + wire.SEAL_LEN :]
        )  # file changes only with the format
    return {
        "description": f"secagg upload, {p.n_coords(n)} of {n} coordinates at {p.ring_bits} bits",
        "params": p.to_dict(),
        "n_params": n,
        "round_id": c["round_id"],
        "cohort_id": c["cohort_id"],
        "model_version": c["model_version"],
        "round_seed_hex": p.config_bytes(c["round_seed"], n)[-32:].hex(),
        "update_float32": [float(v) for v in update],
        "config_bytes_hex": p.config_bytes(c["round_seed"], n).hex(),
        "config_digest_hex": digest.hex(),
        "selected": [int(i) for i in select_coordinates(p, c["round_seed"], n)],
        "clipped_selected": [float(v) for v in sub],
        "scale": p.scale(n),
        "sensitivity_int": p.sensitivity_int(n),
        "quantised": [int(v) for v in quantised],
        "ring_values": [int(v) for v in ring],
        "mask_seed_hex": seed.hex(),
        "mask": [int(v) for v in mask],
        "masked": [int(v) for v in masked],
        "header_hex": header.pack().hex(),
        "payload_hex": payload.hex(),
        "seal_info_hex": info.hex(),
        "sealed_seed_hex": upload[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN].hex(),
        "upload_hex": upload.hex(),
        "upload_len": len(upload),
    }


def _opens(seal: bytes, info: bytes, seed: bytes) -> bool:
    sk = X25519PrivateKey.from_private_bytes(TEST_KEYHOLDER_PRIVATE_KEY)
    try:
        return wire.SEAL_SUITE.decrypt(seal, sk, info=info) == seed
    except Exception:
        return False


def packing_cases() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    out = []
    for bits in (1, 3, 7, 8, 12, 13, 16, 31, 32):
        values = rng.integers(0, 2**bits, size=11, dtype=np.uint64)
        values[0], values[-1] = 0, 2**bits - 1
        out.append(
            {
                "bits": bits,
                "values": [int(v) for v in values],
                "packed_hex": wire.pack_bits(values, bits).hex(),
            }
        )
    return {"description": "LSB-first bit packing, zero padding", "cases": out}


def keystream_cases() -> dict[str, Any]:
    key = bytes(range(32))
    return {
        "description": "RFC 8439 ChaCha20, counter 0, nonce 0: first 128 keystream bytes; mask fields",
        "key_hex": key.hex(),
        "keystream_hex": wire.chacha20_keystream(key, 128).hex(),
        "mask_12bit_first_20": [int(v) for v in wire.mask_stream(key, 20, 12)],
        "ckks_mask_bound": 4096.0,
        "ckks_mask_first_8": [float(v) for v in wire.ckks_mask(key, 8, 4096.0)],
    }


def main() -> None:
    (HERE / "packing.json").write_text(json.dumps(packing_cases(), indent=1) + "\n")
    (HERE / "keystream.json").write_text(json.dumps(keystream_cases(), indent=1) + "\n")
    keys = {
        "description": "TEST-ONLY key holder key pair (public, never used in production)",
        "private_key_hex": TEST_KEYHOLDER_PRIVATE_KEY.hex(),
        "public_key_hex": test_public_key().hex(),
    }
    (HERE / "test_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    for name, c in CASES.items():
        path = HERE / f"{name}.json"
        seal = bytes.fromhex(json.loads(path.read_text())["sealed_seed_hex"]) if path.exists() else None
        path.write_text(json.dumps(upload_case(name, c, seal), indent=1) + "\n")


if __name__ == "__main__":
    main()
