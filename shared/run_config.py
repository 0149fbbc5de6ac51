"""The run configuration of a federated run, read once at the edge (Flower's `run_config`).

Both the ServerApp and the ClientApp parse the same keys into this dataclass; the defaults here
are the ones `[tool.flwr.app.config]` in pyproject.toml declares (a test checks they agree).
Everything here is public: Flower sends it to every SuperNode and the transparency API shows it.
The aggregator's own settings (databases, key holder address and credentials, output folders)
are not run configuration: see `server.settings`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fedchurn.shared import wire
from fedchurn.shared.ckks_release import ckks_release_problem
from fedchurn.shared.evaluation import N_BINS, NOISY_BINS, NOISY_MAX_COHORT, histogram_length
from fedchurn.shared.feature_spec import BASE_FEATURES, N_FEATURES
from fedchurn.shared.model_format import ModelSpec
from fedchurn.shared.protection import (
    CKKS_DEFAULT,
    DEFAULT,
    SCHEMES,
    ProtectionParams,
    Scheme,
    max_secagg_coords,
)
from fedchurn.shared.protocol import Protocol, ProtocolError, day_number, parse_population

__all__ = [
    "OPTION_HELP",
    "SIMULATE_DEFAULTS",
    "SIMULATION_NODES",
    "STATS_BOUND",
    "UPLOAD_BUDGET",
    "RunConfig",
    "cohort_count",
    "is_eval_device",
    "is_final_eval_device",
    "option_name",
    "parse_target_epsilon",
    "round_seed",
]


@dataclass(frozen=True)
class RunConfig:
    num_server_rounds: int = 3
    devices: int = 50  # simulated devices (= supernodes) when the population is synthetic
    per_round: int = 10  # devices sampled per training round
    eval_per_round: int = 0  # devices sampled for evaluation after each round (0: final only)
    eval_fraction: float = 0.2  # share of devices held out for evaluation
    # The key holder's noise on each evaluation histogram, as a multiplier of one device's bound
    # (0: exact counts). Devices that pin `min-noise` answer only evaluations noised at least so.
    eval_noise: float = 0.0
    seed: int = 0
    scenario: str = "default"
    days: int = 120
    horizon: int = 14
    silence_days: int = 14
    activity: str = "sessions"  # comma-separated categories that count as activity
    events_file: str = ""  # a real event log instead of the synthetic population
    events_map: str = ""  # its column mapping, e.g. "user=uid,timestamp=time" (see client.importer)
    events_tz: str = ""  # UTC offset in minutes for the log's times that carry none ("" = none)
    cutoff: str = ""  # YYYY-MM-DD: the standard churn protocol at this cutoff ("" = rolling labels)
    population: str = "all"  # all | active:N (activity in the N days up to a row's day)
    features: str = "auto"  # base (127) | extended (all) | auto: extended under --cutoff, else base
    local_epochs: int = 1
    batch_size: int = 120  # ≥ a device's rows: one full-batch step per epoch
    lr: float = 0.3  # local SGD (gradient scale kept, so averaging behaves like large-batch SGD)
    strategy: str = "fedadam"  # fedavg | fedadam
    server_lr: float = 0.05  # FedAdam's eta
    server_beta2: float = 0.999  # FedAdam's second-moment decay
    server_tau: float = 1e-6  # FedAdam's adaptivity floor
    server_lr_schedule: str = "cosine"  # constant | cosine (to 5 % of server-lr at the last round)
    protection: str = "secagg"  # secagg | ckks | plaintext (a labelled baseline, never for devices)
    clip_norm: float = 0.5  # L2 bound of a device's uploaded update (the DP sensitivity)
    coord_clip_factor: float = 20.0  # secagg: each coordinate clipped to factor * clip_norm / sqrt(m)
    coords_per_round: int = 418  # secagg: coordinates each device uploads per round (public choice)
    quant_bits: int = 8  # signed levels -127..127 per coordinate, stochastic rounding
    ring_bits: int = 13  # the ring holds max_cohort x 127 plus noise without wrapping
    cohort_size: int = 20  # devices per cohort; a round's cohorts upload different coordinates
    max_cohort: int = 32
    k_min: int = 10  # smallest cohort the key holder will unmask
    centre_features: bool = True  # measure the feature mean through the secure sum; train centred
    target_epsilon: float = 0.0  # 0: no differential privacy
    delta: float = 1e-5
    # secret: participation drawn with `secrets` (what amplification by sampling needs); seeded: from
    # `seed`, so that a simulation is reproducible (a stand-in for the deployment's secret draw).
    sampling_source: str = "secret"
    round_timeout: float = 600.0  # seconds a round waits for replies; late devices are left out
    run_name: str = ""  # identity a restarted run resumes under ("" = derived from the config)

    @classmethod
    def from_flower(cls, run_config: dict[str, Any]) -> RunConfig:
        """Flower keys use dashes (`num-server-rounds`); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown run-config key {key!r}; known: {', '.join(sorted(known))}")
            kwargs[name] = type(getattr(cls(), name))(value)
        return cls(**kwargs)

    def to_flower(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def digest(self) -> bytes:
        """SHA-256 of every setting (UTF-8 JSON, keys sorted): bound into each device's round seed
        beside the model (`shared.protection.task_digest`), so devices sent two different run
        configurations (a learning rate that zeroes their updates, say) never share a cohort."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).digest()

    def check(self) -> None:
        """Refuse any value no run can use, naming the command-line option and what it accepts
        (before anything starts: a bad value used to surface 20-49 s later, in a log)."""
        for name, _, _ in _RULES:
            _check_setting(self, name)
        if self.k_min > self.max_cohort:
            raise ValueError(f"--k-min {self.k_min} is above --max-cohort {self.max_cohort}")
        self.protocol()  # horizon, silence, cutoff, population, features, activity

    def training_pool(self, n_devices: int) -> int:
        """How many of a simulated population's devices train (those not held out)."""
        return sum(1 for d in range(n_devices) if not is_eval_device(self.seed, d, self.eval_fraction))

    def check_pool(self, n_devices: int) -> None:
        """`per_round` against the devices that train (those not held out)."""
        pool = self.training_pool(n_devices)
        if self.per_round > pool:
            raise ValueError(
                f"--per-round {self.per_round} is above the {pool:,} training devices ({n_devices:,} "
                f"devices, {self.eval_fraction:g} held out): lower --per-round or add devices"
            )

    @property
    def scheme(self) -> Scheme:
        """The protection scheme this run's uploads use."""
        _check_setting(self, "protection")  # a config built without `check` names the option too
        return SCHEMES[self.protection]

    @property
    def dp(self) -> bool:
        """Differential privacy is on: Poisson sampling, one cohort per round, noise added once."""
        return self.target_epsilon > 0

    def sample_rate(self, pool: int) -> float:
        """q under DP: the chance that one of `pool` training devices takes part in a round."""
        return min(1.0, self.per_round / max(pool, 1))

    def round_cap(self) -> int:
        """Under DP a round is one cohort of Binomial(pool, per_round / pool) devices: the ring and
        the key holder are sized for `per_round` plus 8 standard deviations of that draw (exceeded
        with probability below 1e-15; the sampler cuts a larger draw to this cap)."""
        return self.per_round + math.ceil(8 * math.sqrt(self.per_round)) + 1

    def cohort_limit(self, noise_multiplier: float) -> int:
        """Largest cohort of a training or feature-mean round: the whole round under DP (the key
        holder's noise is then added once per round, not once per small cohort: decision 97)."""
        return self.round_cap() if noise_multiplier > 0 else self.max_cohort

    def train_protection(self, noise_multiplier: float = 0.0) -> ProtectionParams:
        """What a training upload is protected with; both sides build it from the run config.

        With DP noise the ring needs headroom: the ring grows until the cohort sum plus noise fits,
        and the coordinates per upload shrink so the upload stays within UPLOAD_BUDGET bytes."""
        if self.scheme.homomorphic:
            return CKKS_DEFAULT.replace(
                clip_norm=self.clip_norm, noise_multiplier=noise_multiplier, k_min=self.k_min
            )
        if not (math.isfinite(self.coord_clip_factor) and self.coord_clip_factor > 0):
            raise ValueError(f"coord-clip-factor must be a positive number, got {self.coord_clip_factor}")
        if self.scheme.ring:
            fit = max_secagg_coords(DEFAULT.max_upload_bytes, self.ring_bits)
            if min(self.coords_per_round, self.model_spec().n_params) > fit:
                raise ValueError(
                    f"coords-per-round {self.coords_per_round} makes uploads larger than the "
                    f"{DEFAULT.max_upload_bytes} B the aggregator accepts; at most {fit} fit in a ring of "
                    f"{self.ring_bits} bits"
                )
        last: ValueError | None = None
        for ring in range(self.ring_bits, 33):
            coords = self.coords_per_round
            if ring > self.ring_bits:
                coords = min(coords, max_secagg_coords(UPLOAD_BUDGET, ring))
            try:
                return _sized(
                    DEFAULT.replace(
                        mode=self.protection,
                        clip_norm=self.clip_norm,
                        coord_clip_factor=self.coord_clip_factor,
                        coords_per_round=coords,
                        quant_bits=self.quant_bits,
                        ring_bits=ring,
                        max_cohort=self.cohort_limit(noise_multiplier),
                        k_min=self.k_min,
                        noise_multiplier=noise_multiplier,
                    ),
                    self.model_spec().n_params,
                )
            except ValueError as e:
                last = e
        raise ValueError(f"no ring width fits these protection settings: {last}")

    def check_ckks(self, noise_multiplier: float = 0.0) -> None:
        """CKKS: refuse, before anything starts, settings under which the key holder would refuse
        every request of some upload (`shared.ckks_release`), naming the upload and the rule."""
        if not self.scheme.homomorphic:
            return
        limit = CKKS_DEFAULT.max_cohort
        if noise_multiplier > 0 and self.round_cap() > limit:
            # Under DP a round is one cohort (noise once per round); past the limit the aggregator
            # would refuse the extra uploads one by one (`cohort_full`).
            fits = max(
                (p for p in range(1, limit + 1) if replace(self, per_round=p).round_cap() <= limit), default=1
            )
            raise ValueError(
                f"--per-round {self.per_round}: under differential privacy a CKKS round is one cohort "
                f"of up to {self.round_cap()} devices, and a CKKS cohort holds at most {limit}: use "
                f"--per-round {fits} or less, or secagg"
            )
        spec = self.model_spec()
        uploads = [
            ("training", self.train_protection(noise_multiplier), spec.n_params),
            ("evaluation", self.eval_protection(), self.eval_length),
        ]
        if self.centre_features:
            uploads.append(("feature-mean", self.stats_protection(noise_multiplier), spec.n_features + 1))
        for what, params, n in uploads:
            problem = ckks_release_problem(params, n)
            if problem is not None:
                hint = "; or turn off --centre-features" if what == "feature-mean" else ""
                raise ValueError(
                    f"--protection ckks: the key holder would refuse every {what} upload under these "
                    f"settings (noise multiplier {noise_multiplier:.3g}): {problem[1]}{hint}"
                )

    @property
    def eval_bins(self) -> int:
        """Score bins of an evaluation histogram: fewer under noise (`shared.evaluation.NOISY_BINS`)."""
        return NOISY_BINS if self.eval_noise > 0 else N_BINS

    @property
    def eval_outcomes(self) -> int:
        """Outcome columns of an evaluation histogram beside "no churn": one per hazard bin of the
        model, or under noise one ("churned within the horizon"), so that a bin's churners carry
        one cell's noise, not one per churn day (and the churn day is not released)."""
        return self.outputs if self.eval_noise == 0 else 1

    @property
    def eval_length(self) -> int:
        """Values in one evaluation upload: counts and score sums per (score bin, outcome)."""
        return histogram_length(self.eval_outcomes, self.eval_bins)

    def eval_protection(self) -> ProtectionParams:
        """Evaluation histograms: every coordinate, counts exact (7 ring units each); a 12-bit ring,
        wider when the key holder adds `eval_noise` (until the largest cohort plus the noise's tail
        fits, as for the feature mean)."""
        n = self.eval_length
        clip = 1.5  # a device's histogram holds one count and one score in [0, 1]: norm <= sqrt(2)
        # Each coordinate clipped to 1, a count's own size (both schemes): CKKS used its default
        # factor, 3 x clip / sqrt(n) = 0.09 per coordinate, so every count of 1 arrived as 0.09 and a
        # release of 99 devices read as 8 (decision 151).
        per_coord = math.sqrt(n) / clip
        if self.scheme.homomorphic:
            return CKKS_DEFAULT.replace(
                clip_norm=clip,
                coord_clip_factor=per_coord,
                noise_multiplier=self.eval_noise,
                k_min=self.k_min,
            )
        fields = {
            "quant_bits": 4,
            "clip_norm": clip,
            "coord_clip_factor": per_coord,
            "noise_multiplier": self.eval_noise,
            "max_cohort": NOISY_MAX_COHORT if self.eval_noise > 0 else DEFAULT.max_cohort,
        }
        return self._full_upload(n, 12, f"an evaluation upload (--eval-noise {self.eval_noise:g})", fields)

    def stats_protection(self, noise_multiplier: float = 0.0) -> ProtectionParams:
        """The feature-mean upload: every coordinate, 8-bit levels, the count coordinate exact.

        Each scaled feature is clipped to +-STATS_BOUND, so its quantisation step is 1/32 and the
        count 1.0 is exactly 32 ring units. Under DP it carries the training noise multiplier (and
        is charged as one more round); the ring widens from 16 bits until that noise fits."""
        n = self.model_spec().n_features + 1
        clip = STATS_BOUND * math.sqrt(n)
        if self.scheme.homomorphic:
            # Per coordinate the features' own clip (not 3x it): the key holder's room is then far
            # enough inside the masks that a device counted twice is refused (decision 140).
            return CKKS_DEFAULT.replace(
                clip_norm=clip, coord_clip_factor=1.0, noise_multiplier=noise_multiplier, k_min=self.k_min
            )
        fields = {
            "quant_bits": 8,
            "clip_norm": clip,
            "coord_clip_factor": 1.0,
            "noise_multiplier": noise_multiplier,
            "max_cohort": self.cohort_limit(noise_multiplier),
        }
        return self._full_upload(n, 16, "the feature-mean upload", fields)

    def _full_upload(self, n: int, first_ring: int, what: str, fields: dict[str, Any]) -> ProtectionParams:
        """Secagg parameters for an upload of all `n` coordinates (evaluation, feature mean): the
        narrowest ring from `first_ring` bits on that holds the largest cohort plus the noise's
        tail, its upload sized for that ring."""
        last: ValueError | None = None
        for ring in range(first_ring, 33):
            try:
                params = DEFAULT.replace(
                    mode=self.protection,
                    coords_per_round=None,
                    ring_bits=ring,
                    k_min=self.k_min,
                    max_upload_bytes=wire.HEADER_LEN + wire.SEAL_LEN + wire.packed_len(n, ring),
                    **fields,
                )
                params.check_ring(n)
                return _sized(params, n)
            except ValueError as e:
                last = e
        raise ValueError(f"no ring width fits {what}: {last}")

    def server_lr_at(self, server_round: int) -> float:
        """FedAdam's eta for a round: constant, or cosine-decayed from server-lr to 5 % of it."""
        if self.server_lr_schedule == "constant":
            return self.server_lr
        if self.server_lr_schedule != "cosine":
            raise ValueError(
                f"server-lr-schedule must be constant or cosine, got {self.server_lr_schedule!r}"
            )
        progress = (server_round - 1) / max(self.num_server_rounds - 1, 1)
        return self.server_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))

    def activity_categories(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.activity.split(",") if c.strip())

    def protocol(self) -> Protocol:
        """The labelling protocol these settings declare (checked: a bad value names its option)."""
        return Protocol(
            horizon=self.horizon,
            silence_days=self.silence_days,
            activity=self.activity_categories(),
            cutoff_day=day_number(self.cutoff) if self.cutoff else None,
            population_days=parse_population(self.population),
            n_features=self.feature_count(),
        )

    def feature_count(self) -> int:
        """The model's inputs: the base 127 or every declared feature (`shared.feature_spec`)."""
        choice = self.features.strip().lower()
        if choice == "auto":
            choice = "extended" if self.cutoff else "base"
        if choice not in ("base", "extended"):
            raise ProtocolError("--features", f"{self.features!r}: expected auto, base or extended")
        return BASE_FEATURES if choice == "base" else N_FEATURES

    def model_spec(self) -> ModelSpec:
        """The network every device and the server build for this run: its outputs follow the
        protocol's horizon bins."""
        return self.protocol().model_spec()

    @property
    def outputs(self) -> int:
        """Hazard bins of the run's model (the evaluation histogram has one more outcome)."""
        return self.model_spec().outputs


