"""Differential privacy: noise calibration, a per-run accountant (dp-accounting), the noise sampler.

The unit of privacy is the device (= one user): each device's upload is L2-clipped, so one
device changes a round's sum by at most the clip norm (add/remove). Under DP a round is one cohort
and the key holder adds Gaussian noise of std `noise_multiplier x clip_norm` to its sum, once
(decision 97). Rounds are accounted with dp-accounting's RDP accountant (PLD beside it) as a
subsampled Gaussian composed over rounds. Sampling: "poisson" (each device joins a round
independently with rate q; add/remove neighbours; what runs use) or "fixed" (exactly q*N devices
without replacement; replace-one neighbours, so the sensitivity doubles and the accountant sees
noise_multiplier / 2; kept for comparison: it needs 2.5-4x the noise).

The noise itself is an exact discrete Gaussian (Canonne, Kamath, Steinke 2020) drawn with
rational arithmetic from `secrets` (the OS CSPRNG): no floating-point sampling artefacts
(Mironov 2012), nothing predictable from a seed.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

if TYPE_CHECKING:
    from fedchurn.shared.run_config import RunConfig

Sampling = Literal["poisson", "fixed"]
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    128.0,
    256.0,
    512.0,
    1024.0,
)
# Sampling without replacement is evaluated at integer orders only (its fractional orders are slow).
RDP_ORDERS_FIXED: tuple[float, ...] = (*map(float, range(2, 33)), 40.0, 48.0, 64.0, 128.0, 256.0, 512.0)
MECHANISM = (
    "DP-FedAvg: each device's update L2-clipped and securely summed; the key holder adds one "
    "discrete Gaussian to each round's sum (one cohort per round)"
)
SIGMA2_DENOMINATOR = 2**16  # sigma^2 is rounded UP to this grid so the sampler's fractions stay small


@dataclass(frozen=True)
class _SamplingModel:
    """How one way of sampling a round is accounted: its neighbouring relation, the RDP orders it
    is evaluated at, and how far one device moves a round's sum (in clip norms)."""

    relation: dp_accounting.NeighboringRelation
    orders: tuple[float, ...]
    sensitivity: float  # add/remove one device: 1; replace one: 2 (the noise is 1/2 as large relative)
    fixed_size: bool  # exactly q*N devices without replacement (needs the population)

    def round_event(
        self, noise_multiplier: float, sample_rate: float, population: int | None
    ) -> dp_accounting.DpEvent:
        if not 0 < sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        gauss = dp_accounting.GaussianDpEvent(noise_multiplier / self.sensitivity)
        if not self.fixed_size:
            return dp_accounting.PoissonSampledDpEvent(sample_rate, gauss)
        if population is None or population < 1:
            raise ValueError("fixed-size sampling needs the population size")
        size = max(1, round(sample_rate * population))
        return dp_accounting.SampledWithoutReplacementDpEvent(population, size, gauss)


_SAMPLING: dict[str, _SamplingModel] = {
    "poisson": _SamplingModel(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, RDP_ORDERS, 1.0, False),
    "fixed": _SamplingModel(dp_accounting.NeighboringRelation.REPLACE_ONE, RDP_ORDERS_FIXED, 2.0, True),
}


def _model(sampling: Sampling) -> _SamplingModel:
    if sampling not in _SAMPLING:
        raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
    return _SAMPLING[sampling]


def _relation(sampling: Sampling) -> dp_accounting.NeighboringRelation:
    return _model(sampling).relation


def _round_event(
    noise_multiplier: float, sample_rate: float, sampling: Sampling, population: int | None
) -> dp_accounting.DpEvent:
    return _model(sampling).round_event(noise_multiplier, sample_rate, population)


def _accountant(sampling: Sampling) -> rdp.RdpAccountant:
    m = _model(sampling)
    return rdp.RdpAccountant(list(m.orders), m.relation)


def epsilon_for(
    noise_multiplier: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> float:
    """epsilon after `rounds` rounds (inf without noise)."""
    if noise_multiplier <= 0:
        return math.inf
    return _epsilon(
        _round_event(noise_multiplier, sample_rate, sampling, population), rounds, sampling, delta
    )


def _epsilon(event: dp_accounting.DpEvent, rounds: int, sampling: Sampling, delta: float) -> float:
    """epsilon at `delta` of `event` composed `rounds` times (one RDP composition)."""
    acc = _accountant(sampling)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def _aggregator_event(noise_multiplier: float, sampling: Sampling, rounds: int) -> dp_accounting.DpEvent:
    """What the aggregator, which knows who took part, sees: the Gaussian of every round, no
    sampling. Add-or-remove (poisson): multiplier z; replace-one (fixed): the sum moves by up to
    2 x clip norm, so z / 2."""
    z = noise_multiplier / _model(sampling).sensitivity
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)


