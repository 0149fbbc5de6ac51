"""How a device's update is protected: the parameters, the public coordinate selection, and who learns what.

`ProtectionParams` is the one contract the device, the aggregator and the key holder share. Its
canonical bytes (`config_bytes`) are bound into every seal, so a party that changes any parameter
(the clip norm, the noise, the coordinates) makes every seal of the round fail to open instead of
silently weakening the protection. The derived quantities (quantisation scale, integer sensitivity,
noise in ring units) live here so that all three parties compute them identically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import numbers
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedchurn.shared import wire

__all__ = [
    "CKKS",
    "CKKS_DEFAULT",
    "COLLUSION",
    "DEFAULT",
    "MODE_LABELS",
    "NOISE_TAIL_SIGMAS",
    "PARTY_VIEWS",
    "PLAINTEXT",
    "PLAINTEXT_DEFAULT",
    "PROTECTIVE_NOISE",
    "ROUNDING_BETA",
    "SCHEMES",
    "SECAGG",
    "ModeName",
    "PartyView",
    "ProtectionParams",
    "Scheme",
    "bind_round_seed",
    "max_secagg_coords",
    "round_seed_bytes",
    "select_coordinates",
    "task_digest",
]

ModeName = Literal["secagg", "ckks", "plaintext"]

# A discrete Gaussian exceeds 8 standard deviations with probability < 1e-15 per coordinate.
NOISE_TAIL_SIGMAS = 8.0
# The smallest noise multiplier at which the key holder's noise alone protects one device's release
# (one Gaussian release at delta = 1e-5: epsilon 5.2 for a secagg evaluation; for a training or
# feature-mean upload 4.7 against adding or removing it, 10.7 against replacing it, which is what a
# release beside devices without data, or beside the aggregator's own seals, shows: review 20).
# From it on, every upload counts towards k whatever it carries (review 16: a refusal for want of
# data is an answer without noise); below it the data bit follows the upload, as without noise
# (review 18: at a multiplier of 1e-300 the key holder drew exact zeros, and k - 1 new devices
# with nothing to upload released one old device's update alone).
PROTECTIVE_NOISE = 1.0
# Conditional stochastic rounding (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian
# Mechanism"): the norm bound holds for each draw with probability >= 1 - beta, beta = exp(-1/2).
ROUNDING_BETA = math.exp(-0.5)


@dataclass(frozen=True)
class Scheme:
    """One protection scheme, as the facts every party reads instead of comparing mode names.

    Behaviour stays with the party that has it: the device's encoder (`client/protect.py`), the
    aggregator's cohort sum (`server/secure_sum.py`), the key holder's answer (`server/keyholder.py`)
    each look their scheme's implementation up by this object; what they all need to know about a
    scheme (is there a key holder, is the upload a ring vector, is a TenSEAL context pinned) is here.
    """

    name: ModeName
    wire_mode: wire.Mode
    label: str
    private: bool  # False only for the plaintext baseline: no key holder, values in the clear
    ring: bool  # uploads are quantised and masked in Z_{2^b}: fixed size, noise in ring units
    homomorphic: bool  # CKKS: the key holder's public TenSEAL context is part of the device's pin

    @property
    def seal_len(self) -> int:
        """Bytes of the sealed mask seed after the header (every private scheme seals one)."""
        return wire.SEAL_LEN if self.private else 0


SECAGG = Scheme(
    "secagg",
    wire.Mode.SECAGG,
    "SECAGG (masked, key holder unmasks cohort sums only)",
    private=True,
    ring=True,
    homomorphic=False,
)
CKKS = Scheme(
    "ckks",
    wire.Mode.CKKS,
    "CKKS (homomorphic encryption, key holder decrypts cohort sums only)",
    private=True,
    ring=False,
    homomorphic=True,
)
PLAINTEXT = Scheme(
    "plaintext",
    wire.Mode.PLAINTEXT,
    "PLAINTEXT BASELINE - NOT PRIVATE - DO NOT DEPLOY",
    private=False,
    ring=False,
    homomorphic=False,
)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (SECAGG, CKKS, PLAINTEXT)}
MODE_LABELS: dict[str, str] = {name: s.label for name, s in SCHEMES.items()}


def round_seed_bytes(round_seed: bytes | int) -> bytes:
    """The 32-byte round seed: bytes as given, or a non-negative int as 32 bytes little-endian."""
    if isinstance(round_seed, bytes):
        if len(round_seed) != wire.ROUND_SEED_LEN:
            raise ValueError(f"round seed must be {wire.ROUND_SEED_LEN} bytes")
        return round_seed
    if not 0 <= round_seed < 2 ** (8 * wire.ROUND_SEED_LEN):
        raise ValueError("round seed int must be non-negative and below 2**256")
    return round_seed.to_bytes(wire.ROUND_SEED_LEN, "little")


def task_digest(params: np.ndarray | None, input_offset: np.ndarray | None, run: bytes) -> bytes:
    """SHA-256 of what a device computes its upload from besides its own data: the global
    parameters (float32, little-endian) and the input offset (float64), each marked present or
    absent and length-prefixed, then the digest of the run's settings (`RunConfig.digest`: its
    learning rate, labels and model shape shape the upload as much as the model does)."""
    if len(run) != wire.DIGEST_LEN:
        raise ValueError(f"a run digest is {wire.DIGEST_LEN} bytes")
    h = hashlib.sha256(b"fedchurn-task-v2")
    for part, dtype in ((params, "<f4"), (input_offset, "<f8")):
        if part is None:
            h.update(b"\x00")
        else:
            raw = np.ascontiguousarray(part, dtype=dtype).tobytes()
            h.update(b"\x01" + struct.pack("<Q", len(raw)) + raw)
    h.update(run)
    return h.digest()


def bind_round_seed(round_seed: bytes | int, digest: bytes) -> bytes:
    """The seed a device protects its upload under: the aggregator's round seed bound to the
    digest of its task (`task_digest`). It chooses the coordinates and enters the config bytes
    bound into every seal, so in one cohort the key holder opens only seals made from one model:
    an aggregator that sends some of a cohort's devices another model (one that zeroes their
    updates, say) gets seals that do not open beside the others'."""
    if len(digest) != wire.DIGEST_LEN:
        raise ValueError(f"a task digest is {wire.DIGEST_LEN} bytes")
    return hashlib.sha256(b"fedchurn-bound-seed-v1" + round_seed_bytes(round_seed) + digest).digest()


