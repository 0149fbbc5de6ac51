"""The key holder (helper): opens sealed seeds and returns only noisy mask sums of cohorts >= k.

It never sees a payload, nor anything computed from one (wire version 2), so it never holds an
individual update and cannot test guesses about one. Its rules, each enforced before anything
is returned:
- every seal must open under the round's context (round, cohort, model version, parameters); a
  seal that fails is dropped and named, never silently skipped;
- a cohort needs at least k valid devices (k = max(own k_min, the request's k_min));
- each (round, cohort) is answered once, and each seal is used in at most one answer ever (so two
  overlapping cohorts cannot be differenced); both facts are committed to SQLite before answering,
  so a restart does not reopen them;
- DP noise (exact discrete Gaussian, in the ring) is subtracted from its mask sum, so the
  aggregator only ever obtains the noisy cohort sum.
In CKKS mode it also holds the secret key. Devices mask their values before encrypting and seal
the mask seed exactly as in secagg, so the key holder decrypts only a sum whose members' seals it
opened: it removes their masks, refuses a result outside what that many honest devices can
produce (a scaled or made-up ciphertext decrypts to mask-dominated values), and consumes the
cohort and its seals whatever the outcome, so a refusal cannot be retried as an oracle.
"""

from __future__ import annotations

import logging
import os
import secrets
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

from fedchurn.server.dp import discrete_gaussian, randomised_round
from fedchurn.shared import wire
from fedchurn.shared.ckks_release import (
    ckks_grid,
    ckks_release_problem,
    ckks_release_std,
    ckks_rooms,
)
from fedchurn.shared.keyholder_pin import KeyHolderPin, KeyHolderPublic
from fedchurn.shared.protection import (
    CKKS,
    CKKS_DEFAULT,
    SECAGG,
    ProtectionParams,
    Scheme,
    round_seed_bytes,
)
from fedchurn.shared.wire import Reason

KEY_FILE_MODE = 0o600

# Slots an upload repeats, and imaginary parts, agree to 4.7e-8 in a sum of 128 uploads (measured);
# anything past ~20x that is someone's. At 1e-3 a multiple of the secret key fitted under it
# (review 9); what fits now is drowned by the release noise (`CKKS_FLOOD_STD`).
CKKS_COPY_TOLERANCE = 2.0**-20
# Refusals after decryption a CKKS key gives before it decrypts no more. The copy and imaginary
# checks must be exact to be tight, so each outcome, released or refused, is a noise-free answer
# about what decrypted; with at most 16 refusals, n requests answer at most log2 of sum_{i<=16}
# C(n, i), ~16 log2(n / 16) + 23 bits (~275 at 10^6 requests, against a key of ~6,500; review
# 10). Honest cohorts are refused only when a device sends garbage.
CKKS_MAX_REFUSALS = 16