# What each run setting means, as a command-line option's help shows it: declared once, beside the
# settings, and read by the commands that expose a setting (`fedchurn simulate` builds its options
# from these names, `option_name`, this help and `SIMULATE_DEFAULTS`).
OPTION_HELP: dict[str, str] = {
    "devices": "Simulated devices.",
    "num_server_rounds": "Federated rounds.",
    "per_round": "Devices sampled per round.",
    "seed": "Seed of everything fedchurn draws.",
    "scenario": "Population scenario (simulations/scenarios/*.toml).",
    "days": "Days of history per device.",
    "events_map": "With --events: column mapping, e.g. user=uid,timestamp=t.",
    "cutoff": "With --events: the standard churn protocol at this date (YYYY-MM-DD): features from "
    "events up to it, churn = no activity in the horizon after it; training rows are earlier days "
    "whose outcome ends by it. Default: rolling labels (docs/client-spec.md §7).",
    "population": "Rows scored: all, or active:N (activity in the N days up to the day).",
    "features": "Model inputs: base (the 127), extended (all: long windows, history rhythm, money), "
    "or auto (extended under --cutoff, else base).",
    "activity": "Categories that count as activity (comma-separated).",
    "horizon": "Prediction horizon in days (1-365); the model's outputs follow it.",
    "silence_days": "Days without activity that make a churn.",
    "strategy": "fedavg or fedadam.",
    "server_lr": "FedAdam server learning rate.",
    "server_beta2": "FedAdam second-moment decay.",
    "server_tau": "FedAdam adaptivity floor τ.",
    "server_lr_schedule": "constant, or cosine (FedAdam's step decays to 5 % by the last round).",
    "local_epochs": "Local epochs per round.",
    "batch_size": "Local batch size (≥ 120: one full-batch step per epoch).",
    "lr": "Local learning rate.",
    "eval_per_round": (
        "Held-out devices evaluated after each round (0: all at the end); only those with a scored "
        "day count towards k, so sample several times --k-min."
    ),
    "eval_fraction": "Share of devices held out for evaluation.",
    "eval_noise": "Noise the key holder adds to each evaluation histogram, as a multiplier of one "
    "device's bound (0: exact counts). Above 0 the histogram has 40 score bins and only whether a "
    "device churned within the horizon, and the report gives the held-out devices' epsilon; devices "
    "that pin min-noise need at least theirs.",
    "protection": "secagg (default), ckks, or plaintext (baseline).",
    "delta": "Differential privacy δ.",
    "clip_norm": "L2 bound of each device's update.",
    "coord_clip_factor": "secagg: each coordinate clipped to factor × clip-norm / √coords.",
    "coords_per_round": "secagg: coordinates per upload (at most what fits in 1,024 B).",
    "quant_bits": "secagg: bits per quantised coordinate (levels ±(2^(b-1)-1)).",
    "ring_bits": "secagg: ring width; must hold a cohort's sum (and DP noise).",
    "k_min": "Smallest cohort the key holder will unmask.",
    "centre_features": "Measure the feature mean through the secure sum first; train centred.",
    "events_file": "Train on a real log (one user = one device).",
    "events_tz": "With --events: UTC offset (minutes) for times without one.",
    "target_epsilon": "Differential privacy target ε against outsiders (a number > 0), or none (also "
    "0). Under DP each round is a Poisson sample and the key holder adds noise once.",
}