@dataclass(frozen=True)
class ProtectionParams:
    """Everything the three parties must agree on for one round; validated at construction.

    secagg: the device sends `coords_per_round` coordinates (chosen publicly per round), each
    clipped, quantised to `quant_bits` signed levels with stochastic rounding and lifted into the
    ring Z_{2^ring_bits}. The ring must hold `max_cohort` worst-case values plus the key holder's
    noise (checked here), so no cohort sum wraps around.
    """

    mode: ModeName = "secagg"
    coords_per_round: int | None = 453  # None: every coordinate
    quant_bits: int = 4  # signed levels -(2^(q-1)-1) .. 2^(q-1)-1 per device and coordinate
    ring_bits: int = 12
    clip_norm: float = 1.0  # L2 bound of the uploaded coordinates (the DP sensitivity)
    coord_clip_factor: float = 3.0  # each coordinate clipped to factor * clip_norm / sqrt(m)
    noise_multiplier: float = 0.0  # DP noise std / clip_norm, added by the key holder; 0 = no DP
    max_cohort: int = 128
    k_min: int = 10
    max_upload_bytes: int = 1024
    ckks_poly_modulus: int = 4096
    ckks_coeff_mod_bits: tuple[int, ...] = (60, 49)
    ckks_scale_bits: int = 40

    def __post_init__(self) -> None:
        if self.mode not in SCHEMES:
            raise ValueError(f"mode must be one of {sorted(SCHEMES)}, got {self.mode!r}")
        counts = [self.quant_bits, self.ring_bits, self.max_cohort, self.k_min, self.max_upload_bytes]
        counts += [self.ckks_poly_modulus, self.ckks_scale_bits, *self.ckks_coeff_mod_bits]
        if self.coords_per_round is not None:
            counts.append(self.coords_per_round)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in counts):
            raise ValueError("sizes, bit counts and cohort bounds must be whole numbers")
        if self.coords_per_round is not None and self.coords_per_round < 1:
            raise ValueError("coords_per_round must be positive (or None for all)")
        if not 2 <= self.quant_bits <= self.ring_bits <= wire.MAX_RING_BITS:
            raise ValueError("need 2 <= quant_bits <= ring_bits <= 32")
        if not (self.clip_norm > 0 and (math.isfinite(self.clip_norm) or not self.scheme.private)):
            raise ValueError("clip_norm must be positive and finite (inf only in plaintext mode)")
        if not (math.isfinite(self.coord_clip_factor) and self.coord_clip_factor > 0):
            raise ValueError("coord_clip_factor must be positive")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be >= 0")
        if not 1 <= self.k_min <= self.max_cohort <= wire.MAX_U32:
            raise ValueError("need 1 <= k_min <= max_cohort")
        mods = self.ckks_coeff_mod_bits
        if not (
            0 < len(mods) < 256
            and all(0 < b < 256 for b in mods)
            and 0 < self.ckks_scale_bits < 256
            and 0 < self.ckks_poly_modulus <= wire.MAX_U32
        ):
            raise ValueError("CKKS parameters out of range (each bit count 1..255, at most 255 moduli)")
        if self.scheme.ring and self.coords_per_round is not None:
            self.check_ring(self.coords_per_round)

    @property
    def noise_protects_one(self) -> bool:
        """Whether the key holder's noise alone protects one device's release (`PROTECTIVE_NOISE`)."""
        return self.noise_multiplier >= PROTECTIVE_NOISE

    @property
    def scheme(self) -> Scheme:
        if self.mode not in SCHEMES:  # only parameters built around the constructor's check
            raise ValueError(f"mode must be one of {sorted(SCHEMES)}, got {self.mode!r}")
        return SCHEMES[self.mode]

    # --- derived quantities (functions of n_params, because the model size is a parameter) ---

    def n_coords(self, n_params: int) -> int:
        """m: coordinates uploaded per round."""
        if not 1 <= n_params <= wire.MAX_U32:
            raise ValueError("n_params must be positive and fit 32 bits")
        return n_params if self.coords_per_round is None else min(self.coords_per_round, n_params)

    @property
    def level(self) -> int:
        """Largest quantised magnitude per device and coordinate: 2^(q-1) - 1."""
        return 2 ** (self.quant_bits - 1) - 1

    def coord_clip(self, n_params: int) -> float:
        return self.coord_clip_factor * self.clip_norm / math.sqrt(self.n_coords(n_params))

    def scale(self, n_params: int) -> float:
        """Quantisation scale s: ring units per unit of update."""
        return self.level / self.coord_clip(n_params)

    def sensitivity_int(self, n_params: int) -> float:
        """L2 bound of one device's quantised vector in ring units (conditional rounding, KLS21)."""
        m = self.n_coords(n_params)
        cs = self.clip_norm * self.scale(n_params)
        return math.sqrt(cs**2 + m / 4 + math.sqrt(2 * math.log(1 / ROUNDING_BETA)) * (cs + math.sqrt(m) / 2))

    def noise_std_int(self, n_params: int) -> float:
        """Std of the key holder's discrete Gaussian noise, in ring units (0 without DP)."""
        return self.noise_multiplier * self.sensitivity_int(n_params)

    def noise_std(self, n_params: int) -> float:
        """The same noise in units of the update (what the dequantised sum carries)."""
        if self.scheme.ring:
            return self.noise_std_int(n_params) / self.scale(n_params)
        return self.noise_multiplier * self.clip_norm if math.isfinite(self.clip_norm) else 0.0

    def check_ring(self, n_params: int) -> None:
        """Refuse parameters whose cohort sum (plus 8 sigma of noise) could wrap around the ring."""
        worst = self.max_cohort * self.level + NOISE_TAIL_SIGMAS * self.noise_std_int(n_params)
        if worst >= 2 ** (self.ring_bits - 1):
            raise ValueError(
                f"ring of {self.ring_bits} bits cannot hold {self.max_cohort} devices x {self.level} "
                f"plus noise (needs {math.ceil(math.log2(worst + 1)) + 1} bits)"
            )

    def payload_bytes(self, n_params: int) -> int:
        if self.scheme.ring:
            return wire.packed_len(self.n_coords(n_params), self.ring_bits)
        if not self.scheme.private:
            return 4 * self.n_coords(n_params)
        raise ValueError("a CKKS payload's size is TenSEAL's; measure it")

    def upload_bytes(self, n_params: int) -> int:
        """Exact bytes of one upload (secagg: header + sealed seed + packed payload)."""
        return wire.HEADER_LEN + self.scheme.seal_len + self.payload_bytes(n_params)

    @property
    def ckks_mask_bound(self) -> float:
        """CKKS: each device's real mask lies in [-bound, bound) per coordinate, so a cohort's masked
        sum stays within what the context decrypts exactly (wire.CKKS_MASK_SUM_BOUND)."""
        return wire.CKKS_MASK_SUM_BOUND / self.max_cohort

    def honest_sum_bounds(self, n_params: int, n_devices: int) -> tuple[float, float]:
        """(per-coordinate, L2) bounds of a sum of `n_devices` honest uploads, in update units,
        noise excluded: what n clipped devices can produce (secagg: after quantisation)."""
        if self.scheme.ring:
            s = self.scale(n_params)
            return n_devices * self.level / s, n_devices * self.sensitivity_int(n_params) / s
        return n_devices * self.coord_clip(n_params), n_devices * self.clip_norm

    @property
    def wire_mode(self) -> wire.Mode:
        return self.scheme.wire_mode

    @property
    def label(self) -> str:
        """What every output carrying results under these parameters must say."""
        return self.scheme.label

    # --- canonical encoding, bound into every seal ---

    def config_bytes(self, round_seed: bytes | int, n_params: int) -> bytes:
        """Canonical little-endian encoding of the parameters, model size and round seed (version 1)."""
        mods = self.ckks_coeff_mod_bits
        return b"".join(
            [
                wire.CONFIG_LABEL,
                struct.pack(
                    "<BIIBBdddIII",
                    int(self.wire_mode),
                    n_params,
                    self.n_coords(n_params),
                    self.quant_bits,
                    self.ring_bits,
                    self.clip_norm,
                    self.coord_clip_factor,
                    self.noise_multiplier,
                    self.max_cohort,
                    self.k_min,
                    self.ckks_poly_modulus,
                ),
                struct.pack(f"<B{len(mods)}BB", len(mods), *mods, self.ckks_scale_bits),
                round_seed_bytes(round_seed),
            ]
        )

    def config_digest(self, round_seed: bytes | int, n_params: int) -> bytes:
        return wire.sha256(self.config_bytes(round_seed, n_params))

    def config_tag(self, round_seed: bytes | int, n_params: int) -> bytes:
        return self.config_digest(round_seed, n_params)[: wire.CONFIG_TAG_LEN]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ckks_coeff_mod_bits"] = list(self.ckks_coeff_mod_bits)
        d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProtectionParams:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "ckks_coeff_mod_bits" in kw:
            kw["ckks_coeff_mod_bits"] = tuple(kw["ckks_coeff_mod_bits"])
        return cls(**kw)

    def replace(self, **changes: Any) -> ProtectionParams:
        return dataclasses.replace(self, **changes)


