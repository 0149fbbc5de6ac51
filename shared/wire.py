"""Byte formats of a device's upload: header, bit packing, mask streams and seal recipe (version 2).

Every byte a device sends is defined here, so a Kotlin/Swift port has one module to mirror
(docs/wire-format.md explains it byte by byte; tests/vectors/wire/ holds golden vectors). The
cryptography is composed only from `cryptography` primitives: RFC 9180 HPKE (base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) seals the mask seed, and the
RFC 8439 ChaCha20 keystream is the only pseudo-random generator. Nothing here is secret-dependent
except the seal, and nothing here is home-made cryptography.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = [
    "AEAD_TAG_LEN",
    "CHACHA20_NONCE",
    "CKKS_CHUNK_COUNT_LEN",
    "CKKS_CHUNK_LEN_LEN",
    "CKKS_MASK_SUM_BOUND",
    "CONFIG_LABEL",
    "CONFIG_TAG_LEN",
    "DATA_BIT",
    "DIGEST_LEN",
    "HEADER_FORMAT",
    "HEADER_LEN",
    "MAGIC",
    "MAX_RING_BITS",
    "MAX_U32",
    "ROUND_SEED_LEN",
    "SEAL_INFO_LABEL",
    "SEAL_LEN",
    "SEAL_SUITE",
    "SEED_LEN",
    "SELECT_LABEL",
    "WIRE_VERSION",
    "X25519_KEY_LEN",
    "Header",
    "Mode",
    "Reason",
    "WireError",
    "as_rows",
    "carries_data",
    "chacha20_keystream",
    "ckks_mask",
    "fields_rows",
    "keystream_rows",
    "mask_stream",
    "mask_streams",
    "pack_bits",
    "pack_bits_rows",
    "pack_ckks_body",
    "packed_len",
    "padding_ok_rows",
    "parse_ckks_body",
    "seal_info",
    "sha256",
    "unpack_bits",
    "unpack_bits_rows",
    "with_data_bit",
]

# v2: the seal no longer binds a payload digest; CKKS uploads carry a seal too.
# v3: the mask seed's first bit says whether the upload carries anything (`with_data_bit`).
WIRE_VERSION = 3
MAGIC = b"FC"
HEADER_FORMAT = "<2sBBIII4s"  # magic, version, mode, round id, cohort id, model version, config tag
HEADER_LEN = struct.calcsize(HEADER_FORMAT)  # 20
CONFIG_TAG_LEN = 4
DIGEST_LEN = 32  # SHA-256 (config digest)
SEED_LEN = 32  # mask seed, fresh per upload from os.urandom
ROUND_SEED_LEN = 32  # public per-round seed that selects the coordinates
X25519_KEY_LEN = 32
AEAD_TAG_LEN = 16
SEAL_LEN = X25519_KEY_LEN + SEED_LEN + AEAD_TAG_LEN  # 80: HPKE enc || ciphertext || tag
MAX_U32 = 2**32 - 1
MAX_RING_BITS = 32
CKKS_CHUNK_COUNT_LEN = 1
# CKKS: a masked cohort sum stays below this in magnitude, where TenSEAL's N=4096 / 60+49-bit / 2^40
# context still decrypts to ~1e-8 (measured up to 2^19); each device's real mask is at most
# CKKS_MASK_SUM_BOUND / max_cohort per coordinate.
CKKS_MASK_SUM_BOUND = 2.0**18  # review 7: masks + CKKS_MAX_ROOM stay below the wrap point q0/2^41 ~ 2^19
CKKS_CHUNK_LEN_LEN = 4

# Domain-separation labels: every derived value names its purpose and the format version.
SEAL_INFO_LABEL = b"fedchurn/v2/seal"
CONFIG_LABEL = b"fedchurn/v1/config"
SELECT_LABEL = b"fedchurn/v1/select"
CHACHA20_NONCE = bytes(16)  # 32-bit block counter 0 || 96-bit nonce 0; each key is used for one stream

SEAL_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class Mode(IntEnum):
    """The header's mode byte."""

    SECAGG = 1
    CKKS = 2
    PLAINTEXT = 3


