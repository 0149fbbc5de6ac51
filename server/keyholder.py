"""The key holder (helper): opens sealed seeds and returns only noisy mask sums of cohorts >= k.

It never sees a payload (only its SHA-256, bound into the seal), so it never holds an individual
update either. Its rules, each one enforced before anything is returned:
- every seal must open under the round's context (round, cohort, model version, parameters,
  payload digest); a seal that fails is dropped and named, never silently skipped;
- a cohort needs at least k valid devices (k = max(own k_min, the request's k_min));
- each (round, cohort) is answered once, and each seal is used in at most one answer ever (so two
  overlapping cohorts cannot be differenced); both facts are committed to SQLite before answering,
  so a restart does not reopen them;
- DP noise (exact discrete Gaussian, in the ring) is subtracted from its mask sum, so the
  aggregator only ever obtains the noisy cohort sum.
In CKKS mode it holds the secret key and decrypts only cohort sums (see docs/privacy.md for what
it cannot check there).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedchurn.server.dp import discrete_gaussian
from fedchurn.shared import wire
from fedchurn.shared.protection import CKKS_DEFAULT, ProtectionParams, round_seed_bytes
from fedchurn.shared.wire import Reason

CKKS_GRID_BITS = 20  # decrypted CKKS sums are rounded to clip_norm / 2^20 before release (see privacy.md)
KEY_FILE_MODE = 0o600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (
    round_id INTEGER NOT NULL,
    cohort_id INTEGER NOT NULL,
    mode TEXT NOT NULL,
    n_devices INTEGER NOT NULL,
    answered_at REAL NOT NULL,
    PRIMARY KEY (round_id, cohort_id)
);
CREATE TABLE IF NOT EXISTS used_seals (
    seal_id BLOB PRIMARY KEY,
    round_id INTEGER NOT NULL,
    cohort_id INTEGER NOT NULL
);
"""


class KeyHolderRefusedError(Exception):
    """The key holder answers nothing for this request; `reason` is machine-readable."""

    def __init__(self, reason: Reason, detail: str, dropped: Sequence[Dropped] = ()) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.dropped = tuple(dropped)


@dataclass(frozen=True)
class Dropped:
    device_id: str
    reason: Reason


@dataclass(frozen=True)
class SealedEntry:
    """What the aggregator forwards per device: never the payload, only its digest."""

    device_id: str
    sealed_seed: bytes
    payload_digest: bytes


@dataclass(frozen=True)
class MaskSumRequest:
    round_id: int
    cohort_id: int
    model_version: int
    round_seed: bytes
    n_params: int
    params: ProtectionParams
    entries: tuple[SealedEntry, ...]


@dataclass(frozen=True)
class MaskSumResponse:
    """Sum of the included devices' masks minus the DP noise, in Z_{2^ring_bits}."""

    round_id: int
    cohort_id: int
    mask_sum: np.ndarray  # uint64, m ring elements
    included: tuple[str, ...]
    dropped: tuple[Dropped, ...]
    noise_std_int: float


@dataclass(frozen=True)
class CkksSumRequest:
    round_id: int
    cohort_id: int
    model_version: int
    round_seed: bytes
    n_params: int
    params: ProtectionParams
    device_ids: tuple[str, ...]
    ciphertext: bytes  # wire.pack_ckks_body of the summed CKKS vectors


@dataclass(frozen=True)
class CkksSumResponse:
    round_id: int
    cohort_id: int
    values: np.ndarray  # float64, m values: the cohort sum of the selected coordinates plus DP noise
    n_devices: int
    noise_std: float