def max_secagg_coords(upload_bytes: int, ring_bits: int) -> int:
    """Most coordinates a secagg upload of at most `upload_bytes` (header and seal included) carries."""
    return (upload_bytes - wire.HEADER_LEN - wire.SEAL_LEN) * 8 // ring_bits


DEFAULT = ProtectionParams()
CKKS_DEFAULT = ProtectionParams(mode="ckks", coords_per_round=None, max_upload_bytes=1 << 20)
PLAINTEXT_DEFAULT = ProtectionParams(
    mode="plaintext", coords_per_round=None, clip_norm=math.inf, max_upload_bytes=1 << 20
)


def select_coordinates(params: ProtectionParams, round_seed: bytes | int, n_params: int) -> np.ndarray:
    """The m coordinates uploaded this round, ascending; public and the same for every device.

    Partial Fisher-Yates over 0..n_params-1 driven by little-endian u32 words of the ChaCha20
    keystream keyed by SHA-256(label || round seed), with rejection sampling so that every subset
    is equally likely. The result is cached and read-only (a round's cohorts and every device of
    a cohort ask again).
    """
    m = params.n_coords(n_params)
    if m == n_params:
        return np.arange(n_params, dtype=np.int64)
    return _selection(m, n_params, round_seed_bytes(round_seed))