# The one message of every refusal after decryption (no figure: it reaches the audit log).
_NOT_HONEST = (
    "the decrypted sum is not what that many honest devices can produce; nothing is released and "
    "the cohort is spent"
)
_LOG = logging.getLogger(__name__)
_REFUSED = "ckks refused"  # an answered cohort's mode once it was refused after decryption
_BUDGET_SPENT = (
    f"this key holder's CKKS key has been refused after decryption {CKKS_MAX_REFUSALS} times, each "
    "an answer about what it decrypted: it decrypts no more; provision a new CKKS key (docs/deploy.md)"
)
_NO_DATA = "refused: too few carried data"  # a cohort consumed by its refusal (decision 150)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (
    round_id INTEGER NOT NULL,
    cohort_id INTEGER NOT NULL,
    mode TEXT NOT NULL,
    n_devices INTEGER NOT NULL,
    answered_at REAL NOT NULL,
    PRIMARY KEY (round_id, cohort_id)
);
CREATE TABLE IF NOT EXISTS owner (
    key_id BLOB NOT NULL,
    state_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS used_seals (
    seal_id BLOB PRIMARY KEY,
    round_id INTEGER NOT NULL,
    cohort_id INTEGER NOT NULL
);
"""


class KeyHolderStateError(ValueError):
    """A once-only state file that is not this key's (another key's, or a fresh one for a key that
    answered with another): opening it would let cohorts be answered again."""


class _BudgetSpentError(Exception):
    """The CKKS refusal budget is spent (raised inside the state's commit)."""


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
    """What the aggregator forwards per device: the sealed mask seed, nothing about the payload."""

    device_id: str
    sealed_seed: bytes


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
    entries: tuple[SealedEntry, ...]  # every device whose ciphertext is in the sum
    ciphertext: bytes  # wire.pack_ckks_body of the summed CKKS vectors


@dataclass(frozen=True)
class CkksSumResponse:
    round_id: int
    cohort_id: int
    values: np.ndarray  # float64, m values: the cohort sum of the selected coordinates plus DP noise
    included: tuple[str, ...]
    dropped: tuple[Dropped, ...]
    noise_std: float

    @property
    def n_devices(self) -> int:
        return len(self.included)


@dataclass(frozen=True)
class _Opened:
    """The seals of one request that opened: their seeds, ids and devices; and the dropped ones."""

    seeds: list[bytes]
    seal_ids: list[bytes]
    included: tuple[str, ...]
    dropped: tuple[Dropped, ...]


class _MemoryState:
    """Once-only facts of a key holder that lives for one process (a simulation's): the same
    rules as `_State`, kept in sets (no database round trip per cohort)."""

    def __init__(self) -> None:
        self._answered: set[tuple[int, int]] = set()
        self._used: set[bytes] = set()
        self._refused: set[tuple[int, int]] = set()

    def answered(self, round_id: int, cohort_id: int) -> bool:
        return (round_id, cohort_id) in self._answered

    def used(self, seal_ids: Sequence[bytes]) -> set[bytes]:
        return {s for s in seal_ids if s in self._used}

    def commit(
        self,
        round_id: int,
        cohort_id: int,
        mode: str,
        n: int,
        seal_ids: Sequence[bytes],
        max_refusals: int | None = None,
    ) -> bool:
        if (round_id, cohort_id) in self._answered or any(s in self._used for s in seal_ids):
            return False
        # `max_refusals` given: the cohort is recorded as refused (`_REFUSED`) within that budget
        if max_refusals is not None and len(self._refused) >= max_refusals:
            raise _BudgetSpentError
        self._answered.add((round_id, cohort_id))
        self._used.update(seal_ids)
        if max_refusals is not None:
            self._refused.add((round_id, cohort_id))
        return True

    def release(self, round_id: int, cohort_id: int, mode: str) -> None:
        self._refused.discard((round_id, cohort_id))

    def refusals(self) -> int:
        return len(self._refused)

    def close(self) -> None:
        self._answered.clear()
        self._used.clear()
        self._refused.clear()


@dataclass
class _State:
    """Once-only facts in SQLite (stdlib), durable across restarts of the key holder."""

    path: Path
    key_id: bytes  # the key holder's public key: a state file serves one key (review 22)
    conn: sqlite3.Connection = field(init=False)
    state_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        self.conn.execute("BEGIN IMMEDIATE")
        row = self.conn.execute("SELECT key_id, state_id FROM owner").fetchone()
        if row is None:
            row = (self.key_id, secrets.token_hex(16))
            self.conn.execute("INSERT INTO owner VALUES (?, ?)", row)
        self.conn.execute("COMMIT")
        if bytes(row[0]) != self.key_id:
            self.conn.close()
            raise KeyHolderStateError(
                f"{self.path} is the once-only state of another key holder key: with it this key "
                "would answer cohorts its own state has seen answered"
            )
        self.state_id = str(row[1])

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

    def commit(
        self,
        round_id: int,
        cohort_id: int,
        mode: str,
        n: int,
        seal_ids: Sequence[bytes],
        max_refusals: int | None = None,
    ) -> bool:
        """Record the answer atomically; False if another answer got there first. A cohort
        committed as refused (`_REFUSED`, CKKS before its release) first checks, in the same
        transaction, that fewer than `max_refusals` are recorded: two processes on one state file
        recorded 17 against 16 when the check and the mark were apart (review 22)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            if max_refusals is not None and self.refusals() >= max_refusals:
                self.conn.execute("ROLLBACK")
                raise _BudgetSpentError
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

    def release(self, round_id: int, cohort_id: int, mode: str) -> None:
        """A cohort committed as refused was released after all: record it as `mode`."""
        self.conn.execute(
            "UPDATE answered SET mode = ? WHERE round_id = ? AND cohort_id = ?", (mode, round_id, cohort_id)
        )

    def refusals(self) -> int:
        return int(
            self.conn.execute(f"SELECT COUNT(*) FROM answered WHERE mode = '{_REFUSED}'").fetchone()[0]
        )

    def close(self) -> None:
        self.conn.close()


def _bind_state(key_path: Path, state: _State) -> None:
    """Record, beside the key, which state file it answers with, and refuse another: a fresh state
    for a key that has answered let it answer every cohort again, and restarted its CKKS refusal
    budget (review 22). Losing the state means provisioning a new key (docs/deploy.md)."""
    marker = key_path.with_name(key_path.name + ".state-id")
    if marker.exists():
        if marker.read_text().strip() != state.state_id:
            state.close()
            raise KeyHolderStateError(
                f"{state.path} is not the once-only state this key answered with ({marker} names "
                "another): restore that state file, or provision a new key holder key"
            )
        return
    _write_private(marker, f"{state.state_id}\n".encode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_ckks_context(params: ProtectionParams = CKKS_DEFAULT) -> tuple[bytes, bytes]:
    """A fresh TenSEAL CKKS context: (secret context, public context with the public key only)."""
    import tenseal as ts

    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.ckks_poly_modulus,
        coeff_mod_bit_sizes=list(params.ckks_coeff_mod_bits),
    )
    ctx.global_scale = 2.0**params.ckks_scale_bits
    secret = ctx.serialize(save_secret_key=True)
    pub = ctx.copy()
    pub.make_context_public()
    public = pub.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return secret, public


class KeyHolder:
    """In-process key holder; `keyholder_service.create_app` wraps one for deployment."""

    def __init__(
        self,
        private_key: X25519PrivateKey,
        state_path: Path | None = None,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        ckks_contexts: tuple[bytes, bytes] | None = None,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
    ) -> None:
        """`ckks_contexts`: (secret, public) serialised TenSEAL contexts (None: made on first use).
        `noise_exempt`: (params, vector length) of evaluation histograms, answered below the noise
        floor. Model updates never match them (their length is the model's, their params the
        training ones, and params are bound into every seal), so the floor still binds every
        training sum."""
        if k_min < 1 or min_noise_multiplier < 0:
            raise ValueError("k_min must be >= 1 and min_noise_multiplier >= 0")
        self._sk = private_key
        self._pk = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._state: _State | _MemoryState = (
            _State(state_path, self._pk) if state_path is not None else _MemoryState()
        )
        self._lock = threading.Lock()
        self.k_min = k_min
        self.min_noise_multiplier = min_noise_multiplier
        self.noise_exempt = tuple(noise_exempt)
        self._ckks_params = ckks_params
        self._ckks_contexts = ckks_contexts
        self._ckks_ctx: Any = None

    @classmethod
    def generate(
        cls,
        state_path: Path | None = None,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
        with_ckks: bool = False,
    ) -> KeyHolder:
        """A key holder with a fresh key pair (and, with `with_ckks`, a fresh CKKS context now,
        so that its pin is complete); state in memory unless a path is given."""
        contexts = new_ckks_context(ckks_params) if with_ckks else None
        return cls(
            X25519PrivateKey.generate(),
            state_path,
            k_min,
            min_noise_multiplier,
            ckks_params,
            contexts,
            noise_exempt=noise_exempt,
        )

    @staticmethod
    def provision(
        key_path: Path, with_ckks: bool = True, ckks_params: ProtectionParams = CKKS_DEFAULT
    ) -> KeyHolderPin:
        """Create a key holder's keys (X25519 key, 0600; CKKS secret context `<key>.ckks`, 0600, and
        public context `<key>.ckks.pub`) and return the pin devices must be given. Refuses to
        overwrite existing keys: rotating means provisioning every device again."""
        if key_path.exists():
            raise FileExistsError(f"{key_path} exists: a key holder's key is created once")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        sk = X25519PrivateKey.generate()
        _write_private(key_path, sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        public = None
        if with_ckks:
            secret, public = new_ckks_context(ckks_params)
            _write_private(_ckks_path(key_path), secret)
            _ckks_public_path(key_path).write_bytes(public)
        pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return KeyHolderPin.of(pk, public)

    @classmethod
    def open(
        cls,
        key_path: Path,
        state_path: Path | None,
        k_min: int = 10,
        min_noise_multiplier: float = 0.0,
        ckks_params: ProtectionParams = CKKS_DEFAULT,
        noise_exempt: Sequence[tuple[ProtectionParams, int]] = (),
    ) -> KeyHolder:
        """A provisioned key holder (`provision`): its keys, and its once-only state, survive restarts."""
        if not key_path.exists():
            raise FileNotFoundError(f"{key_path}: provision the key holder first (KeyHolder.provision)")
        sk = X25519PrivateKey.from_private_bytes(key_path.read_bytes())
        contexts = None
        if _ckks_path(key_path).exists():
            contexts = (_ckks_path(key_path).read_bytes(), _ckks_public_path(key_path).read_bytes())
        kh = cls(sk, state_path, k_min, min_noise_multiplier, ckks_params, contexts, noise_exempt)
        if isinstance(kh._state, _State):
            _bind_state(key_path, kh._state)
        return kh

    def public_key(self) -> bytes:
        """The raw 32-byte X25519 public key devices seal their seeds to."""
        return self._pk

    def public(self, ckks: bool = False) -> KeyHolderPublic:
        """What devices protect with (tests and benchmarks; devices build it from their pin)."""
        return KeyHolderPublic(self._pk, self.ckks_public_context() if ckks else None)

    def pin(self) -> KeyHolderPin:
        """What a device must pin to trust this key holder (CKKS hash only if it has a context)."""
        return KeyHolderPin.of(self._pk, self._ckks_contexts[1] if self._ckks_contexts else None)

    def answered(self, round_id: int, cohort_id: int) -> bool:
        return self._state.answered(round_id, cohort_id)

    def close(self) -> None:
        self._state.close()

    # --- policy and seals (both modes) ---

    def _check_policy(self, params: ProtectionParams, scheme: Scheme, n_params: int) -> int:
        if params.scheme is not scheme:
            raise KeyHolderRefusedError(
                Reason.WRONG_MODE, f"request is for mode {params.mode!r}, route is {scheme.name!r}"
            )
        exempt = (params, n_params) in self.noise_exempt
        if params.noise_multiplier < self.min_noise_multiplier and not exempt:
            raise KeyHolderRefusedError(
                Reason.DP_POLICY,
                f"noise multiplier {params.noise_multiplier} below this key holder's floor "
                f"{self.min_noise_multiplier}",
            )
        try:
            if scheme.ring:
                params.check_ring(n_params)
        except ValueError as e:
            raise KeyHolderRefusedError(Reason.BAD_REQUEST, str(e)) from None
        return max(self.k_min, params.k_min)

    def _open_seals(
        self, scheme: Scheme, r: MaskSumRequest | CkksSumRequest, k: int, *, require_data: bool = True
    ) -> _Opened:
        """Open every seal under this cohort's context (caller holds the lock); refuses answered
        cohorts, oversized ones, cohorts with fewer than k seals that open and, unless the caller
        checks it later (`require_data`), cohorts with fewer than k seeds whose data bit is set
        (`wire.with_data_bit`)."""
        params, entries = r.params, r.entries
        if self._state.answered(r.round_id, r.cohort_id):
            raise KeyHolderRefusedError(Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}")
        if len(entries) > params.max_cohort:
            raise KeyHolderRefusedError(Reason.COHORT_TOO_LARGE, f"{len(entries)} > {params.max_cohort}")
        seed = round_seed_bytes(r.round_seed)
        tag = params.config_tag(seed, r.n_params)
        header = wire.Header(scheme.wire_mode, r.round_id, r.cohort_id, r.model_version, tag)
        info = wire.seal_info(header.pack(), params.config_digest(seed, r.n_params))
        used = self._state.used([e.sealed_seed[: wire.X25519_KEY_LEN] for e in entries])
        seeds: list[bytes] = []
        seal_ids: list[bytes] = []
        included: list[str] = []
        dropped: list[Dropped] = []
        seen_devices: set[str] = set()
        seen_seals: set[bytes] = set()
        for e in entries:
            why = self._entry_problem(e, seen_devices, seen_seals, used)
            opened = None
            if why is None:
                opened = self._open(e, info)
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
        result = _Opened(seeds, seal_ids, tuple(included), tuple(dropped))
        if require_data:
            self._require_data(r, result, k)
        return result

    def _require_data(self, r: MaskSumRequest | CkksSumRequest, opened: _Opened, k: int) -> None:
        """Refuse, spending the cohort, one with fewer than k seeds whose data bit is set. Every
        refusal that spends nothing must come before this one: CKKS refused a seal that does not
        open, or a ciphertext that does not parse, after it, so a request with one bad entry asked
        "do k of these carry data?" for free, again and again with subsets of the same seals, and
        read one device's bit in a cohort of real devices (12 of 12, review 22)."""
        seeds, seal_ids, dropped = opened.seeds, opened.seal_ids, list(opened.dropped)
        if sum(wire.carries_data(s) for s in seeds) < k:
            # Uploads of exact zeros (devices without data) are values the aggregator can
            # predict: counted towards k, k-1 of them around one device released that device's
            # upload alone (review 13). How many carried data is not said: only that too few did.
            # The refusal consumes the cohort and its seals as an answer would: refusals that
            # consumed nothing let the aggregator ask again with subsets of the same seals and
            # read whether one device carried data, in one round (review 14).
            self._state.commit(r.round_id, r.cohort_id, _NO_DATA, len(seeds), seal_ids)
            raise KeyHolderRefusedError(
                Reason.COHORT_TOO_SMALL, f"fewer than k={k} of its valid devices sent data", dropped
            )

    @staticmethod
    def _entry_problem(
        e: SealedEntry, devices: set[str], seals: set[bytes], used: set[bytes]
    ) -> Reason | None:
        if len(e.sealed_seed) != wire.SEAL_LEN:
            return Reason.SEAL_INVALID
        if e.device_id in devices:
            return Reason.DUPLICATE_DEVICE
        sid = e.sealed_seed[: wire.X25519_KEY_LEN]
        if sid in seals:
            return Reason.DUPLICATE_SEAL
        if sid in used:
            return Reason.SEAL_ALREADY_USED
        return None

    def _open(self, e: SealedEntry, info: bytes) -> bytes | None:
        try:
            seed = wire.SEAL_SUITE.decrypt(e.sealed_seed, self._sk, info=info)
        except (InvalidTag, ValueError):
            return None
        return seed if len(seed) == wire.SEED_LEN else None

    def _commit(
        self, r: MaskSumRequest | CkksSumRequest, mode: str, opened: _Opened, max_refusals: int | None = None
    ) -> None:
        if not self._state.commit(
            r.round_id, r.cohort_id, mode, len(opened.seeds), opened.seal_ids, max_refusals
        ):
            raise KeyHolderRefusedError(Reason.ALREADY_ANSWERED, f"round {r.round_id} cohort {r.cohort_id}")

    # --- secagg ---

    def mask_sum(self, request: MaskSumRequest) -> MaskSumResponse:
        """Validate every seal, then answer for the valid ones (>= k) or refuse; once per cohort."""
        p, r = request.params, request
        k = self._check_policy(p, SECAGG, r.n_params)
        with self._lock:
            opened = self._open_seals(SECAGG, r, k)
            m, bits = p.n_coords(r.n_params), p.ring_bits
            ring_mask = np.uint64((1 << bits) - 1)
            # All masks at once (one keystream per seed), summed in one reduction: uint64 addition
            # wraps modulo 2^64, a multiple of 2^bits, so reducing afterwards gives the ring sum.
            total = wire.mask_streams(opened.seeds, m, bits).sum(axis=0, dtype=np.uint64) & ring_mask
            sigma = p.noise_std_int(r.n_params)
            noise = discrete_gaussian(sigma, m)
            answer = (total - (noise % (1 << bits)).astype(np.uint64)) & ring_mask
            self._commit(r, SECAGG.name, opened)
        return MaskSumResponse(r.round_id, r.cohort_id, answer, opened.included, opened.dropped, sigma)

    # --- CKKS ---

    def _ckks(self) -> Any:
        if self._ckks_ctx is None:
            import tenseal as ts

            if self._ckks_contexts is None:
                self._ckks_contexts = new_ckks_context(self._ckks_params)
            self._ckks_ctx = ts.context_from(self._ckks_contexts[0])
        return self._ckks_ctx

    @property
    def has_ckks(self) -> bool:
        """Provisioned with a CKKS context (an in-process key holder may also make one on first use)."""
        return self._ckks_contexts is not None

    def ckks_public_context(self) -> bytes:
        """The public TenSEAL context devices encrypt to (public key only: no galois/relin keys)."""
        with self._lock:
            self._ckks()
        assert self._ckks_contexts is not None
        return self._ckks_contexts[1]

    def ckks_decrypt_sum(self, request: CkksSumRequest) -> CkksSumResponse:
        """Decrypt a cohort-sum ciphertext whose members' seals open (>= k, once), remove their
        masks, refuse a result no honest cohort of that size can produce, round, add DP noise."""
        import tenseal as ts

        p, r = request.params, request
        k = self._check_policy(p, CKKS, r.n_params)
        mine = self._ckks_params
        if (p.ckks_poly_modulus, p.ckks_coeff_mod_bits, p.ckks_scale_bits) != (
            mine.ckks_poly_modulus,
            mine.ckks_coeff_mod_bits,
            mine.ckks_scale_bits,
        ):
            raise KeyHolderRefusedError(
                Reason.WRONG_CONFIG, "CKKS parameters differ from this key holder's context"
            )
        problem = ckks_release_problem(p, r.n_params)
        if problem is not None:
            raise KeyHolderRefusedError(*problem)
        grid, sigma = ckks_grid(p), ckks_release_std(p, r.n_params)
        with self._lock:
            if self._state.refusals() >= CKKS_MAX_REFUSALS:
                raise KeyHolderRefusedError(Reason.MODE_DISABLED, _BUDGET_SPENT)
            ctx = self._ckks()
            opened = self._open_seals(CKKS, r, k, require_data=False)
            if opened.dropped:
                # Their ciphertexts are in the sum but their masks could not be removed: nothing is
                # decrypted or spent; the aggregator takes them out of its sum and asks again.
                raise KeyHolderRefusedError(
                    Reason.SEAL_INVALID,
                    f"{len(opened.dropped)} seals do not open; remove those devices and ask again",
                    opened.dropped,
                )
            try:
                chunks = wire.parse_ckks_body(r.ciphertext)
                vectors = [ts.ckks_vector_from(ctx, c) for c in chunks]
                _check_ciphertexts(ctx, vectors)
            except wire.WireError as e:
                raise KeyHolderRefusedError(e.reason, e.detail) from None
            except Exception as e:  # TenSEAL raises plain exceptions on malformed ciphertexts
                raise KeyHolderRefusedError(
                    Reason.MALFORMED_PAYLOAD, f"ciphertext does not decrypt: {e}"
                ) from None
            # Every refusal that spends nothing is behind us; this one spends the cohort.
            self._require_data(r, opened, k)
            try:
                decrypted = _decrypt_slots(ctx, vectors)
            except Exception as e:
                raise KeyHolderRefusedError(
                    Reason.MALFORMED_PAYLOAD, f"ciphertext does not decrypt: {e}"
                ) from None
            # From here on something was decrypted: the cohort and its seals are spent whatever
            # the outcome, so a refused answer cannot be retried to probe the sum. It is recorded
            # as refused until its release succeeds (fail closed: a state write that fails later
            # leaves a refusal counted, not a decryption uncounted; review 22), inside the
            # budget's own transaction.
            try:
                self._commit(r, _REFUSED, opened, max_refusals=CKKS_MAX_REFUSALS)
            except _BudgetSpentError:
                raise KeyHolderRefusedError(Reason.MODE_DISABLED, _BUDGET_SPENT) from None
            try:
                released = _checked_release(p, r.n_params, decrypted, opened, grid, sigma)
                self._state.release(r.round_id, r.cohort_id, CKKS.name)
            except Exception as e:
                # Counted against the key: each refusal after decryption answers the noise-free
                # checks. Anything else raised here would reach the aggregator as another answer
                # (the service maps a ValueError to bad_request): it is the same refusal, counted
                # the same (review 11), with only its type logged, never its text.
                if isinstance(e, KeyHolderRefusedError):
                    raise
                _LOG.error(
                    "CKKS release failed after decryption (%s): refused as out_of_range", type(e).__name__
                )
                raise KeyHolderRefusedError(Reason.OUT_OF_RANGE, _NOT_HONEST, opened.dropped) from None
        return CkksSumResponse(r.round_id, r.cohort_id, released, opened.included, opened.dropped, sigma)