@dataclass
class _State:
    """Once-only facts in SQLite (stdlib); an in-memory database when no path is given."""

    path: Path | None
    conn: sqlite3.Connection = field(init=False)

    def __post_init__(self) -> None:
        target = str(self.path) if self.path is not None else ":memory:"
        self.conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def answered(self, round_id: int, cohort_id: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM answered WHERE round_id = ? AND cohort_id = ?", (round_id, cohort_id)
        ).fetchone()
        return row is not None

    def used(self, seal_ids: Sequence[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        for i in range(0, len(seal_ids), 500):
            chunk = list(seal_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT seal_id FROM used_seals WHERE seal_id IN ({marks})", chunk)
            out |= {bytes(r[0]) for r in rows}
        return out

    def commit(self, round_id: int, cohort_id: int, mode: str, n: int, seal_ids: Sequence[bytes]) -> bool:
        """Record the answer atomically; False if another answer got there first."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT INTO answered VALUES (?, ?, ?, ?, ?)", (round_id, cohort_id, mode, n, time.time())
            )
            self.conn.executemany(
                "INSERT INTO used_seals VALUES (?, ?, ?)", [(s, round_id, cohort_id) for s in seal_ids]
            )
            self.conn.execute("COMMIT")
            return True
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK")
            return False

    def close(self) -> None:
        self.conn.close()


class KeyHolder:
    """In-process key holder; `keyholder_service.create_app` wraps one for deployment."""

    def __init__(
        self,
        private_key: X25519PrivateKey,
        state_path: Path | None = None,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        ckks_secret_context: bytes | None = None,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
    ) -> None:
        """`noise_exempt`: (params, vector length) of evaluation histograms, answered below the
        noise floor. Model updates never match them (their length is the model's, their params the
        training ones), so the floor still binds every training sum."""
        if k_min < 1 or min_noise_multiplier < 0:
            raise ValueError("k_min must be >= 1 and min_noise_multiplier >= 0")
        self._sk = private_key
        self._pk = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._state = _State(state_path)
        self._lock = threading.Lock()
        self.k_min = k_min
        self.min_noise_multiplier = min_noise_multiplier
        self.noise_exempt = tuple(noise_exempt)
        self._ckks_params = ckks_params
        self._ckks_secret_context = ckks_secret_context
        self._ckks_ctx: Any = None
        self._ckks_public: bytes | None = None
        self._ckks_path: Path | None = None

    @classmethod
    def generate(
        cls,
        state_path: Path | None = None,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
    ) -> KeyHolder:
        """A key holder with a fresh key pair (simulation: in-process, state in memory unless a path)."""
        return cls(
            X25519PrivateKey.generate(),
            state_path,
            k_min,
            min_noise_multiplier,
            ckks_params,
            noise_exempt=noise_exempt,
        )

    @classmethod
    def open(
        cls,
        key_path: Path,
        state_path: Path,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
    ) -> KeyHolder:
        """A deployed key holder: its key (created 0600 on first use) and state survive restarts.

        The CKKS secret context, once created, is kept beside the key as `<key_path>.ckks`.
        """
        if key_path.exists():
            sk = X25519PrivateKey.from_private_bytes(key_path.read_bytes())
        else:
            sk = X25519PrivateKey.generate()
            raw = sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        ckks_path = key_path.with_name(key_path.name + ".ckks")
        secret = ckks_path.read_bytes() if ckks_path.exists() else None
        kh = cls(sk, state_path, k_min, min_noise_multiplier, ckks_params, secret, noise_exempt)
        kh._ckks_path = ckks_path
        return kh

    def public_key(self) -> bytes:
        """The raw 32-byte X25519 public key devices seal their seeds to."""
        return self._pk

    def answered(self, round_id: int, cohort_id: int) -> bool:
        return self._state.answered(round_id, cohort_id)

    def close(self) -> None:
        self._state.close()

    # --- secagg ---

    def _check_policy(self, params: ProtectionParams, mode: str, n_params: int) -> int:
        if params.mode != mode:
            raise KeyHolderRefusedError(
                Reason.WRONG_MODE, f"request is for mode {params.mode!r}, route is {mode!r}"
            )
        exempt = (params, n_params) in self.noise_exempt
        if params.noise_multiplier < self.min_noise_multiplier and not exempt:
            raise KeyHolderRefusedError(
                Reason.DP_POLICY,
                f"noise multiplier {params.noise_multiplier} below this key holder's floor "
                f"{self.min_noise_multiplier}",
            )
        try:
            if mode == "secagg":
                params.check_ring(n_params)
        except ValueError as e:
            raise KeyHolderRefusedError(Reason.BAD_REQUEST, str(e)) from None
        return max(self.k_min, params.k_min)

    def mask_sum(self, request: MaskSumRequest) -> MaskSumResponse:
        """Validate every seal, then answer for the valid ones (>= k) or refuse; once per cohort."""
        p, r = request.params, request
        k = self._check_policy(p, "secagg", r.n_params)
        seed = round_seed_bytes(r.round_seed)
        with self._lock:
            if self._state.answered(r.round_id, r.cohort_id):
                raise KeyHolderRefusedError(
                    Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}"
                )
            if len(r.entries) > p.max_cohort:
                raise KeyHolderRefusedError(Reason.COHORT_TOO_LARGE, f"{len(r.entries)} > {p.max_cohort}")
            header = wire.Header(
                wire.Mode.SECAGG, r.round_id, r.cohort_id, r.model_version, p.config_tag(seed, r.n_params)
            )
            head, digest = header.pack(), p.config_digest(seed, r.n_params)
            used = self._state.used([e.sealed_seed[: wire.X25519_KEY_LEN] for e in r.entries])
            seeds, seal_ids, included, dropped = [], [], [], []
            seen_devices: set[str] = set()
            seen_seals: set[bytes] = set()
            for e in r.entries:
                why = self._entry_problem(e, seen_devices, seen_seals, used)
                opened = None
                if why is None:
                    opened = self._open(e, head, digest)
                    why = Reason.SEAL_INVALID if opened is None else None
                seen_devices.add(e.device_id)
                seen_seals.add(e.sealed_seed[: wire.X25519_KEY_LEN])
                if why is not None or opened is None:
                    dropped.append(Dropped(e.device_id, why or Reason.SEAL_INVALID))
                    continue
                seeds.append(opened)
                seal_ids.append(e.sealed_seed[: wire.X25519_KEY_LEN])
                included.append(e.device_id)
            if len(seeds) < k:
                raise KeyHolderRefusedError(
                    Reason.COHORT_TOO_SMALL, f"{len(seeds)} valid devices < k={k}", dropped
                )
            m, bits = p.n_coords(r.n_params), p.ring_bits
            ring_mask = np.uint64((1 << bits) - 1)
            total = np.zeros(m, dtype=np.uint64)
            for s in seeds:
                total = (total + wire.mask_stream(s, m, bits)) & ring_mask
            sigma = p.noise_std_int(r.n_params)
            noise = discrete_gaussian(sigma, m)
            answer = (total - (noise % (1 << bits)).astype(np.uint64)) & ring_mask
            if not self._state.commit(r.round_id, r.cohort_id, "secagg", len(seeds), seal_ids):
                raise KeyHolderRefusedError(
                    Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}"
                )
        return MaskSumResponse(r.round_id, r.cohort_id, answer, tuple(included), tuple(dropped), sigma)

    @staticmethod
    def _entry_problem(
        e: SealedEntry, devices: set[str], seals: set[bytes], used: set[bytes]
    ) -> Reason | None:
        if len(e.sealed_seed) != wire.SEAL_LEN or len(e.payload_digest) != wire.DIGEST_LEN:
            return Reason.SEAL_INVALID
        if e.device_id in devices:
            return Reason.DUPLICATE_DEVICE
        sid = e.sealed_seed[: wire.X25519_KEY_LEN]
        if sid in seals:
            return Reason.DUPLICATE_SEAL
        if sid in used:
            return Reason.SEAL_ALREADY_USED
        return None

    def _open(self, e: SealedEntry, head: bytes, config_digest: bytes) -> bytes | None:
        info = wire.seal_info(head, config_digest, e.payload_digest)
        try:
            seed = wire.SEAL_SUITE.decrypt(e.sealed_seed, self._sk, info=info)
        except (InvalidTag, ValueError):
            return None
        return seed if len(seed) == wire.SEED_LEN else None

    # --- CKKS ---

    def _ckks(self) -> Any:
        if self._ckks_ctx is None:
            import tenseal as ts

            if self._ckks_secret_context is not None:
                ctx = ts.context_from(self._ckks_secret_context)
            else:
                p = self._ckks_params
                ctx = ts.context(
                    ts.SCHEME_TYPE.CKKS,
                    poly_modulus_degree=p.ckks_poly_modulus,
                    coeff_mod_bit_sizes=list(p.ckks_coeff_mod_bits),
                )
                ctx.global_scale = 2.0**p.ckks_scale_bits
                self._ckks_secret_context = ctx.serialize(save_secret_key=True)
                if self._ckks_path is not None:
                    fd = os.open(self._ckks_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
                    with os.fdopen(fd, "wb") as f:
                        f.write(self._ckks_secret_context)
            pub = ctx.copy()
            pub.make_context_public()
            self._ckks_public = pub.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
            )
            self._ckks_ctx = ctx
        return self._ckks_ctx

    def ckks_public_context(self) -> bytes:
        """The public TenSEAL context devices encrypt to (public key only: no galois/relin keys)."""
        with self._lock:
            self._ckks()
        assert self._ckks_public is not None
        return self._ckks_public

    def ckks_decrypt_sum(self, request: CkksSumRequest) -> CkksSumResponse:
        """Decrypt a cohort-sum ciphertext (>= k declared devices, once), round it, add DP noise."""
        import tenseal as ts

        p, r = request.params, request
        k = self._check_policy(p, "ckks", r.n_params)
        mine = self._ckks_params
        if (p.ckks_poly_modulus, p.ckks_coeff_mod_bits, p.ckks_scale_bits) != (
            mine.ckks_poly_modulus,
            mine.ckks_coeff_mod_bits,
            mine.ckks_scale_bits,
        ):
            raise KeyHolderRefusedError(
                Reason.WRONG_CONFIG, "CKKS parameters differ from this key holder's context"
            )
        n = len(r.device_ids)
        if len(set(r.device_ids)) != n:
            raise KeyHolderRefusedError(Reason.DUPLICATE_DEVICE, "a device is listed twice")
        with self._lock:
            ctx = self._ckks()
            if self._state.answered(r.round_id, r.cohort_id):
                raise KeyHolderRefusedError(
                    Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}"
                )
            if n < k:
                raise KeyHolderRefusedError(Reason.COHORT_TOO_SMALL, f"{n} devices < k={k}")
            if n > p.max_cohort:
                raise KeyHolderRefusedError(Reason.COHORT_TOO_LARGE, f"{n} > {p.max_cohort}")
            try:
                chunks = wire.parse_ckks_body(r.ciphertext)
                values = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt()) for c in chunks])
            except wire.WireError as e:
                raise KeyHolderRefusedError(e.reason, e.detail) from None
            except Exception as e:  # TenSEAL raises plain exceptions on malformed ciphertexts
                raise KeyHolderRefusedError(
                    Reason.MALFORMED_PAYLOAD, f"ciphertext does not decrypt: {e}"
                ) from None
            m = p.n_coords(r.n_params)
            if values.shape != (m,) or not np.all(np.isfinite(values)):
                raise KeyHolderRefusedError(Reason.WRONG_LENGTH, f"decrypted {values.shape}, expected ({m},)")
            if not self._state.commit(r.round_id, r.cohort_id, "ckks", n, ()):
                raise KeyHolderRefusedError(
                    Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}"
                )
        # Never release a raw CKKS decryption (Li-Micciancio key recovery): round to a grid, add noise.
        grid = p.clip_norm / 2**CKKS_GRID_BITS
        sigma = p.noise_std(r.n_params)
        noisy = np.round(values / grid) + discrete_gaussian(sigma / grid, m)
        return CkksSumResponse(r.round_id, r.cohort_id, noisy * grid, n, sigma)


def ckks_noise_free_error(params: ProtectionParams) -> float:
    """Largest error the grid rounding alone adds per coordinate (the CKKS tolerance tests use)."""
    return params.clip_norm / 2**CKKS_GRID_BITS / 2 if math.isfinite(params.clip_norm) else 0.0
