"""The aggregator (leader): validate uploads, sum a cohort in the ring, unmask via the key holder, dequantise.

It only ever holds masked ring vectors (uniformly random on their own), ciphertexts, or, in the
plaintext baseline, floats it warns about. Every refusal returns a `Verdict` with a
machine-readable reason before anything is added, so a bad upload never touches the sum, and
`finalize` raises `CohortRefusedError` rather than return a partial or unverified result.

Masking hides content, so nothing can check that one device's ring vector was clipped: a
malicious device can put any ring value in its upload and, through wrap-around, move its cohort's
sum anywhere in the ring. The unmasked sum is therefore bounded by what n honest clipped devices
can produce (per coordinate and in L2, noise allowed for) before anyone uses it, so the cohort
mean a round applies never exceeds one honest device's largest contribution; the result says
how much was cut, which flags a poisoned cohort.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedchurn.server.keyholder import (
    CkksSumRequest,
    CkksSumResponse,
    Dropped,
    KeyHolderRefusedError,
    MaskSumRequest,
    MaskSumResponse,
    SealedEntry,
)
from fedchurn.shared import wire
from fedchurn.shared.protection import (
    CKKS,
    NOISE_TAIL_SIGMAS,
    PLAINTEXT,
    SECAGG,
    ProtectionParams,
    round_seed_bytes,
    select_coordinates,
)
from fedchurn.shared.wire import Reason

log = logging.getLogger(__name__)


class PlaintextModeWarning(UserWarning):
    """Raised (as a warning) whenever plaintext uploads are aggregated: a baseline, not a deployment."""


class CohortRefusedError(Exception):
    """No result for this cohort (too few devices, key holder refused, ...); nothing was applied."""

    def __init__(self, reason: Reason, detail: str, dropped: Sequence[Dropped] = ()) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.dropped = tuple(dropped)


class KeyHolderClient(Protocol):
    """What the aggregator needs from a key holder: the in-process `KeyHolder` or the HTTP client."""

    def mask_sum(self, request: MaskSumRequest) -> MaskSumResponse: ...

    def ckks_decrypt_sum(self, request: CkksSumRequest) -> CkksSumResponse: ...


@dataclass(frozen=True)
class Verdict:
    device_id: str
    accepted: bool
    reason: Reason | None = None
    detail: str = ""


@dataclass(frozen=True)
class AggregateResult:
    """The dequantised SUM of the included updates (dense, zeros outside `selected`) and its provenance."""

    mode: str
    label: str
    round_id: int
    cohort_id: int
    model_version: int
    sum: np.ndarray  # float64, length n_params
    count: int
    included: tuple[str, ...]
    selected: np.ndarray  # coordinates this round updated
    dropped: tuple[Dropped, ...]
    bytes_received: int
    noise_std: float  # std of the DP noise in `sum` per selected coordinate (0: no DP)
    out_of_range: int = 0  # coordinates of the unmasked sum beyond what honest devices can produce
    norm_clipped: bool = False  # the unmasked sum's L2 norm was cut to the honest bound

    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def summary(self) -> dict[str, Any]:
        """Audit-log view: no vectors, every refusal named."""
        return {
            "mode": self.mode,
            "label": self.label,
            "round_id": self.round_id,
            "cohort_id": self.cohort_id,
            "model_version": self.model_version,
            "count": self.count,
            "included": list(self.included),
            "dropped": [{"device_id": d.device_id, "reason": d.reason.value} for d in self.dropped],
            "n_selected": int(self.selected.size),
            "bytes_received": self.bytes_received,
            "noise_std": self.noise_std,
            "out_of_range": self.out_of_range,
            "norm_clipped": self.norm_clipped,
        }


def mean_update(results: Sequence[AggregateResult], n_params: int) -> np.ndarray:
    """Average update over several cohorts of one round (sum of sums / total count)."""
    total = np.zeros(n_params, dtype=np.float64)
    count = 0
    for r in results:
        total += r.sum
        count += r.count
    return total / max(count, 1)


def apply_update(
    weights: np.ndarray, results: Sequence[AggregateResult], server_lr: float = 1.0
) -> np.ndarray:
    """New float32 weights: old + server_lr x mean update; coordinates not selected this round stay."""
    w = np.asarray(weights, dtype=np.float32)
    return (w + server_lr * mean_update(results, w.size)).astype(np.float32)


@dataclass
class _Upload:
    values: Any  # masked ring vector (secagg), float vector (plaintext) or list of CKKS vectors
    sealed_seed: bytes


# The 20-byte header as a numpy record (wire.HEADER_FORMAT), to check a batch of headers at once.
_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u2"),
        ("version", "u1"),
        ("mode", "u1"),
        ("round_id", "<u4"),
        ("cohort_id", "<u4"),
        ("model_version", "<u4"),
        ("config_tag", "<u4"),
    ]
)
assert _HEADER_DTYPE.itemsize == wire.HEADER_LEN


@functools.lru_cache(maxsize=64)
def _selection(params: ProtectionParams, round_seed: bytes, n_params: int) -> np.ndarray:
    """The round's coordinates, computed once per round (every cohort of a round shares them; the
    selection walks a Fisher-Yates shuffle in Python, ~0.7 ms). Read-only, since it is shared."""
    sel = select_coordinates(params, round_seed, n_params)
    sel.flags.writeable = False
    return sel


@dataclass
class _Screen:
    """What `add_batch` learns about a batch's bytes alone, for all blobs at once (secagg and
    plaintext). `header_ok[i]`: the blob passes every header check (False: not known, ask the
    one-blob check); `row[i]`: its row in `values` if its body is valid too, else -1."""

    header_ok: np.ndarray
    row: np.ndarray
    values: np.ndarray


def bound_sum(
    values: np.ndarray, params: ProtectionParams, n_params: int, n_devices: int, noise_std: float
) -> tuple[np.ndarray, int, bool]:
    """The unmasked sum cut to what `n_devices` honest devices (plus the DP noise's tail) can
    produce: per coordinate, then in L2. Returns (bounded sum, coordinates cut, norm cut)."""
    coord, l2 = params.honest_sum_bounds(n_params, n_devices)
    m = values.size
    coord += NOISE_TAIL_SIGMAS * noise_std
    l2 += noise_std * (math.sqrt(m) + NOISE_TAIL_SIGMAS)
    out = int(np.sum(np.abs(values) > coord))
    bounded = np.clip(values, -coord, coord)
    norm = float(np.linalg.norm(bounded))
    if norm > l2:
        return bounded * (l2 / norm), out, True
    return bounded, out, False


# What opening a cohort sum gives: (values of the selected coordinates, devices included, devices
# dropped by the key holder, std of the DP noise in the values).
Opened = tuple[np.ndarray, tuple[str, ...], tuple[Dropped, ...], float]


class SchemeSum(Protocol):
    """A protection scheme's half of a cohort: its running sum, how its bodies parse, and how the
    sum is opened. `CohortAggregator` does everything the schemes share (headers, duplicates,
    seals used once, the cohort cap, bounding the opened sum) and asks this object for the rest."""

    total: Any  # the running sum: a ring vector, a float vector or CKKS ciphertexts

    def screen(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(valid, values) for a (n, size) grid of bodies of the expected size, all at once; None
        when bodies can only be parsed one by one (CKKS)."""
        ...

    def parse(self, blob: bytes) -> _Upload:
        """One upload's body, or `wire.WireError` naming what is wrong."""
        ...

    def add(self, values: Any, sign: int = 1) -> None:
        """Add (sign -1: take out) one accepted upload's values."""
        ...

    def add_rows(self, values: np.ndarray) -> None:
        """Add the rows of `values` (screened uploads, in order) exactly as `add` row by row would."""
        ...

    def open(self, keyholder: KeyHolderClient | None) -> Opened:
        """(values, included, dropped, noise std) of the cohort sum, opened by the key holder."""
        ...


@dataclass
class CohortAggregator:
    """One cohort of one round. `add` each upload, then `finalize` once with a key holder client."""

    params: ProtectionParams
    round_id: int
    cohort_id: int
    model_version: int
    round_seed: bytes | int
    n_params: int
    ckks_public_context: bytes | None = None
    bytes_received: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        p = self.params
        self._seed = round_seed_bytes(self.round_seed)
        self._m = p.n_coords(self.n_params)
        self._selected = _selection(p, self._seed, self.n_params)
        self._digest = p.config_digest(self._seed, self.n_params)
        self._tag = self._digest[: wire.CONFIG_TAG_LEN]
        self._uploads: dict[str, _Upload] = {}
        self._seals: set[bytes] = set()
        self._refused: list[Dropped] = []
        self._closed = False
        # Bytes of every valid upload when the scheme fixes them (None: CKKS, TenSEAL's sizes).
        self.expected_size = None if p.scheme.homomorphic else p.upload_bytes(self.n_params)
        self._sum: SchemeSum = SCHEME_SUMS[p.mode](self)

    def warn_plaintext(self) -> None:
        msg = (
            f"PLAINTEXT MODE (round {self.round_id}, cohort {self.cohort_id}): updates arrive in the clear; "
            "baseline only, NOT PRIVATE"
        )
        warnings.warn(msg, PlaintextModeWarning, stacklevel=4)
        log.warning(msg)

    @property
    def count(self) -> int:
        return len(self._uploads)

    @property
    def selected(self) -> np.ndarray:
        return self._selected

    def _refuse(self, device_id: str, reason: Reason, detail: str) -> Verdict:
        self._refused.append(Dropped(device_id, reason))
        log.info("refused upload from %s: %s (%s)", device_id, reason.value, detail)
        return Verdict(device_id, False, reason, detail)

    def add(self, device_id: str, blob: bytes) -> Verdict:
        """Validate one upload completely, then (and only then) add it to the cohort sum."""
        return self.add_batch([device_id], [blob])[0]

    def add_batch(self, device_ids: Sequence[str], blobs: Sequence[bytes]) -> list[Verdict]:
        """`add` for each (device, blob) in order: the same verdicts, refusals, sum and byte count.

        Headers, lengths and payloads are checked and unpacked for the whole batch at once
        (`_screen`); what depends on earlier uploads (one upload per device, cohort full, one use
        per seal) is decided in order. A blob the batch check does not pass goes through the
        one-blob checks, which name the reason exactly as `add` always has.
        """
        if len(device_ids) != len(blobs):
            raise ValueError(f"{len(device_ids)} device ids for {len(blobs)} uploads")
        p = self.params
        self.bytes_received += sum(len(b) for b in blobs)
        if self._closed:
            return [self._refuse(d, Reason.COHORT_CLOSED, "cohort already finalized") for d in device_ids]
        screen = self._screen(blobs)
        n = len(blobs)
        header_ok: list[bool] = screen.header_ok.tolist() if screen is not None else [False] * n
        row_of: list[int] = screen.row.tolist() if screen is not None else [-1] * n
        seal_end = wire.HEADER_LEN + p.scheme.seal_len
        uploads, seals = self._uploads, self._seals
        verdicts: list[Verdict] = []
        rows: list[int] = []  # rows of screen.values accepted, in order
        accepted: list[_Upload] = []  # every upload accepted, in order
        for device_id, blob, known_header, row in zip(device_ids, blobs, header_ok, row_of, strict=True):
            if device_id in uploads:
                verdicts.append(
                    self._refuse(device_id, Reason.DUPLICATE_DEVICE, "one upload per device and round")
                )
                continue
            if not known_header:
                problem = self._header_problem(blob)
                if problem is not None:
                    verdicts.append(self._refuse(device_id, *problem))
                    continue
            if len(uploads) >= p.max_cohort:
                verdicts.append(self._refuse(device_id, Reason.COHORT_FULL, f"max_cohort={p.max_cohort}"))
                continue
            if row >= 0:
                assert screen is not None
                upload = _Upload(screen.values[row], blob[wire.HEADER_LEN : seal_end])
            else:
                try:
                    upload = self._sum.parse(blob)
                except wire.WireError as e:
                    verdicts.append(self._refuse(device_id, e.reason, e.detail))
                    continue
            if upload.sealed_seed:
                sid = upload.sealed_seed[: wire.X25519_KEY_LEN]
                if sid in seals:
                    verdicts.append(
                        self._refuse(
                            device_id, Reason.DUPLICATE_SEAL, "this sealed seed was already submitted"
                        )
                    )
                    continue
                seals.add(sid)
            uploads[device_id] = upload
            accepted.append(upload)
            if row >= 0:
                rows.append(row)
            verdicts.append(Verdict(device_id, True))
        if screen is not None and len(rows) == len(accepted):
            self._sum.add_rows(screen.values[rows])
        else:
            for upload in accepted:
                self._sum.add(upload.values)
        return verdicts

    def _header_problem(self, blob: bytes) -> tuple[Reason, str] | None:
        """Why one blob's size or header is refused (None: it passes); the one-blob check."""
        p = self.params
        if len(blob) > p.max_upload_bytes:
            return Reason.OVERSIZED, f"{len(blob)} B > {p.max_upload_bytes} B"
        try:
            h = wire.Header.parse(blob)
        except wire.WireError as e:
            return e.reason, e.detail
        checks = (
            (h.mode is p.scheme.wire_mode, Reason.WRONG_MODE, f"mode {h.mode.name}"),
            (h.round_id == self.round_id, Reason.WRONG_ROUND, f"round {h.round_id} != {self.round_id}"),
            (h.cohort_id == self.cohort_id, Reason.WRONG_COHORT, f"cohort {h.cohort_id}"),
            (h.model_version == self.model_version, Reason.WRONG_MODEL_VERSION, f"model {h.model_version}"),
            (h.config_tag == self._tag, Reason.WRONG_CONFIG, "parameters or round seed differ"),
        )
        for ok, reason, detail in checks:
            if not ok:
                return reason, detail
        return None

    def _screen(self, blobs: Sequence[bytes]) -> _Screen | None:
        """Check the headers of every blob of the expected length and unpack their payloads at
        once (None when the scheme parses bodies one by one). Only passes are recorded; any blob
        not passed here gets the one-blob checks."""
        p, size = self.params, self.expected_size
        if size is None:
            return None
        n = len(blobs)
        header_ok = np.zeros(n, dtype=bool)
        row_of = np.full(n, -1, dtype=np.int64)
        full = [i for i, b in enumerate(blobs) if len(b) == size] if size <= p.max_upload_bytes else []
        grid = np.frombuffer(b"".join([blobs[i] for i in full]), dtype=np.uint8).reshape(len(full), size)
        head = np.ascontiguousarray(grid[:, : wire.HEADER_LEN]).view(_HEADER_DTYPE).ravel()
        ok = (
            (head["magic"] == int.from_bytes(wire.MAGIC, "little"))
            & (head["version"] == wire.WIRE_VERSION)
            & (head["mode"] == int(p.wire_mode))
            & (head["round_id"] == self.round_id)
            & (head["cohort_id"] == self.cohort_id)
            & (head["model_version"] == self.model_version)
            & (head["config_tag"] == int.from_bytes(self._tag, "little"))
        )
        passed = np.asarray(full, dtype=np.int64)[ok]
        header_ok[passed] = True
        screened = self._sum.screen(grid[ok, wire.HEADER_LEN :])
        assert screened is not None  # a scheme with a fixed size screens its bodies
        good, values = screened
        row_of[passed[good]] = np.arange(values.shape[0])
        return _Screen(header_ok, row_of, values)

    def finalize(self, keyholder: KeyHolderClient | None) -> AggregateResult:
        """Unmask (secagg) or decrypt (ckks) the cohort sum through the key holder; dequantise.
        The plaintext baseline has no key holder (None)."""
        if self._closed:
            raise CohortRefusedError(Reason.COHORT_CLOSED, "finalize was already called")
        self._closed = True
        p = self.params
        k = p.k_min
        if self.count < k:
            raise CohortRefusedError(
                Reason.COHORT_TOO_SMALL, f"{self.count} accepted uploads < k={k}", self._refused
            )
        if p.scheme.private and keyholder is None:
            raise CohortRefusedError(Reason.BAD_REQUEST, f"{p.mode} needs the key holder")
        try:
            values, included, dropped, noise = self._sum.open(keyholder)
        except KeyHolderRefusedError as e:
            raise CohortRefusedError(
                e.reason, f"key holder: {e.detail}", [*self._refused, *e.dropped]
            ) from None
        values, out_of_range, norm_clipped = bound_sum(
            np.asarray(values, dtype=np.float64), p, self.n_params, len(included), noise
        )
        if out_of_range or norm_clipped:
            log.warning(
                "cohort %d of round %d: unmasked sum beyond what %d honest devices can produce "
                "(%d coordinates, norm cut: %s); bounded before use",
                self.cohort_id,
                self.round_id,
                len(included),
                out_of_range,
                norm_clipped,
            )
        dense = np.zeros(self.n_params, dtype=np.float64)
        dense[self._selected] = values
        return AggregateResult(
            mode=p.mode,
            label=p.label,
            round_id=self.round_id,
            cohort_id=self.cohort_id,
            model_version=self.model_version,
            sum=dense,
            count=len(included),
            included=tuple(included),
            selected=self._selected,
            dropped=(*self._refused, *dropped),
            bytes_received=self.bytes_received,
            noise_std=noise,
            out_of_range=out_of_range,
            norm_clipped=norm_clipped,
        )

    def _wrong_length(self, blob: bytes) -> wire.WireError | None:
        size = self.expected_size
        if size is not None and len(blob) != size:
            return wire.WireError(Reason.WRONG_LENGTH, f"{len(blob)} B, expected {size} B")
        return None


class SecAggSum:
    """Masked ring vectors: summed modulo 2^b; the key holder returns the included devices' mask
    sum minus its noise, which leaves the noisy cohort sum; dequantised here."""

    def __init__(self, cohort: CohortAggregator) -> None:
        p = cohort.params
        p.check_ring(cohort.n_params)
        size = cohort.expected_size
        assert size is not None  # a ring upload's size is fixed
        if size > p.max_upload_bytes:
            raise ValueError(f"uploads of {size} B exceed max_upload_bytes={p.max_upload_bytes}")
        self.cohort = cohort
        self.ring_mask = np.uint64((1 << p.ring_bits) - 1)
        self.total = np.zeros(p.n_coords(cohort.n_params), dtype=np.uint64)

    def screen(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, m = self.cohort.params, self.total.size
        payload = body[:, wire.SEAL_LEN :]
        good = wire.padding_ok_rows(payload, p.ring_bits, m)
        return good, wire.fields_rows(payload[good], p.ring_bits, m)

    def parse(self, blob: bytes) -> _Upload:
        wrong = self.cohort._wrong_length(blob)
        if wrong is not None:
            raise wrong
        body = blob[wire.HEADER_LEN :]
        sealed, payload = body[: wire.SEAL_LEN], body[wire.SEAL_LEN :]
        return _Upload(wire.unpack_bits(payload, self.cohort.params.ring_bits, self.total.size), sealed)

    def add(self, values: Any, sign: int = 1) -> None:
        v = values if sign > 0 else (np.uint64(0) - values)
        self.total = (self.total + v) & self.ring_mask

    def add_rows(self, values: np.ndarray) -> None:
        # The ring sum in one reduction: uint64 wraps modulo 2^64, a multiple of 2^b.
        self.total = (self.total + values.sum(axis=0, dtype=np.uint64)) & self.ring_mask

    def open(self, keyholder: KeyHolderClient | None) -> Opened:
        assert keyholder is not None  # finalize checked
        c = self.cohort
        p = c.params
        entries = tuple(SealedEntry(d, u.sealed_seed) for d, u in c._uploads.items())
        req = MaskSumRequest(c.round_id, c.cohort_id, c.model_version, c._seed, c.n_params, p, entries)
        resp = keyholder.mask_sum(req)
        dropped_ids = {d.device_id for d in resp.dropped}
        if set(resp.included) != set(c._uploads) - dropped_ids or len(resp.included) != len(
            set(resp.included)
        ):
            raise CohortRefusedError(
                Reason.BAD_REQUEST, "key holder's included set does not match the cohort"
            )
        if resp.mask_sum.shape != self.total.shape:
            raise CohortRefusedError(Reason.WRONG_LENGTH, "key holder's mask sum has the wrong length")
        for d in dropped_ids:  # their masked vectors leave the sum: no partial mask is ever applied
            self.add(c._uploads[d].values, -1)
        total = (self.total - (resp.mask_sum.astype(np.uint64) & self.ring_mask)) & self.ring_mask
        half = 1 << (p.ring_bits - 1)
        signed = total.astype(np.int64) - np.where(total >= half, 1 << p.ring_bits, 0)
        values = signed.astype(np.float64) / p.scale(c.n_params)
        return values, resp.included, resp.dropped, resp.noise_std_int / p.scale(c.n_params)


class PlaintextSum:
    """The labelled baseline: float vectors in the clear, each clipped as an honest device would
    have been, summed in arrival order; warns on every cohort opened and every sum released."""

    def __init__(self, cohort: CohortAggregator) -> None:
        self.cohort = cohort
        self.total = np.zeros(cohort.params.n_coords(cohort.n_params), dtype=np.float64)
        cohort.warn_plaintext()

    def _bounded(self, values: np.ndarray) -> np.ndarray:
        # The baseline sees values: clip each one as an honest device would have.
        bounded, _, _ = bound_sum(values, self.cohort.params, self.cohort.n_params, 1, 0.0)
        return bounded

    def screen(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        floats = np.ascontiguousarray(body).view("<f4").astype(np.float64)
        good = np.asarray(np.isfinite(floats).all(axis=1))
        return good, np.array([self._bounded(v) for v in floats[good]]).reshape(-1, self.total.size)

    def parse(self, blob: bytes) -> _Upload:
        wrong = self.cohort._wrong_length(blob)
        if wrong is not None:
            raise wrong
        values = np.frombuffer(blob[wire.HEADER_LEN :], dtype="<f4").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise wire.WireError(Reason.NON_FINITE, "NaN or infinity in a plaintext update")
        return _Upload(self._bounded(values), b"")

    def add(self, values: Any, sign: int = 1) -> None:
        self.total = self.total + sign * values

    def add_rows(self, values: np.ndarray) -> None:
        for v in values:  # floating-point sums keep `add`'s order, bit for bit
            self.add(v)

    def open(self, keyholder: KeyHolderClient | None) -> Opened:
        self.cohort.warn_plaintext()
        return self.total, tuple(self.cohort._uploads), (), 0.0


class CkksSum:
    """CKKS ciphertexts (one per `slots` coordinates), added homomorphically; the key holder
    decrypts the sum of the devices whose seals open, removes their masks, rounds and noises."""

    def __init__(self, cohort: CohortAggregator) -> None:
        if cohort.ckks_public_context is None:
            raise ValueError("CKKS mode needs the key holder's public context")
        from fedchurn.client.ckks import load_public_context

        self.cohort = cohort
        self.ctx = load_public_context(cohort.ckks_public_context)
        self.total: list[Any] | None = None

    def screen(self, body: np.ndarray) -> None:
        return None

    def parse(self, blob: bytes) -> _Upload:
        import tenseal as ts

        p, m = self.cohort.params, self.cohort._m
        body = blob[wire.HEADER_LEN :]
        if len(body) <= wire.SEAL_LEN:
            raise wire.WireError(Reason.WRONG_LENGTH, "a CKKS upload is header, seal and ciphertext")
        sealed, body = body[: wire.SEAL_LEN], body[wire.SEAL_LEN :]
        try:
            vecs = [ts.ckks_vector_from(self.ctx, c) for c in wire.parse_ckks_body(body)]
        except wire.WireError:
            raise
        except Exception as e:  # TenSEAL raises plain exceptions on malformed input
            raise wire.WireError(Reason.MALFORMED_PAYLOAD, f"not a CKKS vector: {e}") from None
        slots = p.ckks_poly_modulus // 2
        sizes = [v.size() for v in vecs]
        want = [min(slots, m - i) for i in range(0, m, slots)]
        if sizes != want:
            raise wire.WireError(Reason.WRONG_LENGTH, f"CKKS chunk sizes {sizes}, expected {want}")
        return _Upload(vecs, sealed)

    def add(self, values: Any, sign: int = 1) -> None:
        assert sign > 0  # a ciphertext is never taken out: the sum is rebuilt (`open`)
        if self.total is None:
            self.total = [v.copy() for v in values]
        else:
            self.total = [a + b for a, b in zip(self.total, values, strict=True)]

    def add_rows(self, values: np.ndarray) -> None:
        raise AssertionError("CKKS bodies are never screened in a batch")

    def open(self, keyholder: KeyHolderClient | None) -> Opened:
        """Ask the key holder to decrypt the cohort sum; if it names seals that do not open (it
        decrypts nothing then), take those devices out of the sum and ask once more."""
        assert keyholder is not None  # finalize checked
        c = self.cohort
        dropped: tuple[Dropped, ...] = ()
        for _ in range(2):
            try:
                resp = keyholder.ckks_decrypt_sum(self._request())
                break
            except KeyHolderRefusedError as e:
                if e.reason != Reason.SEAL_INVALID or not e.dropped or dropped:
                    raise
                dropped = e.dropped
                for d in dropped:
                    c._uploads.pop(d.device_id, None)
                if c.count < c.params.k_min:
                    raise
                self.total = None
                for u in c._uploads.values():
                    self.add(u.values)
        if resp.values.shape != (c._m,) or not np.all(np.isfinite(resp.values)):
            raise CohortRefusedError(Reason.WRONG_LENGTH, "key holder's CKKS sum has the wrong shape")
        if set(resp.included) != set(c._uploads):
            raise CohortRefusedError(
                Reason.BAD_REQUEST, "key holder's included set does not match the cohort"
            )
        values = np.asarray(resp.values, dtype=np.float64)
        return values, resp.included, (*dropped, *resp.dropped), resp.noise_std

    def _request(self) -> CkksSumRequest:
        c = self.cohort
        assert self.total is not None  # k >= 1 uploads were added
        return CkksSumRequest(
            c.round_id,
            c.cohort_id,
            c.model_version,
            c._seed,
            c.n_params,
            c.params,
            tuple(SealedEntry(d, u.sealed_seed) for d, u in c._uploads.items()),
            wire.pack_ckks_body([v.serialize() for v in self.total]),
        )


SCHEME_SUMS: dict[str, Callable[[CohortAggregator], SchemeSum]] = {
    SECAGG.name: SecAggSum,
    CKKS.name: CkksSum,
    PLAINTEXT.name: PlaintextSum,
}


def expected_quantisation_error(params: ProtectionParams, n_params: int, count: int) -> float:
    """Per-coordinate bound on |dequantised sum - clipped sum| from rounding alone (no noise): count / s."""
    return count / params.scale(n_params) if math.isfinite(params.clip_norm) else 0.0