def _ckks_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".ckks")


def _ckks_public_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".ckks.pub")


def _checked_release(
    p: ProtectionParams,
    n_params: int,
    decrypted: list[tuple[np.ndarray, int]],
    opened: _Opened,
    grid: float,
    sigma: float,
) -> np.ndarray:
    """The release of a decrypted cohort sum: its members' masks removed, rounded to the grid,
    noised, and checked against what that many honest devices can produce (refused otherwise)."""
    m = p.n_coords(n_params)
    # Every check's outcome is decided after the same work (masks, rounding, noise), so neither
    # which check failed nor when says anything (review 8: one reason and one message; review
    # 10: the copy check used to refuse in 4 ms, the range check after ~300 ms).
    fills = all(_as_an_upload_fills(slots, size) for slots, size in decrypted)
    # An upload fills the slots past its values with copies of them; values anywhere else were
    # added by whoever summed the ciphertexts. Unread slots are not noised, yet they move what
    # decrypts in the read ones: large ones pushed the decryption to its wrap point, where the
    # target's update decided whether it wrapped (review 6).
    values = np.concatenate([slots.real[:size] for slots, size in decrypted])
    shaped = values.shape == (m,) and bool(np.all(np.isfinite(values)))
    if not shaped:
        values = np.zeros(m)
    for s in opened.seeds:
        values = values - wire.ckks_mask(s, m, p.ckks_mask_bound)
    # Never release a raw CKKS decryption (Li-Micciancio key recovery): round to a grid no finer
    # than the decryption error (whatever clip the aggregator's request names), randomly, on the
    # key holder's own coins (review 10), add the noise (never under CKKS_FLOOD_STD: review 9),
    # and only then check the range. The check reads the noisy value, so refusing is part of the
    # noisy release: a check on the exact sum answered a noise-free yes/no about it per cohort
    # (the aggregator adds an offset of its choice to the ciphertext), and the noise floor hid
    # nothing from repeated threshold tests.
    released = (randomised_round(values / grid) + discrete_gaussian(sigma / grid, m)) * grid
    coord_room, l2_room = ckks_rooms(p, n_params, len(opened.seeds))
    in_range = not m or (
        float(np.abs(released).max()) <= coord_room and float(np.linalg.norm(released)) <= l2_room
    )
    if not (fills and shaped and in_range):
        # No figure of the sum in the message: it reaches the aggregator and the audit log.
        raise KeyHolderRefusedError(Reason.OUT_OF_RANGE, _NOT_HONEST, opened.dropped)
    return released