@functools.lru_cache(maxsize=4096)
def _selection(m: int, n_params: int, seed: bytes) -> np.ndarray:
    key = wire.sha256(wire.SELECT_LABEL + seed)
    bounds = n_params - np.arange(m, dtype=np.int64)
    limits = 2**32 - (2**32 % bounds)
    words = np.frombuffer(wire.chacha20_keystream(key, 8 * (m + 64)), dtype="<u4").astype(np.int64)
    if np.all(words[:m] < limits):  # no word rejected (all but ~1 in 3,000 selections): the
        js = (np.arange(m) + words[:m] % bounds).tolist()  # i-th word serves the i-th draw
    else:
        js = _draws_with_rejection(key, m, n_params)
    perm = list(range(n_params))
    for i, j in enumerate(js):
        perm[i], perm[j] = perm[j], perm[i]
    out = np.sort(np.asarray(perm[:m], dtype=np.int64))
    out.flags.writeable = False
    return out


def _draws_with_rejection(key: bytes, m: int, n_params: int) -> list[int]:
    """The swap targets word by word, skipping rejected words (the keystream extended as needed)."""
    words: list[int] = []
    pos, length, js = 0, 4 * (m + 64), []
    for i in range(m):
        bound = n_params - i
        limit = 2**32 - (2**32 % bound)
        while True:
            if pos >= len(words):  # the keystream read as u32 words, extended when exhausted
                length *= 2
                words = np.frombuffer(wire.chacha20_keystream(key, length), dtype="<u4").tolist()
            w = words[pos]
            pos += 1
            if w < limit:
                break
        js.append(i + w % bound)
    return js