class Reason(StrEnum):
    """Machine-readable reasons for refusing an upload, a seal or a cohort (for the audit log)."""

    BAD_MAGIC = "bad_magic"
    UNSUPPORTED_VERSION = "unsupported_version"
    WRONG_MODE = "wrong_mode"
    WRONG_ROUND = "wrong_round"
    WRONG_COHORT = "wrong_cohort"
    WRONG_MODEL_VERSION = "wrong_model_version"
    WRONG_CONFIG = "wrong_config"
    WRONG_LENGTH = "wrong_length"
    OVERSIZED = "oversized"
    MALFORMED_PAYLOAD = "malformed_payload"
    NON_FINITE = "non_finite"
    DUPLICATE_DEVICE = "duplicate_device"
    DUPLICATE_SEAL = "duplicate_seal"
    COHORT_FULL = "cohort_full"
    COHORT_CLOSED = "cohort_closed"
    SEAL_INVALID = "seal_invalid"
    SEAL_ALREADY_USED = "seal_already_used"
    COHORT_TOO_SMALL = "cohort_too_small"
    COHORT_TOO_LARGE = "cohort_too_large"
    ALREADY_ANSWERED = "already_answered"
    DP_POLICY = "dp_policy"
    BAD_REQUEST = "bad_request"
    MODE_DISABLED = "mode_disabled"
    OUT_OF_RANGE = "out_of_range"  # an unmasked sum no honest cohort of its size can produce


