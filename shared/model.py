"""The churn model in torch, for training. Same layout as `shared.model_format` (numpy)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedchurn.shared.model_format import DEFAULT_SPEC, ModelSpec, flatten, unflatten

__all__ = [
    "ChurnNet",
    "survival_nll",
    "survival_nll_rows",
]


class ChurnNet(nn.Module):
    """features -> hazard logits for days 1..H (a discrete-time survival model)."""

    scale: torch.Tensor

    def __init__(self, spec: ModelSpec = DEFAULT_SPEC) -> None:
        super().__init__()
        self.spec = spec
        self.hidden = nn.Linear(spec.n_features, spec.hidden)
        self.out = nn.Linear(spec.hidden, spec.outputs)
        self.register_buffer("scale", torch.from_numpy(spec.input_scale.copy()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a device's full feature vector or the model's prefix, as `model_format.hazards`
        return self.out(torch.relu(self.hidden(x[..., : self.spec.n_features] / self.scale)))

    def get_vector(self) -> np.ndarray:
        return flatten([p.detach().cpu().numpy() for p in self._ordered()])

    def set_vector(self, params: np.ndarray) -> None:
        with torch.no_grad():
            for p, a in zip(self._ordered(), unflatten(params, self.spec), strict=True):
                p.copy_(torch.from_numpy(np.ascontiguousarray(a)))

    def _ordered(self) -> list[torch.Tensor]:
        return [self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias]


def survival_nll(logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of discrete-time survival data.

    `time` in 1..H is the event day, or the last day known event-free when `event` is False.
    """
    return survival_nll_rows(logits, time, event).mean()


def survival_nll_rows(logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Each row's negative log-likelihood (shape `logits.shape[:-1]`); `survival_nll` is its mean."""
    H = logits.shape[-1]
    days = torch.arange(1, H + 1, device=logits.device)
    log_surv = torch.nn.functional.logsigmoid(-logits)  # log(1 - h)
    log_h = torch.nn.functional.logsigmoid(logits)
    t = time.unsqueeze(-1)
    survived = (days < t) | ((days == t) & ~event.unsqueeze(-1))
    happened = (days == t) & event.unsqueeze(-1)
    ll = (log_surv * survived).sum(-1) + (log_h * happened).sum(-1)
    return -ll
