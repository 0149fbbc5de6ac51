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
from collections.abc import Sequence
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
    NOISE_TAIL_SIGMAS,
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
        self._ring_mask = np.uint64((1 << p.ring_bits) - 1)
        self._sum: Any = np.zeros(self._m, dtype=np.uint64 if p.mode == "secagg" else np.float64)
        self._ctx: Any = None
        if p.mode == "secagg":
            p.check_ring(self.n_params)
            self._expected = p.upload_bytes(self.n_params)
            if self._expected > p.max_upload_bytes:
                raise ValueError(
                    f"uploads of {self._expected} B exceed max_upload_bytes={p.max_upload_bytes}"
                )
        elif p.mode == "plaintext":
            self._expected = p.upload_bytes(self.n_params)
            self._warn()
        else:
            if self.ckks_public_context is None:
                raise ValueError("CKKS mode needs the key holder's public context")
            from fedchurn.client.ckks import load_public_context

            self._ctx = load_public_context(self.ckks_public_context)
            self._sum = None

    def _warn(self) -> None:
        msg = (
            f"PLAINTEXT MODE (round {self.round_id}, cohort {self.cohort_id}): updates arrive in the clear; "
            "baseline only, NOT PRIVATE"
        )
        warnings.warn(msg, PlaintextModeWarning, stacklevel=3)
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
        seal_end = wire.HEADER_LEN + wire.SEAL_LEN if p.mode == "secagg" else wire.HEADER_LEN
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
                    upload = self._parse_body(blob)
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
            if p.mode == "plaintext" and row >= 0:
                # The baseline sees values: clip each one as an honest device would have.
                upload.values, _, _ = bound_sum(upload.values, p, self.n_params, 1, 0.0)
            uploads[device_id] = upload
            accepted.append(upload)
            if row >= 0:
                rows.append(row)
            verdicts.append(Verdict(device_id, True))
        if screen is not None and p.mode == "secagg" and len(rows) == len(accepted):
            # The ring sum in one reduction: uint64 wraps modulo 2^64, a multiple of 2^b.
            total = screen.values[rows].sum(axis=0, dtype=np.uint64)
            self._sum = (self._sum + total) & self._ring_mask
        else:
            for upload in accepted:  # floating-point sums keep `add`'s order, bit for bit
                self._accumulate(upload.values, +1)
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
            (h.mode == p.wire_mode, Reason.WRONG_MODE, f"mode {h.mode.name}"),
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
        once (None in CKKS mode, whose ciphertexts are parsed one by one). Only passes are
        recorded; any blob not passed here gets the one-blob checks."""
        p = self.params
        if p.mode == "ckks":
            return None
        n = len(blobs)
        header_ok = np.zeros(n, dtype=bool)
        row_of = np.full(n, -1, dtype=np.int64)
        size = self._expected
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
        body = grid[ok, wire.HEADER_LEN :]
        if p.mode == "secagg":
            payload = body[:, wire.SEAL_LEN :]
            good = wire.padding_ok_rows(payload, p.ring_bits, self._m)
            values = wire.fields_rows(payload[good], p.ring_bits, self._m)
        else:
            floats = np.ascontiguousarray(body).view("<f4").astype(np.float64)
            good = np.asarray(np.isfinite(floats).all(axis=1))
            values = floats[good]
        row_of[passed[good]] = np.arange(values.shape[0])
        return _Screen(header_ok, row_of, values)

    def _parse_body(self, blob: bytes) -> _Upload:
        p, body = self.params, blob[wire.HEADER_LEN :]
        if p.mode == "secagg":
            if len(blob) != self._expected:
                raise wire.WireError(Reason.WRONG_LENGTH, f"{len(blob)} B, expected {self._expected} B")
            sealed, payload = body[: wire.SEAL_LEN], body[wire.SEAL_LEN :]
            values = wire.unpack_bits(payload, p.ring_bits, self._m)
            return _Upload(values, sealed)
        if p.mode == "plaintext":
            if len(blob) != self._expected:
                raise wire.WireError(Reason.WRONG_LENGTH, f"{len(blob)} B, expected {self._expected} B")
            values = np.frombuffer(body, dtype="<f4").astype(np.float64)
            if not np.all(np.isfinite(values)):
                raise wire.WireError(Reason.NON_FINITE, "NaN or infinity in a plaintext update")
            # The baseline sees values: clip each one as an honest device would have.
            values, _, _ = bound_sum(values, p, self.n_params, 1, 0.0)
            return _Upload(values, b"")
        import tenseal as ts

        if len(body) <= wire.SEAL_LEN:
            raise wire.WireError(Reason.WRONG_LENGTH, "a CKKS upload is header, seal and ciphertext")
        sealed, body = body[: wire.SEAL_LEN], body[wire.SEAL_LEN :]
        try:
            vecs = [ts.ckks_vector_from(self._ctx, c) for c in wire.parse_ckks_body(body)]
        except wire.WireError:
            raise
        except Exception as e:  # TenSEAL raises plain exceptions on malformed input
            raise wire.WireError(Reason.MALFORMED_PAYLOAD, f"not a CKKS vector: {e}") from None
        slots = p.ckks_poly_modulus // 2
        sizes = [v.size() for v in vecs]
        want = [min(slots, self._m - i) for i in range(0, self._m, slots)]
        if sizes != want:
            raise wire.WireError(Reason.WRONG_LENGTH, f"CKKS chunk sizes {sizes}, expected {want}")
        return _Upload(vecs, sealed)

    def _accumulate(self, values: Any, sign: int) -> None:
        if self.params.mode == "secagg":
            v = values if sign > 0 else (np.uint64(0) - values)
            self._sum = (self._sum + v) & self._ring_mask
        elif self.params.mode == "plaintext":
            self._sum = self._sum + sign * values
        elif self._sum is None:
            self._sum = [v.copy() for v in values]
        else:
            self._sum = [a + b for a, b in zip(self._sum, values, strict=True)]

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
        try:
            if p.mode != "plaintext" and keyholder is None:
                raise CohortRefusedError(Reason.BAD_REQUEST, f"{p.mode} needs the key holder")
            if p.mode == "secagg":
                assert keyholder is not None
                values, included, dropped, noise = self._finalize_secagg(keyholder)
            elif p.mode == "ckks":
                assert keyholder is not None
                values, included, dropped, noise = self._finalize_ckks(keyholder)
            else:
                self._warn()
                values, included, dropped, noise = self._sum, tuple(self._uploads), (), 0.0
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

    def _finalize_secagg(
        self, keyholder: KeyHolderClient
    ) -> tuple[np.ndarray, tuple[str, ...], tuple[Dropped, ...], float]:
        p = self.params
        entries = tuple(SealedEntry(d, u.sealed_seed) for d, u in self._uploads.items())
        req = MaskSumRequest(
            self.round_id, self.cohort_id, self.model_version, self._seed, self.n_params, p, entries
        )
        resp = keyholder.mask_sum(req)
        dropped_ids = {d.device_id for d in resp.dropped}
        if set(resp.included) != set(self._uploads) - dropped_ids or len(resp.included) != len(
            set(resp.included)
        ):
            raise CohortRefusedError(
                Reason.BAD_REQUEST, "key holder's included set does not match the cohort"
            )
        if resp.mask_sum.shape != (self._m,):
            raise CohortRefusedError(Reason.WRONG_LENGTH, "key holder's mask sum has the wrong length")
        for d in dropped_ids:  # their masked vectors leave the sum: no partial mask is ever applied
            self._accumulate(self._uploads[d].values, -1)
        total = (self._sum - (resp.mask_sum.astype(np.uint64) & self._ring_mask)) & self._ring_mask
        half = 1 << (p.ring_bits - 1)
        signed = total.astype(np.int64) - np.where(total >= half, 1 << p.ring_bits, 0)
        values = signed.astype(np.float64) / p.scale(self.n_params)
        return values, resp.included, resp.dropped, resp.noise_std_int / p.scale(self.n_params)

    def _finalize_ckks(
        self, keyholder: KeyHolderClient
    ) -> tuple[np.ndarray, tuple[str, ...], tuple[Dropped, ...], float]:
        """Ask the key holder to decrypt the cohort sum; if it names seals that do not open (it
        decrypts nothing then), take those devices out of the sum and ask once more."""
        dropped: tuple[Dropped, ...] = ()
        for _ in range(2):
            try:
                resp = keyholder.ckks_decrypt_sum(self._ckks_request())
                break
            except KeyHolderRefusedError as e:
                if e.reason != Reason.SEAL_INVALID or not e.dropped or dropped:
                    raise
                dropped = e.dropped
                for d in dropped:
                    self._uploads.pop(d.device_id, None)
                if self.count < self.params.k_min:
                    raise
                self._sum = None
                for u in self._uploads.values():
                    self._accumulate(u.values, +1)
        if resp.values.shape != (self._m,) or not np.all(np.isfinite(resp.values)):
            raise CohortRefusedError(Reason.WRONG_LENGTH, "key holder's CKKS sum has the wrong shape")
        if set(resp.included) != set(self._uploads):
            raise CohortRefusedError(
                Reason.BAD_REQUEST, "key holder's included set does not match the cohort"
            )
        values = np.asarray(resp.values, dtype=np.float64)
        return values, resp.included, (*dropped, *resp.dropped), resp.noise_std

    def _ckks_request(self) -> CkksSumRequest:
        from fedchurn.shared.wire import pack_ckks_body

        return CkksSumRequest(
            self.round_id,
            self.cohort_id,
            self.model_version,
            self._seed,
            self.n_params,
            self.params,
            tuple(SealedEntry(d, u.sealed_seed) for d, u in self._uploads.items()),
            pack_ckks_body([v.serialize() for v in self._sum]),
        )


def expected_quantisation_error(params: ProtectionParams, n_params: int, count: int) -> float:
    """Per-coordinate bound on |dequantised sum - clipped sum| from rounding alone (no noise): count / s."""
    return count / params.scale(n_params) if math.isfinite(params.clip_norm) else 0.0
