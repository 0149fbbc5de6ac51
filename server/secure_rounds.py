"""The server side of protected rounds: cohorts, the key holder, DP calibration and accounting.

In simulation the key holder runs in-process (its own object, its own state file); in deployment
the same calls go to `server.keyholder_service` over HTTP. The aggregator never holds an
individual update: `server.secure_sum.CohortAggregator` sums masked vectors in the ring and the
key holder returns only the cohort's mask sum (plus DP noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedchurn.server import secure_sum
from fedchurn.server.dp import MECHANISM, PrivacyAccountant, one_release_epsilon, run_noise_multiplier
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.round_report import Refusal
from fedchurn.server.secure_sum import CohortAggregator, CohortRefusedError
from fedchurn.server.settings import AggregatorSettings
from fedchurn.shared.ckks_release import ckks_grid, ckks_release_std
from fedchurn.shared.protection import ProtectionParams, bind_round_seed
from fedchurn.shared.run_config import RunConfig, cohort_count, round_seed

ACCOUNTANT = "dp-accounting RDP (PLD beside it), Poisson sampling (add-or-remove-one)"


class KeyHolderClient(secure_sum.KeyHolderClient, Protocol):
    """A key holder as the aggregator uses it: in-process `KeyHolder` or `KeyHolderHttpClient`."""

    def public_key(self) -> bytes: ...

    def ckks_public_context(self) -> bytes: ...


def connect_keyholder(settings: AggregatorSettings, timeout: float) -> KeyHolderClient:
    """The deployed key holder of `settings.keyholder_url` (https only), its TLS certificate checked
    against `settings.keyholder_ca`. The bearer token comes from `keyholder_token_file` (or
    $FEDCHURN_KEYHOLDER_TOKEN), never from the run config, which every SuperNode receives."""
    import ssl

    import httpx

    from fedchurn.server.deploy_secrets import read_token
    from fedchurn.server.keyholder_service import KeyHolderHttpClient

    if not settings.keyholder_url.startswith("https://"):
        raise ValueError("the key holder is reached over https only")
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=settings.keyholder_ca) if settings.keyholder_ca else True
    )
    client = httpx.Client(base_url=settings.keyholder_url, verify=verify, timeout=timeout)
    token = read_token(settings.keyholder_token_file or None)
    return KeyHolderHttpClient(settings.keyholder_url, token, client=client)


@dataclass
class CohortSum:
    """Sum of the accepted vectors of every cohort of one round, and what was refused."""

    sum: np.ndarray
    coord_count: np.ndarray  # devices whose upload covered each coordinate
    count: int = 0
    received: int = 0  # uploads that arrived (accepted or not)
    refused: list[Refusal] = field(default_factory=list)
    upload_bytes: int = 0
    noise_std: float = 0.0
    cohorts: int = 0
    out_of_range: int = 0  # coordinates beyond what honest devices can produce (all cohorts)
    norm_clipped: int = 0  # cohorts whose norm was cut to the honest bound

    def mean(self, expected_devices: float | None = None) -> np.ndarray:
        """Per-coordinate mean over the devices that uploaded it (0 where none did); with
        `expected_devices` (DP) the uploaded coordinates are divided by that instead."""
        count = self.coord_count
        if expected_devices is not None:
            count = np.where(count > 0, expected_devices, 0.0)
        return np.divide(self.sum, count, out=np.zeros_like(self.sum), where=count > 0)


class SecureRounds:
    def __init__(
        self,
        cfg: RunConfig,
        n_train_devices: int,
        keyholder: KeyHolderClient | None = None,
        keyholder_key: Path | None = None,
        keyholder_state: Path | None = None,
    ) -> None:
        """The key holder: a client of a deployed one (`keyholder`), an in-process one opened from
        its provisioned key (`keyholder_key`, simulation), or else a fresh in-process one (tests;
        its devices must be given `self.keyholder.pin()`)."""
        self.cfg = cfg
        self.noise_multiplier = 0.0
        # Under DP a round's sum is divided by the expected number of devices, not the count:
        # with Poisson sampling the count itself depends on who took part (McMahan et al. 2018).
        self.expected_devices: float | None = None
        if cfg.dp:
            # Poisson sampling at rate q (`server.sampling`), add-or-remove-one neighbours; the
            # feature-mean round is charged as one more round.
            rate = cfg.sample_rate(n_train_devices)
            self.noise_multiplier = run_noise_multiplier(cfg, n_train_devices)
            self.accountant = PrivacyAccountant(self.noise_multiplier, rate, sampling="poisson")
            self.expected_devices = rate * n_train_devices
        else:
            self.accountant = PrivacyAccountant.none()
        self.train_params = cfg.train_protection(self.noise_multiplier)
        self.eval_params = cfg.eval_protection()
        self.stats_params = cfg.stats_protection(self.noise_multiplier)
        cfg.check_ckks(self.noise_multiplier)
        policy: dict[str, Any] = {
            "k_min": cfg.k_min,
            "min_noise_multiplier": self.noise_multiplier,
            "noise_exempt": [(self.eval_params, cfg.eval_length)],
        }
        self.keyholder: KeyHolderClient | None = None  # the plaintext baseline has none
        if not cfg.scheme.private:
            if cfg.target_epsilon > 0:
                raise ValueError("plaintext mode adds no noise: differential privacy needs secagg or ckks")
        elif keyholder is not None:
            self.keyholder = keyholder
        elif keyholder_key is not None:
            self.keyholder = KeyHolder.open(keyholder_key, keyholder_state, **policy)
        else:
            self.keyholder = KeyHolder.generate(keyholder_state, with_ckks=cfg.scheme.homomorphic, **policy)
        # What the aggregator tells devices; each device checks it against its own pin.
        self.key = self.keyholder.public_key() if self.keyholder is not None else None
        self.ckks_context = (
            self.keyholder.ckks_public_context()
            if self.keyholder is not None and cfg.scheme.homomorphic
            else None
        )

    def cohorts(self, n_devices: int, params: ProtectionParams, largest: bool = False) -> int:
        """Cohorts of a round: one under DP noise (the key holder noises each cohort sum, so the
        round carries the noise once), else about `cohort-size` devices each, or as large as the
        parameters allow with `largest` (evaluations: only held-out devices with a scored day
        count towards k, and on a real log most have none — CDNOW: 1,256 of 7,100 — so cohorts
        of 20 would be refused, decision 150; a noised evaluation's parameters allow 16,384, so
        its noise is added once for all but the largest runs' held-out devices, decision 151)."""
        if params.noise_multiplier > 0 and not largest:
            return 1
        target = params.max_cohort if largest else self.cfg.cohort_size
        return cohort_count(n_devices, target, params.max_cohort, self.cfg.k_min)

    def open_round(
        self,
        params: ProtectionParams,
        server_round: int,
        n: int,
        task: bytes,
        round_id: int | None = None,
        on_contact: Callable[[], None] | None = None,
    ) -> RoundSum:
        """An empty sum for one round's uploads of `n` values each (see `RoundSum`).

        `round_id` (default: the server round) is what uploads and the key holder's once-only rule
        are bound to; `task` is the digest of the model and input offset the devices were sent
        (`shared.protection.task_digest`), bound into their round seeds; `on_contact` runs once
        before the first key-holder request (crash recovery)."""
        bound_to = server_round if round_id is None else round_id
        return RoundSum(self, params, server_round, bound_to, n, on_contact, task)

    def privacy_report(self, rounds_run: int) -> dict[str, Any]:
        """What a run's report says about privacy: both epsilons (RDP, PLD beside), the mechanism,
        z, and the shape of a training release (devices per cohort, cohorts per round, ring,
        coordinates, upload bytes)."""
        p, cfg = self.train_params, self.cfg
        release: dict[str, Any] = {
            "expected_devices_per_round": self.expected_devices or cfg.per_round,
            "cohorts_per_round": self.cohorts(cfg.per_round, p),
            "noise_added": "once per round" if cfg.dp else "none",
        }
        if p.scheme.ring:
            release |= {
                "ring_bits": p.ring_bits,
                "coords_per_upload": p.n_coords(cfg.model_spec().n_params),
                "upload_bytes": p.upload_bytes(cfg.model_spec().n_params),
            }
        return {
            **self.accountant.report(cfg.delta),
            "target_epsilon": cfg.target_epsilon or None,
            "clip_norm": cfg.clip_norm,
            "sampling_source": cfg.sampling_source,
            "rounds_charged": self.accountant.rounds,
            "rounds_run": rounds_run,
            "release": release,
            "evaluation": self.evaluation_report(),
        }

    def evaluation_report(self) -> dict[str, Any]:
        """What an evaluation release tells the aggregator about one held-out device. A device
        evaluates once per run (its ledger); with `eval-noise` z its histogram is one Gaussian
        release, so its epsilon per run is that of one release at `evaluation_multiplier`
        (replace-one neighbours, dp-accounting's RDP)."""
        z, cfg = self.cfg.eval_noise, self.cfg
        multiplier = self.evaluation_multiplier()
        return {
            "noise_multiplier": z,
            "multiplier_replace_one": multiplier if z > 0 else None,
            "score_bins": cfg.eval_bins,
            "upload_bytes": self.eval_params.upload_bytes(cfg.eval_length) if cfg.scheme.ring else None,
            "epsilon_per_run": one_release_epsilon(multiplier, cfg.delta) if z > 0 else None,
            "delta": cfg.delta,
            "counts": "noised" if z > 0 else "exact",
        }

    def evaluation_multiplier(self) -> float:
        """The release noise over the most one held-out device can move an evaluation sum by
        changing its outcome and score (replace-one). A histogram holds two non-zero cells: its
        count, exactly the level (secagg: 7 ring units; CKKS: 1), and its score sum, a score in
        [0, 1] that rounds to at most the level; two devices' histograms differ by at most
        2 x level in L2 (CKKS: 2, plus one grid step per coordinate from the key holder's rounding
        before the noise). The noise is calibrated to the quantised L2 bound of all the vector's
        coordinates, which is looser: a review measured 0.92 z (review 16), not z / 2."""
        p, n = self.eval_params, self.cfg.eval_length
        if p.scheme.ring:
            return p.noise_std_int(n) / (2 * p.level)
        return ckks_release_std(p, n) / (2 + math.sqrt(p.n_coords(n)) * ckks_grid(p))

    def dp_record(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.cfg.target_epsilon or None,
            "delta": self.cfg.delta,
            "accountant": ACCOUNTANT if self.accountant.enabled else "none",
            "mechanism": MECHANISM if self.accountant.enabled else "none",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.cfg.clip_norm,
            "evaluation_noise_multiplier": self.cfg.eval_noise,
            "evaluation_epsilon_per_run": self.evaluation_report()["epsilon_per_run"],
        }


class RoundSum:
    """One round's cohort sums, built as uploads arrive: `add` a cohort's uploads (the aggregator's
    checks), `close` a cohort once every upload it will get is in (the key holder unmasks it, or
    refuses it), then read `result()`. A cohort can be closed while others still wait for devices,
    so the key holder's work overlaps the devices' work; the cohort sums are added in cohort order
    whatever the order they were closed in, so a run is reproducible from its seed bit for bit."""

    def __init__(
        self,
        rounds: SecureRounds,
        params: ProtectionParams,
        server_round: int,
        round_id: int,
        n: int,
        on_contact: Callable[[], None] | None,
        task: bytes,
    ) -> None:
        self.rounds, self.params, self.n = rounds, params, n
        self.server_round, self.round_id = server_round, round_id
        self.on_contact, self.task = on_contact, task
        self.total = CohortSum(sum=np.zeros(n), coord_count=np.zeros(n))  # all but `sum`
        self._sums: dict[int, np.ndarray] = {}  # unmasked cohort sums, added up by `result`
        self._open: dict[int, CohortAggregator] = {}
        self._refused_here: dict[int, int] = {}  # the aggregator's own refusals, per cohort

    def _cohort(self, cohort: int) -> CohortAggregator:
        if cohort not in self._open:
            ckks = self.rounds.ckks_context if self.params.scheme.homomorphic else None
            self._open[cohort] = CohortAggregator(
                self.params,
                self.round_id,
                cohort,
                self.server_round,
                bind_round_seed(round_seed(self.rounds.cfg.seed, self.server_round, cohort), self.task),
                self.n,
                ckks_public_context=ckks,
            )
            self._refused_here[cohort] = 0
        return self._open[cohort]

    def add(self, cohort: int, items: list[tuple[str, bytes]]) -> None:
        agg, out = self._cohort(cohort), self.total
        out.received += len(items)
        for verdict in agg.add_batch([d for d, _ in items], [b for _, b in items]):
            if not verdict.accepted:
                self._refused_here[cohort] += 1
                reason = f"{verdict.reason.value}: {verdict.detail}" if verdict.reason else verdict.detail
                out.refused.append(Refusal(verdict.device_id, reason))

    def close(self, cohort: int) -> None:
        """Ask the key holder for the cohort's sum; a refused cohort contributes nothing."""
        agg, out = self._open.pop(cohort), self.total
        out.upload_bytes += agg.bytes_received
        before = self._refused_here.pop(cohort)  # finalize repeats the aggregator's refusals first
        if self.on_contact is not None:
            self.on_contact()
            self.on_contact = None
        try:
            res = agg.finalize(self.rounds.keyholder)
        except CohortRefusedError as e:
            out.refused.append(Refusal(f"cohort {cohort}", f"{e.reason.value}: {e.detail}"))
            out.refused += [Refusal(d.device_id, d.reason.value) for d in e.dropped[before:]]
            return
        out.refused += [Refusal(d.device_id, d.reason.value) for d in res.dropped[before:]]
        self._sums[cohort] = res.sum
        out.coord_count[res.selected] += res.count
        out.count += res.count
        out.noise_std = max(out.noise_std, res.noise_std)
        out.cohorts += 1
        out.out_of_range += res.out_of_range
        out.norm_clipped += int(res.norm_clipped)

    @property
    def open_cohorts(self) -> list[int]:
        return sorted(self._open)

    def result(self) -> CohortSum:
        """The round's sum over every unmasked cohort, in cohort order (float addition is not
        associative: arrival order must not change the model)."""
        total = np.zeros(self.n)
        for cohort in sorted(self._sums):
            total += self._sums[cohort]
        self.total.sum = total
        return self.total