class WireError(ValueError):
    """A byte string that is not a valid version-1 upload; `reason` says why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Header:
    """The 20-byte header every upload starts with (all integers little-endian)."""

    mode: Mode
    round_id: int
    cohort_id: int
    model_version: int
    config_tag: bytes
    version: int = WIRE_VERSION

    def pack(self) -> bytes:
        for name in ("round_id", "cohort_id", "model_version"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_U32:
                raise ValueError(f"{name} must fit in an unsigned 32-bit integer, got {value}")
        if len(self.config_tag) != CONFIG_TAG_LEN:
            raise ValueError(f"config tag must be {CONFIG_TAG_LEN} bytes")
        return struct.pack(
            HEADER_FORMAT,
            MAGIC,
            self.version,
            int(self.mode),
            self.round_id,
            self.cohort_id,
            self.model_version,
            self.config_tag,
        )

    @classmethod
    def parse(cls, blob: bytes) -> Header:
        """Parse and check magic, version and mode; the caller checks the values against its round."""
        if len(blob) < HEADER_LEN:
            raise WireError(Reason.WRONG_LENGTH, f"{len(blob)} bytes is shorter than the header")
        magic, version, mode, round_id, cohort_id, model_version, tag = struct.unpack_from(
            HEADER_FORMAT, blob
        )
        if magic != MAGIC:
            raise WireError(Reason.BAD_MAGIC, f"magic {magic!r}")
        if version != WIRE_VERSION:
            raise WireError(Reason.UNSUPPORTED_VERSION, f"wire version {version}")
        try:
            parsed_mode = Mode(mode)
        except ValueError:
            raise WireError(Reason.WRONG_MODE, f"unknown mode byte {mode}") from None
        return cls(parsed_mode, round_id, cohort_id, model_version, tag, version)


DATA_BIT = 0x80  # in the mask seed's first byte: set when what the upload carries is not all zero


def with_data_bit(seed: bytes, has_data: bool) -> bytes:
    """The mask seed with its first bit saying whether the upload carries anything (version 3).

    A device without data (too new to have a labelled day, held out with no scored day, a crafted
    model's non-finite output, values that round to nothing) uploads exact zeros, which the
    aggregator can predict: a cohort of such devices around one target was the target's update
    alone, with every check passed (review 13). The bit travels inside the seal, so only the key
    holder reads it, and it counts only seeds with the bit towards a cohort's k. The other 255
    bits stay the device's random seed; the mask is derived from all 256, bit included, on both
    sides.
    """
    if len(seed) != SEED_LEN:
        raise ValueError(f"mask seed must be {SEED_LEN} bytes")
    first = (seed[0] & ~DATA_BIT & 0xFF) | (DATA_BIT if has_data else 0)
    return bytes([first]) + seed[1:]


def carries_data(seed: bytes) -> bool:
    """Whether an opened mask seed says its upload carries anything (`with_data_bit`)."""
    return bool(seed[0] & DATA_BIT)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seal_info(header: bytes, config_digest: bytes) -> bytes:
    """HPKE `info` for a seed's seal: binds the header (round, cohort, model version) and the config.

    cryptography's single-shot HPKE takes `info` but no separate AAD; `info` enters the key
    schedule, so a seal opens only under exactly this context. Version 1 also bound SHA-256 of the
    masked payload; the key holder, which can derive the mask, could then test every candidate value
    of a small upload (an evaluation histogram) against that digest. Version 2 gives the key holder
    nothing that depends on the payload.
    """
    if len(header) != HEADER_LEN or len(config_digest) != DIGEST_LEN:
        raise ValueError("seal context has the wrong lengths")
    return SEAL_INFO_LABEL + header + config_digest


def chacha20_keystream(key: bytes, n_bytes: int) -> bytes:
    """The first n bytes of the RFC 8439 ChaCha20 keystream under `key` (counter 0, nonce 0)."""
    if len(key) != 32:
        raise ValueError("ChaCha20 key must be 32 bytes")
    enc = Cipher(algorithms.ChaCha20(key, CHACHA20_NONCE), mode=None).encryptor()
    return enc.update(bytes(n_bytes))


def packed_len(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits LSB-first into a little-endian bit stream, zero-padded."""
    _check_bits(bits)
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint64)
    stream = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`; refuses a wrong length or non-zero padding (one encoding per vector)."""
    _check_bits(bits)
    if len(data) != packed_len(count, bits):
        raise WireError(Reason.WRONG_LENGTH, f"{len(data)} bytes for {count} values of {bits} bits")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if stream[count * bits :].any():
        raise WireError(Reason.MALFORMED_PAYLOAD, "non-zero padding bits")
    return _fields(stream, bits, count)


def _fields(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    grid = stream[: count * bits].reshape(count, bits).astype(np.uint64)
    return (grid << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def mask_stream(seed: bytes, count: int, bits: int) -> np.ndarray:
    """The mask: `count` ring elements, the keystream read as consecutive `bits`-bit fields.

    Reads the first ceil(count * bits / 8) keystream bytes; the unused high bits of the last byte
    are discarded.
    """
    _check_bits(bits)
    ks = np.frombuffer(chacha20_keystream(seed, packed_len(count, bits)), dtype=np.uint8)
    return _fields(np.unpackbits(ks, bitorder="little"), bits, count)


def ckks_mask(seed: bytes, count: int, bound: float) -> np.ndarray:
    """The CKKS mask: `count` reals uniform in [-bound, bound), from consecutive little-endian u32
    words of the ChaCha20 keystream under `seed`: value = bound * (2 * w / 2^32 - 1).

    A device adds it to its clipped coordinates before encrypting; the key holder subtracts the sum
    of the masks of the seals it opened. A ciphertext that is not the sum of exactly those
    devices' ciphertexts (one device's, scaled; a made-up cohort) decrypts to a value dominated by
    masks, which the key holder's range check refuses.
    """
    if not (bound > 0 and np.isfinite(bound)):
        raise ValueError("mask bound must be positive and finite")
    words = np.frombuffer(chacha20_keystream(seed, 4 * count), dtype="<u4").astype(np.float64)
    return bound * (2.0 * words / 2.0**32 - 1.0)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_RING_BITS:
        raise ValueError(f"bit width must be in 1..{MAX_RING_BITS}, got {bits}")


# --- batches: many equal-length vectors at once (a simulation node, the aggregator, the key holder) ---
#
# Each function below equals its one-row counterpart applied row by row; they exist because the
# per-row functions cost a few numpy calls per row (tens of microseconds), which dominates once a
# node protects hundreds of updates or an aggregator sums thousands per round. They work on byte
# groups instead of single bits: a stream of `bits`-bit fields returns to a byte boundary every
# lcm(bits, 8) bits, so a group of 8 / gcd(bits, 8) fields spans bits / gcd(bits, 8) whole bytes
# and each field sits at the same byte offsets and shift in every group (8, 16 and 32 bits are
# plain little-endian words).


def _group_shape(bits: int) -> tuple[int, int]:
    """(fields per group, bytes per group) of the packing of section 4 at this width."""
    g = math.gcd(bits, 8)
    return 8 // g, bits // g


def as_rows(rows: np.ndarray | Sequence[bytes], row_len: int) -> np.ndarray:
    """A (D, row_len) uint8 array of D byte strings (or such an array, checked); WireError
    WRONG_LENGTH names the first row of another length."""
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2 or rows.shape[1] != row_len:
            raise WireError(Reason.WRONG_LENGTH, f"rows of shape {rows.shape}, expected (D, {row_len})")
        return np.ascontiguousarray(rows, dtype=np.uint8)
    for i, r in enumerate(rows):
        if len(r) != row_len:
            raise WireError(Reason.WRONG_LENGTH, f"row {i}: {len(r)} bytes, expected {row_len}")
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), row_len)


def fields_rows(rows: np.ndarray, bits: int, count: int) -> np.ndarray:
    """`count` fields of `bits` bits from each row of a (D, >= packed_len) uint8 array: (D, count)
    uint64. Row by row the same as reading one bit stream (`unpack_bits` without its checks, and
    `mask_stream`'s reading of a keystream): bits past count * bits are ignored."""
    _check_bits(bits)
    rows = np.asarray(rows, dtype=np.uint8)
    n_rows = rows.shape[0]
    if bits in (8, 16, 32):  # whole little-endian words: a view
        words = np.ascontiguousarray(rows[:, : count * bits // 8])
        return words.view(f"<u{bits // 8}").astype(np.uint64)
    per_group, group_bytes = _group_shape(bits)
    groups = -(-count // per_group)
    need = groups * group_bytes
    if rows.shape[1] >= need:
        grid = rows[:, :need]
    else:
        grid = np.zeros((n_rows, need), dtype=np.uint8)
        grid[:, : rows.shape[1]] = rows
    cells = grid.reshape(n_rows, groups, group_bytes)
    out = np.empty((n_rows, groups, per_group), dtype=np.uint64)
    work = np.dtype(np.uint32 if bits + 7 <= 32 else np.uint64)  # a field and its shift fit
    mask = np.asarray((1 << bits) - 1, dtype=work)
    for j in range(per_group):
        start = j * bits
        lo, hi, shift = start >> 3, (start + bits - 1) >> 3, start & 7
        acc: np.ndarray = cells[:, :, lo].astype(work)
        for k in range(1, hi - lo + 1):
            byte_k: np.ndarray = cells[:, :, lo + k].astype(work)
            acc |= np.left_shift(byte_k, np.asarray(8 * k, dtype=work))
        out[:, :, j] = np.right_shift(acc, np.asarray(shift, dtype=work)) & mask
    flat = out.reshape(n_rows, groups * per_group)
    return flat if flat.shape[1] == count else np.ascontiguousarray(flat[:, :count])


def padding_ok_rows(rows: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Per row of a (D, packed_len) uint8 array: are its padding bits zero (what `unpack_bits`
    requires)? Padding lives in the last byte only, so one column decides."""
    _check_bits(bits)
    pad = packed_len(count, bits) * 8 - count * bits
    rows = np.asarray(rows, dtype=np.uint8)
    if pad == 0 or rows.shape[0] == 0:
        return np.ones(rows.shape[0], dtype=bool)
    return np.asarray((rows[:, -1] >> (8 - pad)) == 0)


def pack_bits_rows(values: np.ndarray, bits: int) -> list[bytes]:
    """`pack_bits` of every row of a (D, count) array: D byte strings of packed_len(count, bits)."""
    _check_bits(bits)
    v = np.asarray(values, dtype=np.uint64)
    if v.ndim != 2:
        raise ValueError(f"values must be a (D, count) array, got shape {v.shape}")
    n_rows, count = v.shape
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value does not fit in {bits} bits")
    n = packed_len(count, bits)
    if bits in (8, 16, 32):  # whole little-endian words
        flat = v.astype(f"<u{bits // 8}").tobytes()
        return [flat[i * n : (i + 1) * n] for i in range(n_rows)]
    per_group, group_bytes = _group_shape(bits)
    groups = -(-count // per_group)
    work = np.uint32 if bits + 7 <= 32 else np.uint64  # a field shifted within its bytes fits
    padded = np.zeros((n_rows, groups * per_group), dtype=work)
    padded[:, :count] = v
    cells = padded.reshape(n_rows, groups, per_group)
    out = np.zeros((n_rows, groups, group_bytes), dtype=np.uint8)
    for j in range(per_group):
        start = j * bits
        field_j = cells[:, :, j]
        for c in range(start >> 3, ((start + bits - 1) >> 3) + 1):
            offset = 8 * c - start
            part = field_j >> work(offset) if offset >= 0 else field_j << work(-offset)
            out[:, :, c] |= part.astype(np.uint8)  # the low byte: astype truncates
    flat = np.ascontiguousarray(out.reshape(n_rows, groups * group_bytes)[:, :n]).tobytes()
    return [flat[i * n : (i + 1) * n] for i in range(n_rows)]


def unpack_bits_rows(rows: np.ndarray | Sequence[bytes], bits: int, count: int) -> np.ndarray:
    """`unpack_bits` of D byte strings (or a (D, packed_len) uint8 array): (D, count) uint64.
    Refuses like `unpack_bits`, naming the first bad row; a caller that needs a verdict per row
    checks `padding_ok_rows` first and reads the good rows with `fields_rows`."""
    _check_bits(bits)
    grid = as_rows(rows, packed_len(count, bits))
    bad = np.flatnonzero(~padding_ok_rows(grid, bits, count))
    if bad.size:
        raise WireError(Reason.MALFORMED_PAYLOAD, f"row {int(bad[0])}: non-zero padding bits")
    return fields_rows(grid, bits, count)


def keystream_rows(keys: Sequence[bytes], n_bytes: int) -> np.ndarray:
    """(D, n_bytes) uint8: row i is `chacha20_keystream(keys[i], n_bytes)` (one cipher per key)."""
    if not keys:
        return np.zeros((0, n_bytes), dtype=np.uint8)
    zeros = bytes(n_bytes)
    for k in keys:
        if len(k) != 32:
            raise ValueError("ChaCha20 key must be 32 bytes")
    joined = b"".join(
        Cipher(algorithms.ChaCha20(k, CHACHA20_NONCE), mode=None).encryptor().update(zeros) for k in keys
    )
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(keys), n_bytes)


def mask_streams(seeds: Sequence[bytes], count: int, bits: int) -> np.ndarray:
    """`mask_stream` of every seed: (D, count) uint64, row i the mask of seeds[i]. One keystream
    call per seed; the bytes are read into fields for all seeds at once."""
    _check_bits(bits)
    return fields_rows(keystream_rows(seeds, packed_len(count, bits)), bits, count)


def pack_ckks_body(chunks: list[bytes]) -> bytes:
    """CKKS body: u8 chunk count, then per chunk u32 length and TenSEAL's serialised CKKSVector."""
    if not 1 <= len(chunks) <= 255:
        raise ValueError("1..255 ciphertext chunks")
    out = [struct.pack("<B", len(chunks))]
    for c in chunks:
        out += [struct.pack("<I", len(c)), c]
    return b"".join(out)


def parse_ckks_body(body: bytes) -> list[bytes]:
    if len(body) < CKKS_CHUNK_COUNT_LEN:
        raise WireError(Reason.WRONG_LENGTH, "empty CKKS body")
    n, pos, chunks = body[0], CKKS_CHUNK_COUNT_LEN, []
    for _ in range(n):
        if pos + CKKS_CHUNK_LEN_LEN > len(body):
            raise WireError(Reason.WRONG_LENGTH, "truncated CKKS chunk length")
        (size,) = struct.unpack_from("<I", body, pos)
        pos += CKKS_CHUNK_LEN_LEN
        if size == 0 or pos + size > len(body):
            raise WireError(Reason.WRONG_LENGTH, "truncated CKKS chunk")
        chunks.append(body[pos : pos + size])
        pos += size
    if n == 0 or pos != len(body):
        raise WireError(Reason.WRONG_LENGTH, "CKKS body has trailing bytes or no chunk")
    return chunks