def parse_target_epsilon(text: str) -> float:
    """`--target-epsilon` as every command takes it: `none` (or 0) for no DP, else a positive,
    finite number; ValueError naming the option otherwise."""
    if text.strip().lower() in ("none", "0", "0.0"):
        return 0.0
    try:
        eps = float(text)
    except ValueError:
        eps = math.nan
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"--target-epsilon must be a positive number or none, got {text!r}")
    return eps


def option_name(field_name: str) -> str:
    """The command-line option of a run-config field."""
    special = {
        "num_server_rounds": "--rounds",
        "events_file": "--events",
        "events_map": "--map",
        "events_tz": "--tz",
    }
    return special.get(field_name, "--" + field_name.replace("_", "-"))


def _positive(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


# field, test, what it accepts (declared once; `RunConfig.check` applies them)
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("num_server_rounds", lambda v: v >= 1, "a whole number of rounds >= 1"),
    ("devices", lambda v: v >= 1, "a whole number of devices >= 1"),
    ("per_round", lambda v: v >= 1, "a whole number of devices >= 1"),
    ("eval_per_round", lambda v: v >= 0, "a whole number >= 0"),
    ("eval_fraction", lambda v: 0 < v < 1, "a share strictly between 0 and 1"),
    ("eval_noise", lambda v: 0 <= v <= 100, "a number from 0 (exact counts) to 100"),
    ("days", lambda v: v >= 1, "a whole number of days >= 1"),
    ("local_epochs", lambda v: v >= 1, "a whole number of epochs >= 1"),
    ("batch_size", lambda v: v >= 1, "a whole number >= 1"),
    ("lr", _positive, "a positive number"),
    ("strategy", lambda v: v in ("fedavg", "fedadam"), "fedavg or fedadam"),
    ("server_lr", _positive, "a positive number"),
    ("server_beta2", lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
    ("server_tau", _positive, "a positive number"),
    ("server_lr_schedule", lambda v: v in ("constant", "cosine"), "constant or cosine"),
    ("protection", lambda v: v in SCHEMES, "secagg, ckks or plaintext"),
    ("clip_norm", _positive, "a positive number"),
    ("coord_clip_factor", _positive, "a positive number"),
    ("coords_per_round", lambda v: v >= 1, "a whole number >= 1"),
    ("quant_bits", lambda v: 2 <= v <= 16, "2..16 bits"),
    ("ring_bits", lambda v: 8 <= v <= 32, "8..32 bits"),
    ("cohort_size", lambda v: v >= 1, "a whole number >= 1"),
    ("max_cohort", lambda v: v >= 2, "a whole number >= 2"),
    ("k_min", lambda v: v >= 2, "a whole number >= 2 (a cohort of one would be unmasked alone)"),
    ("target_epsilon", lambda v: v >= 0 and math.isfinite(v), "a positive number, or 0 for no DP"),
    ("delta", lambda v: 0 < v < 1, "a probability strictly between 0 and 1"),
    ("sampling_source", lambda v: v in ("secret", "seeded"), "secret or seeded"),
    ("round_timeout", _positive, "a positive number of seconds"),
)
_RULE_BY_NAME = {name: (ok, accepts) for name, ok, accepts in _RULES}


def _check_setting(cfg: RunConfig, name: str) -> None:
    """Refuse a setting's value outside its rule, naming the option and what it accepts."""
    ok, accepts = _RULE_BY_NAME[name]
    value = getattr(cfg, name)
    if not ok(value):
        raise ValueError(f"{option_name(name)}: {value!r} is not allowed; expected {accepts}")


def _sized(params: ProtectionParams, n_params: int) -> ProtectionParams:
    """The plaintext baseline's uploads are float32: the aggregator accepts exactly their size."""
    if params.scheme.private:
        return params
    return params.replace(max_upload_bytes=params.upload_bytes(n_params))


STATS_BOUND = 127 / 32  # scaled features are clipped to this in the feature-mean upload
SIMULATION_NODES = 4  # Flower simulation nodes (shards) by default: two per core (decision 87)
UPLOAD_BUDGET = 780  # bytes per device per round, all included (the brief's figure)


def round_seed(seed: int, server_round: int, cohort: int) -> bytes:
    """The public seed that chooses a cohort's coordinates in a round (32 bytes).

    Each cohort of a round uploads its own random subset of coordinates, so a round of several
    cohorts moves most of the model although each device sends only `coords_per_round` values."""
    return hashlib.blake2b(f"fedchurn-round|{seed}|{server_round}|{cohort}".encode(), digest_size=32).digest()


def cohort_count(n_devices: int, target: int, max_cohort: int, k_min: int) -> int:
    """How many cohorts to split n devices into: about `target` each, never above `max_cohort`,
    never below `k_min` when that can be helped."""
    n = max(1, round(n_devices / max(target, 1)))
    n = max(n, -(-n_devices // max_cohort))
    while n > 1 and n_devices // n < k_min:
        n -= 1
    return n


def is_eval_device(seed: int, device: int, fraction: float) -> bool:
    """Held-out membership from (seed, device index): the device, the server-side runner and the
    baselines agree on it without talking. A hash, not randomness: nothing here is secret."""
    h = hashlib.blake2b(f"fedchurn-eval|{seed}|{device}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def is_final_eval_device(seed: int, device: int, fraction: float, per_round_evaluation: bool) -> bool:
    """Whether a held-out device belongs to the run's final evaluation.

    Each held-out device evaluates once per run (`client.contribution_ledger`). Without per-round
    evaluation every held-out device is in the final one; with it, half of them (by a second
    public hash) are kept for the final evaluation and per-round samples come from the other half."""
    if not is_eval_device(seed, device, fraction):
        return False
    if not per_round_evaluation:
        return True
    h = hashlib.blake2b(f"fedchurn-final-eval|{seed}|{device}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < 0.5


# `fedchurn simulate`'s starting point: a study-sized run drawn from its seed. The fields' own
# defaults above are the deployment app's (`flwr run`, pyproject's `[tool.flwr.app.config]`). The
# command's option defaults are read from here, and a test compares them.
SIMULATE_DEFAULTS = RunConfig(
    num_server_rounds=200, devices=10_000, per_round=1000, server_lr=0.1, sampling_source="seeded"
)