def epsilon_without_sampling(
    noise_multiplier: float, delta: float, rounds: int, sampling: Sampling = "fixed"
) -> float:
    """epsilon against a party that knows who took part in every round (the aggregator): no
    amplification by sampling, and the device assumed to take part in every one of `rounds`
    rounds (the aggregator chooses), composed with the RDP accountant."""
    if noise_multiplier <= 0:
        return math.inf
    if rounds <= 0:
        return 0.0
    acc = rdp.RdpAccountant(list(RDP_ORDERS), _relation(sampling))
    acc.compose(_aggregator_event(noise_multiplier, sampling, rounds))
    return float(acc.get_epsilon(delta))


def one_release_epsilon(multiplier: float, delta: float) -> float:
    """epsilon of one Gaussian release whose noise std is `multiplier` times the most one device
    can move it (under whichever neighbouring relation that bound was taken), with the RDP
    accountant; inf without noise."""
    if multiplier <= 0:
        return math.inf
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(dp_accounting.GaussianDpEvent(multiplier))
    return float(acc.get_epsilon(delta))


def pld_epsilon(event: dp_accounting.DpEvent, sampling: Sampling, delta: float) -> float | None:
    """The same event through dp-accounting's PLD accountant (tighter than RDP); None where PLD
    does not support the event (sampling without replacement)."""
    acc = pld.PLDAccountant(_relation(sampling), value_discretization_interval=1e-3)
    if not acc.supports(event):
        return None
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> float:
    """Smallest noise multiplier z whose accounted epsilon after `rounds` rounds is <= target."""
    if not (target_epsilon > 0 and 0 < delta < 1 and rounds >= 1):
        raise ValueError("need target_epsilon > 0, 0 < delta < 1, rounds >= 1")
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(sampling),
        lambda s: dp_accounting.SelfComposedDpEvent(
            _round_event(s, sample_rate, sampling, population), rounds
        ),
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-4,
    )
    return float(z)


def run_noise_multiplier(cfg: RunConfig, n_train_devices: int) -> float:
    """The noise multiplier a run's rounds carry: calibrated to its target epsilon under Poisson
    sampling at its rate (the feature-mean round charged as one more round); 0.0 without DP."""
    if not cfg.dp:
        return 0.0
    return calibrate_noise_multiplier(
        cfg.target_epsilon,
        cfg.delta,
        sample_rate=cfg.sample_rate(n_train_devices),
        rounds=cfg.num_server_rounds + (1 if cfg.centre_features else 0),
        sampling="poisson",
    )