# --- who learns what, as data (docs/privacy.md explains it in prose) ---


@dataclass(frozen=True)
class PartyView:
    party: str
    sees: tuple[str, ...]
    learns: tuple[str, ...]
    can_do: tuple[str, ...]


PARTY_VIEWS: tuple[PartyView, ...] = (
    PartyView(
        "device",
        ("the model", "the round parameters and round seed", "the key holder's public key"),
        ("nothing about other devices",),
        ("upload one protected update per round",),
    ),
    PartyView(
        "aggregator",
        ("each upload: header, sealed seed, masked payload (uniform in the ring)", "cohort mask sums"),
        ("the noisy sum of each cohort of >= k devices", "who took part and how many bytes they sent"),
        ("drop devices", "refuse uploads", "choose cohorts (cannot reuse a seal across cohorts)"),
    ),
    PartyView(
        "key_holder",
        ("sealed seeds and payload digests, never payloads", "CKKS: the cohort-sum ciphertext"),
        ("the masks (which carry no information)", "cohort sizes", "CKKS: the noise-free cohort sum"),
        ("refuse cohorts < k", "answer each (round, cohort) and each seal once", "add DP noise"),
    ),
    PartyView(
        "network_observer",
        ("TLS-protected traffic: sizes and timing",),
        ("that a device took part in a round",),
        ("nothing else while TLS holds",),
    ),
    PartyView(
        "malicious_device",
        ("what any device sees",),
        ("nothing about other devices",),
        ("shift its cohort's sum by up to max_cohort-worth of ring range (no validity proofs)",),
    ),
)

COLLUSION: dict[str, str] = {
    "aggregator+key_holder": "see every individual update in the clear (masks subtracted)",
    "aggregator+devices": "n-1 colluding devices of a cohort reveal the last one's noisy update",
    "aggregator+sybil_devices": "the aggregator alone can fake k-1 devices; then only DP noise protects",
}
