"""Local training on the device: a few epochs over the device's own labelled days.

Only the resulting parameter delta leaves this module (and then only protected).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedchurn.shared.model import ChurnNet, survival_nll
from fedchurn.shared.model_format import DEFAULT_SPEC, ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    max_examples: int = 120  # most recent labelled days used per device and round
    optimizer: str = "sgd"  # sgd keeps gradient scale, so averaging updates ~ large-batch SGD


@dataclass(frozen=True)
class LocalResult:
    params: np.ndarray
    n_examples: int
    loss: float


def local_train(
    params: np.ndarray,
    features: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    spec: ModelSpec = DEFAULT_SPEC,
) -> LocalResult:
    """Train from `params` on (features, time, event) rows; returns the new parameters."""
    n = len(features)
    if n == 0:
        return LocalResult(
            params=np.asarray(params, dtype=np.float32).copy(), n_examples=0, loss=float("nan")
        )
    if n > cfg.max_examples:
        features, time, event = (
            features[-cfg.max_examples :],
            time[-cfg.max_examples :],
            event[-cfg.max_examples :],
        )
        n = cfg.max_examples
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ChurnNet(spec)
    model.set_vector(params)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use sgd or adam")
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    t = torch.from_numpy(np.asarray(time, dtype=np.int64))
    e = torch.from_numpy(np.asarray(event, dtype=bool))
    total = 0.0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for k in range(0, n, cfg.batch_size):
            idx = order[k : k + cfg.batch_size]
            opt.zero_grad()
            loss = survival_nll(model(x[idx]), t[idx], e[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
    return LocalResult(params=model.get_vector(), n_examples=n, loss=total / n)