@dataclass
class PrivacyAccountant:
    """The run's accountant: call `step()` once per round; `epsilon(delta)` is what has been spent.

    `PrivacyAccountant.none()` is the explicit "no DP" accountant: epsilon is infinite and every
    report says so.
    """

    noise_multiplier: float
    sample_rate: float
    sampling: Sampling = "poisson"
    population: int | None = None
    rounds: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cache: dict[tuple[int, float], float] = {}
        self._pld: dict[tuple[str, bool, int, float], float | None] = {}
        if self.enabled:
            self._event = _round_event(
                self.noise_multiplier, self.sample_rate, self.sampling, self.population
            )

    @classmethod
    def none(cls) -> PrivacyAccountant:
        return cls(noise_multiplier=0.0, sample_rate=1.0)

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    def step(self, n_rounds: int = 1, delta: float | None = None) -> float | None:
        """Account `n_rounds` more rounds; returns epsilon at `delta` when given (and records it)."""
        if n_rounds < 1:
            raise ValueError("n_rounds must be >= 1")
        self.rounds += n_rounds
        if delta is None:
            return None
        eps = self.epsilon(delta)
        self.history.append({"round": float(self.rounds), "epsilon": eps, "delta": delta})
        return eps

    def dp_event(self) -> dp_accounting.DpEvent:
        """Everything spent so far as one dp-accounting event (the rounds self-composed)."""
        if not self.enabled:
            return dp_accounting.NonPrivateDpEvent()
        return dp_accounting.SelfComposedDpEvent(self._event, self.rounds)

    def epsilon_aggregator(self, delta: float) -> float:
        """epsilon against the aggregator, which knows who took part: no amplification by sampling,
        every accounted round counted (`epsilon_without_sampling`)."""
        if not self.enabled:
            return math.inf
        key = (-self.rounds, delta)
        if key not in self._cache:
            self._cache[key] = epsilon_without_sampling(
                self.noise_multiplier, delta, self.rounds, self.sampling
            )
        return self._cache[key]

    def epsilon_pld(self, delta: float, aggregator: bool = False) -> float | None:
        """Both figures again through the PLD accountant (None without PLD support)."""
        if not self.enabled:
            return math.inf
        if self.rounds == 0:
            return 0.0
        key = ("pld", aggregator, self.rounds, delta)
        if key not in self._pld:
            event = (
                _aggregator_event(self.noise_multiplier, self.sampling, self.rounds)
                if aggregator
                else self.dp_event()
            )
            self._pld[key] = pld_epsilon(event, self.sampling, delta)
        return self._pld[key]

    def epsilon(self, delta: float) -> float:
        """epsilon against outsiders (amplified by sampling, which must be secret from them) spent
        so far at `delta` (one RDP composition of all rounds, cached)."""
        if not self.enabled:
            return math.inf
        if self.rounds == 0:
            return 0.0
        key = (self.rounds, delta)
        if key not in self._cache:
            self._cache[key] = _epsilon(self._event, self.rounds, self.sampling, delta)
        return self._cache[key]

    def report(self, delta: float) -> dict[str, object]:
        """What the run's output records about privacy."""
        return {
            "dp": self.enabled,
            "label": "differential privacy" if self.enabled else "NO DIFFERENTIAL PRIVACY",
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "sampling": self.sampling,
            "population": self.population,
            "rounds": self.rounds,
            "delta": delta,
            "epsilon": self.epsilon(delta),
            "epsilon_outsiders": self.epsilon(delta),
            "epsilon_aggregator": self.epsilon_aggregator(delta),
            "epsilon_pld": self.epsilon_pld(delta),
            "epsilon_aggregator_pld": self.epsilon_pld(delta, aggregator=True),
            "mechanism": MECHANISM if self.enabled else "none",
            "accountant": "dp_accounting RDP (subsampled Gaussian, composed over rounds); PLD beside",
            "accountant_aggregator": "dp_accounting RDP (Gaussian each round, no amplification); PLD beside",
        }


# --- exact discrete Gaussian (CKS20), randomness from `secrets` ---


def _bernoulli(p: Fraction) -> bool:
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp(gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS20 Algorithm 1)."""
    while gamma > 1:
        if not _bernoulli_exp(Fraction(1)):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _discrete_laplace(t: int) -> int:
    """P(y) proportional to exp(-|y| / t) (CKS20 Algorithm 2, s = 1)."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1)):
            v += 1
        y = u + t * v
        negative = secrets.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_gaussian_one(sigma: float) -> int:
    """One exact draw from the discrete Gaussian N_Z(0, sigma'^2), sigma' >= sigma (CKS20 Algorithm 3)."""
    sigma2 = Fraction(math.ceil(sigma * sigma * SIGMA2_DENOMINATOR), SIGMA2_DENOMINATOR)
    if sigma2 == 0:
        return 0
    t = math.isqrt(math.floor(sigma2)) + 1
    while True:
        y = _discrete_laplace(t)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(gamma):
            return y


def discrete_gaussian(sigma: float, size: int) -> np.ndarray:
    """`size` independent draws (int64); zeros when sigma is 0 (DP off)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError("sigma must be finite and >= 0")
    if sigma == 0:
        return np.zeros(size, dtype=np.int64)
    return np.fromiter((discrete_gaussian_one(sigma) for _ in range(size)), dtype=np.int64, count=size)


def randomised_round(x: np.ndarray) -> np.ndarray:
    """Each value rounded to one of its two neighbouring integers, up with probability equal to
    its fractional part, on coins from the OS (`os.urandom`): unbiased, so a term far below one
    step moves the result's mean by its own size only. Rounding to nearest turned a term of
    2^-10 steps into a whole step on coordinates the aggregator had put on a half step (review 10)."""
    x = np.asarray(x, dtype=np.float64)
    low = np.floor(x)
    coins = np.frombuffer(os.urandom(8 * x.size), dtype="<u8").reshape(x.shape) / 2.0**64
    return low + (coins < x - low)
