"""Flower strategies for fedchurn: Flower's FedAvg / FedAdam with device-level sampling.

Sampling is over *devices* (known from the roll call) with a seeded RNG, so a simulation is
reproducible from its seed even though Flower assigns random node ids. Training samples only
training devices; evaluation messages go only to held-out devices, whose replies are score
histograms summed into quality metrics.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedchurn.client.flower_app import PARAMS_KEY
from fedchurn.shared.evaluation import metrics_from_histogram


@dataclass
class RoundStats:
    """What the last round did, for the run's records (never per-device values)."""

    sampled: int = 0
    received: int = 0
    trained: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)
    bytes_received: int = 0
    started: float = 0.0
    evaluation: dict[str, float] = field(default_factory=dict)


def reply_bytes(msg: Message) -> int:
    """Protobuf body size of a reply's content (what Flower sends, before HTTP framing)."""
    return int(recorddict_to_proto(msg.content).ByteSize())


class ChurnFedAvg(FedAvg):
    """FedAvg with device-level sampling; configure with `setup` after construction.

    (Flower's FedOpt family calls `super().__init__` with FedAvg's own arguments, so the
    fedchurn-specific settings cannot be constructor arguments of a shared base.)
    """

    train_nodes: list[int]
    eval_nodes: list[int]

    def setup(
        self, *, train_nodes: list[int], eval_nodes: list[int], per_round: int, eval_per_round: int, seed: int,
        horizon: int,
    ) -> None:
        self.train_nodes = sorted(train_nodes)
        self.eval_nodes = sorted(eval_nodes)
        self.per_round = per_round
        self.eval_per_round = eval_per_round
        self.horizon = horizon
        self.rng = random.Random(seed)
        self.stats = RoundStats()

    def _messages(self, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, nodes, kind))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.rng.sample(self.train_nodes, min(self.per_round, len(self.train_nodes)))
        config["server-round"] = server_round
        self.stats = RoundStats(sampled=len(nodes), started=time.time())
        return self._messages(nodes, arrays, config, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        s = self.stats
        s.received = len(replies)
        total = np.zeros(0, dtype=np.float64)
        weight = 0.0
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                s.refused.append({"device": node, "reason": f"client error: {msg.error.reason}"})
                continue
            s.bytes_received += reply_bytes(msg)
            try:
                params = msg.content.array_records["arrays"][PARAMS_KEY].numpy().astype(np.float64)
                n = float(msg.content.metric_records["metrics"][self.weighted_by_key])  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as e:
                s.refused.append({"device": node, "reason": f"malformed reply: {e}"})
                continue
            if not np.all(np.isfinite(params)):
                s.refused.append({"device": node, "reason": "non-finite parameters"})
                continue
            if n <= 0:
                continue  # a held-out device: it does not train
            total = params * n if total.size == 0 else total + params * n
            weight += n
            s.trained += 1
        metrics = MetricRecord({"trained": s.trained, "bytes": s.bytes_received})
        if weight <= 0:
            log(WARNING, "round %d: no device trained; the model is unchanged", server_round)
            return None, metrics
        return ArrayRecord({PARAMS_KEY: Array((total / weight).astype(np.float32))}), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.eval_per_round <= 0:
            return []
        nodes = self.rng.sample(self.eval_nodes, min(self.eval_per_round, len(self.eval_nodes)))
        config["server-round"] = server_round
        return self._messages(nodes, arrays, config, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        summed = sum_histograms(replies)
        if summed is None:
            return None
        m = metrics_from_histogram(summed, self.horizon)
        self.stats.evaluation = m
        return MetricRecord(m)  # type: ignore[arg-type]

    def evaluate_all(self, grid: Grid, arrays: ArrayRecord, timeout: float) -> dict[str, float]:
        """Evaluate on every held-out device (before training and after the last round)."""
        config = ConfigRecord({"server-round": 0})
        replies = grid.send_and_receive(self._messages(self.eval_nodes, arrays, config, MessageType.EVALUATE),
                                        timeout=timeout)
        summed = sum_histograms(replies)
        return {} if summed is None else metrics_from_histogram(summed, self.horizon)


def sum_histograms(replies: Iterable[Message]) -> np.ndarray | None:
    total: np.ndarray | None = None
    for msg in replies:
        if msg.has_error():
            continue
        try:
            hist = msg.content.array_records["histogram"]["counts"].numpy().astype(np.float64)
        except KeyError:
            continue
        total = hist if total is None else total + hist
    return total


class ChurnFedAdam(FedAdam, ChurnFedAvg):
    """FedAdam's server optimiser on top of ChurnFedAvg's sampling and aggregation."""


def make_strategy(
    name: str, *, server_lr: float, train_nodes: list[int], eval_nodes: list[int], per_round: int,
    eval_per_round: int, seed: int, horizon: int,
) -> ChurnFedAvg:
    """`fedavg`: weighted averaging; `fedadam`: FedAdam's server optimiser on the averaged update."""
    common: dict[str, Any] = {"min_available_nodes": 0, "min_train_nodes": 0, "min_evaluate_nodes": 0}
    strategy: ChurnFedAvg
    if name == "fedavg":
        strategy = ChurnFedAvg(**common)
    elif name == "fedadam":
        strategy = ChurnFedAdam(eta=server_lr, eta_l=server_lr, **common)
    else:
        raise ValueError(f"unknown strategy {name!r}: use fedavg or fedadam")
    strategy.setup(train_nodes=train_nodes, eval_nodes=eval_nodes, per_round=per_round,
                   eval_per_round=eval_per_round, seed=seed, horizon=horizon)
    return strategy