def _check_ciphertexts(ctx: Any, vectors: list[Any]) -> None:
    """Each vector is one ciphertext at the devices' scale and level (ValueError otherwise)."""
    seal = ctx.seal_context().data
    for vector in vectors:
        (ciphertext,) = vector.ciphertext()
        # review 7: a product with a plaintext (or another ciphertext) decrypts to the same values
        # at a larger scale, which moves the wrap point into the honest range; only what devices
        # send passes.
        if (
            ciphertext.size() != 2
            or ciphertext.scale != ctx.global_scale
            or list(ciphertext.parms_id()) != list(seal.first_parms_id())
        ):
            raise ValueError("ciphertext is not at the devices' scale and level")


def _decrypt_slots(ctx: Any, vectors: list[Any]) -> list[tuple[np.ndarray, int]]:
    """Every slot, complex, of each one-ciphertext CKKS vector (TenSEAL decrypts only the real
    parts of the first `size`), with its size; the caller has run `_check_ciphertexts`."""
    from tenseal import sealapi

    seal = ctx.seal_context().data
    decryptor, encoder = sealapi.Decryptor(seal, ctx.secret_key().data), sealapi.CKKSEncoder(seal)
    out = []
    for vector in vectors:
        (ciphertext,) = vector.ciphertext()
        plain = sealapi.Plaintext()
        decryptor.decrypt(ciphertext, plain)
        # review 8: decode_double drops the imaginary parts, which the aggregator can fill (public
        # key only) to put a coefficient on the wrap point; every upload's are ~0.
        out.append((np.asarray(encoder.decode_complex(plain)), int(vector.size())))
    return out


def _as_an_upload_fills(slots: np.ndarray, size: int) -> bool:
    """What a sum of uploads decrypts to, to CKKS precision: the slots past the first `size`
    repeat them (TenSEAL repeats a vector across the slots) and every imaginary part is 0."""
    copies = np.resize(slots.real[:size], slots.shape)
    return bool(
        np.allclose(slots.real, copies, rtol=0.0, atol=CKKS_COPY_TOLERANCE)
        and np.all(np.abs(slots.imag) <= CKKS_COPY_TOLERANCE)
    )
