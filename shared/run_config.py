"""The run configuration of a federated run, read once at the edge (Flower's `run_config`).

Both the ServerApp and the ClientApp parse the same keys into this dataclass; the defaults here
are the ones `[tool.flwr.app.config]` in pyproject.toml declares (a test checks they agree).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    num_server_rounds: int = 3
    devices: int = 50  # simulated devices (= supernodes) when the population is synthetic
    per_round: int = 10  # devices sampled per training round
    eval_per_round: int = 0  # devices sampled for evaluation after each round (0: final only)
    eval_fraction: float = 0.2  # share of devices held out for evaluation
    seed: int = 0
    scenario: str = "default"
    days: int = 120
    horizon: int = 14
    silence_days: int = 14
    activity: str = "sessions"  # comma-separated categories that count as activity
    events_file: str = ""  # a real event log instead of the synthetic population
    local_epochs: int = 3
    batch_size: int = 32
    lr: float = 0.01
    strategy: str = "fedavg"  # fedavg | fedadam
    server_lr: float = 0.05  # FedAdam's eta
    protection: str = "plaintext"
    out_dir: str = ""
    audit_db: str = ""

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

    def activity_categories(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.activity.split(",") if c.strip())


def is_eval_device(seed: int, device: int, fraction: float) -> bool:
    """Held-out membership from (seed, device index): the device, the server-side runner and the
    baselines agree on it without talking. A hash, not randomness: nothing here is secret."""
    h = hashlib.blake2b(f"fedchurn-eval|{seed}|{device}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction
