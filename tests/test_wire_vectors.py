"""The committed wire vectors still describe what the code sends, byte for byte (ports check the same)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedchurn.client.protect import secagg_upload, selected_clipped
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.secure_sum import CohortAggregator
from fedchurn.shared import wire
from fedchurn.shared.protection import ProtectionParams, select_coordinates
from fedchurn.shared.run_config import RunConfig

VECTORS = Path(__file__).parent / "vectors" / "wire"
UPLOADS = sorted(VECTORS.glob("upload_*.json"))
KEYS = json.loads((VECTORS / "test_keys.json").read_text())


def _load(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(path.read_text())
    return out


def test_there_are_vectors() -> None:
    assert len(UPLOADS) >= 4


def test_packing_vectors() -> None:
    for case in _load(VECTORS / "packing.json")["cases"]:
        values = np.asarray(case["values"], dtype=np.uint64)
        assert wire.pack_bits(values, case["bits"]).hex() == case["packed_hex"]
        got = wire.unpack_bits(bytes.fromhex(case["packed_hex"]), case["bits"], len(values))
        assert got.tolist() == case["values"]


def test_keystream_vector() -> None:
    v = _load(VECTORS / "keystream.json")
    key = bytes.fromhex(v["key_hex"])
    assert wire.chacha20_keystream(key, 128).hex() == v["keystream_hex"]
    assert wire.mask_stream(key, 20, 12).tolist() == v["mask_12bit_first_20"]
    assert wire.ckks_mask(key, 8, v["ckks_mask_bound"]).tolist() == v["ckks_mask_first_8"]


@pytest.mark.parametrize("path", UPLOADS, ids=lambda p: p.stem)
def test_upload_vector_deterministic_bytes(path: Path) -> None:
    v = _load(path)
    p = ProtectionParams.from_dict(v["params"])
    n, seed = v["n_params"], bytes.fromhex(v["round_seed_hex"])
    assert p.config_bytes(seed, n).hex() == v["config_bytes_hex"]
    assert p.config_digest(seed, n).hex() == v["config_digest_hex"]
    assert select_coordinates(p, seed, n).tolist() == v["selected"]
    update = np.asarray(v["update_float32"], dtype=np.float64)
    sub = selected_clipped(update, p, seed)
    np.testing.assert_allclose(sub, v["clipped_selected"], rtol=0, atol=1e-12)
    assert math.isclose(p.scale(n), v["scale"], rel_tol=1e-12)
    scaled = sub * p.scale(n)
    q = np.asarray(v["quantised"], dtype=np.int64)
    assert np.all((q == np.floor(scaled)) | (q == np.ceil(scaled)))  # stochastic rounding picked a neighbour
    assert float(np.dot(q, q)) <= p.sensitivity_int(n) ** 2
    ring = (q % (1 << p.ring_bits)).astype(np.uint64)
    assert ring.tolist() == v["ring_values"]
    mask_seed = bytes.fromhex(v["mask_seed_hex"])
    assert wire.carries_data(mask_seed) == any(x != 0 for x in v["quantised"])  # version 3: the data bit
    assert wire.mask_stream(mask_seed, ring.size, p.ring_bits).tolist() == v["mask"]
    header = wire.Header(
        p.wire_mode, v["round_id"], v["cohort_id"], v["model_version"], p.config_tag(seed, n)
    )
    assert header.pack().hex() == v["header_hex"]
    pk = bytes.fromhex(KEYS["public_key_hex"])
    fresh = secagg_upload(ring, mask_seed, p, pk, header, p.config_digest(seed, n))
    seal = slice(wire.HEADER_LEN, wire.HEADER_LEN + wire.SEAL_LEN)
    upload = bytes.fromhex(v["upload_hex"])
    assert fresh[: seal.start] + fresh[seal.stop :] == upload[: seal.start] + upload[seal.stop :]
    assert fresh[seal.stop :].hex() == v["payload_hex"]
    assert len(upload) == v["upload_len"] == p.upload_bytes(n)
    info = wire.seal_info(header.pack(), p.config_digest(seed, n))
    assert info.hex() == v["seal_info_hex"]
    assert bytes.fromhex(v["upload_hex"])[2] == wire.WIRE_VERSION == 3


@pytest.mark.parametrize("path", UPLOADS, ids=lambda p: p.stem)
def test_upload_vector_seal_opens_and_sums(path: Path) -> None:
    v = _load(path)
    p = ProtectionParams.from_dict(v["params"])
    n, seed = v["n_params"], bytes.fromhex(v["round_seed_hex"])
    sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["private_key_hex"]))
    sealed = bytes.fromhex(v["sealed_seed_hex"])
    assert (
        wire.SEAL_SUITE.decrypt(sealed, sk, info=bytes.fromhex(v["seal_info_hex"])).hex()
        == v["mask_seed_hex"]
    )
    kh = KeyHolder(sk, k_min=1)
    agg = CohortAggregator(p, v["round_id"], v["cohort_id"], v["model_version"], seed, n)
    assert agg.add("vector-device", bytes.fromhex(v["upload_hex"])).accepted
    res = agg.finalize(kh)
    np.testing.assert_allclose(res.sum[v["selected"]], np.asarray(v["quantised"]) / v["scale"], atol=1e-12)


def test_default_vector_is_780_bytes() -> None:
    assert _load(VECTORS / "upload_default_2286.json")["upload_len"] == 780


def test_the_run_default_vector_is_what_runs_send() -> None:
    """`upload_run_default_2286.json` pins the shipped run defaults, not the library's."""
    v = _load(VECTORS / "upload_run_default_2286.json")
    assert ProtectionParams.from_dict(v["params"]) == RunConfig().train_protection(0.0).replace(k_min=1)
    assert v["upload_len"] == 780
