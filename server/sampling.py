"""Who takes part in a round: one sampler over (node, device) pairs, for every kind of node.

The roster is what the nodes said they serve (a query per node, once per run): a simulation shard
lists its share of the population, a SuperNode the pseudonyms of its stores, a phone itself. The
training pool, the per-round evaluation pool and the final evaluation pool follow from public
hashes of the device index (`shared.run_config`), so node and aggregator agree on them without a
list. Without differential privacy a round draws `per-round` pairs without replacement; under DP
each training pair takes part independently with rate q = per-round / pool (Poisson sampling, the
add-or-remove-one setting the accountant assumes), drawn as a Binomial(pool, q) count (by inverting
its CDF at one uniform draw) and then that many pairs without replacement, which is the same
distribution. Every draw comes from `secrets` (sampling-source "secret", the default and the only
choice for real devices), or from the run's seed (sampling-source "seeded", a reproducible
simulation).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from scipy.stats import binom

from fedchurn.shared.run_config import RunConfig, is_eval_device, is_final_eval_device

__all__ = ["Pair", "Sampler"]

Pair = tuple[int, int]  # (node id, device index)


@dataclass
class Sampler:
    cfg: RunConfig
    roster: list[Pair]
    evaluated: set[int] = field(default_factory=set)  # devices asked to evaluate in this run

    def __post_init__(self) -> None:
        if self.cfg.sampling_source not in ("secret", "seeded"):
            raise ValueError(f"sampling-source must be secret or seeded, got {self.cfg.sampling_source!r}")
        self.rng: random.Random = (
            random.Random(self.cfg.seed) if self.cfg.sampling_source == "seeded" else secrets.SystemRandom()
        )
        cfg = self.cfg
        # By device first: Flower's node ids change from run to run, the devices do not, so a
        # seeded simulation draws the same devices again whichever node serves them.
        self.roster = sorted(self.roster, key=lambda p: (p[1], p[0]))
        self.train_pool = [p for p in self.roster if not is_eval_device(cfg.seed, p[1], cfg.eval_fraction)]
        per_round = cfg.eval_per_round > 0
        self.final_pool = [
            p for p in self.roster if is_final_eval_device(cfg.seed, p[1], cfg.eval_fraction, per_round)
        ]
        final = set(self.final_pool)
        self.round_eval_pool = [
            p for p in self.roster if is_eval_device(cfg.seed, p[1], cfg.eval_fraction) and p not in final
        ]

    @property
    def secret(self) -> bool:
        return isinstance(self.rng, secrets.SystemRandom)

    @property
    def sample_rate(self) -> float:
        """q: the chance that a training device takes part in a round."""
        return self.cfg.sample_rate(len(self.train_pool))

    def train(self) -> list[Pair]:
        """This round's training devices: `per-round` of the training pool (or all of it); under
        DP a Poisson sample of rate q (cut, with probability < 1e-15, at `cfg.round_cap()`)."""
        pool = self.train_pool
        if not self.cfg.dp:
            return self.rng.sample(pool, min(self.cfg.per_round, len(pool)))
        u = self.rng.random()
        k = int(binom.ppf(u, len(pool), self.sample_rate)) if self.sample_rate < 1 else len(pool)
        return self.rng.sample(pool, min(k, self.cfg.round_cap(), len(pool)))

    def round_evaluation(self) -> list[Pair]:
        """This round's evaluation sample: devices that have not evaluated in this run."""
        fresh = [p for p in self.round_eval_pool if p[1] not in self.evaluated]
        plan = self.rng.sample(fresh, min(self.cfg.eval_per_round, len(fresh)))
        self.evaluated |= {d for _, d in plan}
        return plan

    def final_evaluation(self) -> list[Pair]:
        """Every final-evaluation device that has not evaluated in this run."""
        plan = [p for p in self.final_pool if p[1] not in self.evaluated]
        self.evaluated |= {d for _, d in plan}
        return plan

    def state(self) -> object:
        """What a checkpoint keeps: nothing for a secret sampler (a restart draws afresh)."""
        return None if self.secret else self.rng.getstate()

    def restore(self, state: object) -> None:
        if state is not None and not self.secret:
            self.rng.setstate(state)  # type: ignore[arg-type]


def simulation_roster(nodes: Sequence[int], n_devices: int) -> list[Pair]:
    """The roster a simulation's shards report: device d on node d mod len(nodes) (tests use it
    to build a strategy without asking nodes)."""
    ordered = sorted(nodes)
    return [(ordered[d % len(ordered)], d) for d in range(n_devices)]
