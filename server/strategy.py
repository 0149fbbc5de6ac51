"""Flower strategies for fedchurn: Flower's FedAvg / FedAdam over protected cohort sums.

Every node answers for a list of devices (`shared.messages`): a phone for itself, a SuperNode for
its stores, a simulation node for its shard. So there is one way to run a round: the sampler
(`server.sampling`) draws (node, device) pairs, one `RoundTask` per node lists that node's devices
with their cohorts and round seeds, and one reply per node carries one protected upload per device.
Uploads are summed per cohort through the key holder (`server.secure_rounds`); the cohort means
feed Flower's FedAvg or FedAdam step. A device or node that fails or misses the round's timeout is
left out and named; a cohort with fewer than k devices is refused by the key holder, and a round
with no usable cohort is recorded as skipped.

Each held-out device is asked to evaluate at most once per run (and refuses a second request
itself): the run evaluates on the held-out devices after the last round, and per-round
evaluations take devices that have not evaluated yet.

Crash recovery (`server.checkpoint`): rounds up to `done_rounds` were finished by an earlier
process; Flower's loop still counts them but nothing is sent or aggregated for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedchurn.client.feature_mean import mean_from_sum
from fedchurn.server.grid_polling import PromptGrid
from fedchurn.server.round_report import MALFORMED_REPLY, NO_UPLOAD, UNEXPECTED_DEVICE, Refusal, RoundStats
from fedchurn.server.sampling import Pair, Sampler
from fedchurn.server.secure_rounds import CohortSum, KeyHolderClient, RoundSum, SecureRounds
from fedchurn.shared.evaluation import metrics_from_histogram
from fedchurn.shared.messages import PARAMS_KEY, MessageError, NodeReply, Purpose, RoundTask
from fedchurn.shared.model_format import fold_input_offset
from fedchurn.shared.protection import ProtectionParams, task_digest
from fedchurn.shared.run_config import RunConfig, round_seed

__all__ = ["EVAL_COHORTS", "STATS_COHORTS", "ChurnFedAdam", "ChurnFedAvg", "RoundStats", "make_strategy"]

EVAL_COHORTS = 100_000  # evaluation cohort ids start here, apart from training cohorts
STATS_COHORTS = 200_000  # and feature-mean cohorts here
REASON_CHARS = 500  # a node's error text kept in the aggregator's own records
Uploads = dict[int, list[tuple[str, bytes]]]


@dataclass
class _Step:
    """One step's messages in flight (a training round, an evaluation, the feature mean)."""

    acc: RoundSum
    train: bool
    expected: dict[Pair, int] = field(default_factory=dict)  # (node, device) -> cohort
    waiting: dict[int, set[int]] = field(default_factory=dict)  # cohort -> nodes yet to answer
    arrived: set[Pair] = field(default_factory=set)
    replied: set[int] = field(default_factory=set)  # nodes whose reply was taken in


def reply_bytes(msg: Message) -> int:
    """Protobuf body size of a reply's content (what Flower sends, before HTTP framing)."""
    return int(recorddict_to_proto(msg.content).ByteSize()) if msg.has_content() else 0


class ChurnFedAvg(FedAvg):
    """FedAvg over protected cohort sums; configure with `setup` after construction.

    (Flower's FedOpt family calls `super().__init__` with FedAvg's own arguments, so the
    fedchurn-specific settings cannot be constructor arguments of a shared base.)
    """

    def setup(
        self,
        cfg: RunConfig,
        roster: list[Pair],
        keyholder: KeyHolderClient | None = None,
        keyholder_key: Path | None = None,
        keyholder_state: Path | None = None,
    ) -> None:
        """`roster`: the (node, device) pairs the nodes serve; `keyholder`: a deployed key holder,
        or `keyholder_key` (and `keyholder_state`): an in-process one (see SecureRounds)."""
        self.cfg = cfg
        self.sampler = Sampler(cfg, roster)
        self.stats = RoundStats()
        self.current: np.ndarray | None = None
        self._step: _Step | None = None  # the messages in flight and their sum so far
        self.done_rounds = 0  # finished before a restart: skipped by Flower's loop
        self.attempts: Callable[[int, str], int] | None = None  # fresh round ids (crash recovery)
        self.on_contact: Callable[[], None] | None = None  # called before the key holder is asked
        self.on_round_start: Callable[[int], None] | None = None  # a round's messages are about to leave
        self.round_id = 0
        self.offset: np.ndarray | None = None  # centre-features: the measured feature mean
        n_train = len(self.sampler.train_pool)
        self.secure = SecureRounds(cfg, n_train, keyholder, keyholder_key, keyholder_state)

    @property
    def roster(self) -> list[Pair]:
        return self.sampler.roster

    # -- crash recovery -------------------------------------------------------------------------
    def _new_round_id(self, server_round: int, kind: str) -> int:
        return self.attempts(server_round, kind) if self.attempts else server_round

    def state(self) -> tuple[object, dict[str, dict[str, np.ndarray]] | None]:
        """(sampler state, server optimiser moments) for a checkpoint. A secret sampler keeps no
        state: a restarted run draws afresh (also for a retried round)."""
        return self.sampler.state(), None

    def restore(self, rng_state: object, optimizer: dict[str, dict[str, np.ndarray]] | None) -> None:
        self.sampler.restore(rng_state)

    # -- one message per node, one reply per node ------------------------------------------------
    def _send(
        self,
        grid: Grid | None,
        plan: list[Pair],
        purpose: Purpose,
        params: ProtectionParams,
        server_round: int,
        arrays: ArrayRecord | None,
        n: int,
        cohort_base: int = 0,
    ) -> list[Message]:
        """One `RoundTask` per node for the planned (node, device) pairs, and an open sum for the
        replies, taken in as they arrive when the grid can say so (`listen`). Cohorts are
        consecutive runs of the plan grouped by node: a simulation shard's devices fill whole
        cohorts (closed as soon as that shard answers), phones share cohorts. Nodes are ordered
        by the smallest device they serve in the plan, not by Flower's node id (random per run),
        so the cohorts, and with them the coordinates each device uploads, are the same in every
        run of a seed."""
        first: dict[int, int] = {}
        for node, device in plan:
            first[node] = min(device, first.get(node, device))
        # stable: the draw order within a node
        by_node = sorted(range(len(plan)), key=lambda i: (first[plan[i][0]], plan[i][0]))
        n_cohorts = self.secure.cohorts(len(plan), params, largest=purpose == "evaluate")
        global_params = None if arrays is None else arrays[PARAMS_KEY].numpy().astype(np.float32)
        offset = self.offset if purpose == "train" else None
        step = _Step(
            self.secure.open_round(
                params,
                server_round,
                n,
                task_digest(global_params, offset, self.cfg.digest()),  # what every device computes from
                round_id=self.round_id if self.attempts else None,
                on_contact=self.on_contact,
            ),
            train=purpose == "train",
        )
        per_node: dict[int, list[tuple[int, int]]] = {}
        for rank, i in enumerate(by_node):
            node, device = plan[i]
            cohort = cohort_base + rank * n_cohorts // len(plan)
            step.expected[(node, device)] = cohort
            step.waiting.setdefault(cohort, set()).add(node)
            per_node.setdefault(node, []).append((device, cohort))
        self._step = step
        self.listen(grid)
        out = []
        for node, items in sorted(per_node.items()):
            task = RoundTask(
                purpose=purpose,
                server_round=server_round,
                round_id=self.round_id if self.attempts else server_round,
                model_version=server_round,
                noise_multiplier=params.noise_multiplier,
                devices=tuple(d for d, _ in items),
                cohorts=tuple(c for _, c in items),
                round_seeds=tuple(round_seed(self.cfg.seed, server_round, c) for _, c in items),
                params=global_params,
                keyholder_key=self.secure.key,
                ckks_context=self.secure.ckks_context,
                input_offset=offset,
            )
            out.append(task.to_message(node))
        return out

    def listen(self, grid: Grid | None) -> None:
        """Take replies in as they arrive when the grid can say so (`PromptGrid`): a cohort whose
        nodes have all answered is unmasked while other nodes still work."""
        if isinstance(grid, PromptGrid):
            grid.on_reply = self.receive

    def receive(self, msg: Message) -> None:
        """One node's reply: its uploads into their cohorts; close every cohort it completes.
        Errors, malformed replies, unexpected and repeated devices are named, never summed."""
        step, s = self._step, self.stats
        node = msg.metadata.src_node_id
        if step is None or node in step.replied:
            return  # already taken in (a reply is seen while streaming and again at the end)
        step.replied.add(node)
        t0 = time.perf_counter()
        by_cohort: dict[int, list[tuple[str, bytes]]] = {}
        if msg.has_error():
            reason = (msg.error.reason or "")[:REASON_CHARS]
            s.refused.append(Refusal(f"node {node}", f"client error: {reason}"))
        else:
            if step.train:
                s.bytes_received += reply_bytes(msg)
            else:
                s.eval_bytes += reply_bytes(msg)
            try:
                reply = NodeReply.from_message(msg)
            except MessageError as e:
                s.refused.append(Refusal(f"node {node}", f"{MALFORMED_REPLY}: {e}"))
                reply = NodeReply((), ())
            for device, blob in zip(reply.devices, reply.blobs, strict=True):
                key = (node, device)
                if key not in step.expected or key in step.arrived:
                    s.refused.append(Refusal(f"{node}/{device}", UNEXPECTED_DEVICE))
                    continue
                step.arrived.add(key)
                by_cohort.setdefault(step.expected[key], []).append((f"{node}/{device}", blob))
        for cohort, items in sorted(by_cohort.items()):
            step.acc.add(cohort, items)
        for cohort, nodes in sorted(step.waiting.items()):
            if node in nodes:
                nodes.discard(node)
                if not nodes and cohort in step.acc.open_cohorts:
                    step.acc.close(cohort)
        s.streamed_seconds += time.perf_counter() - t0

    def _finish(self, replies: Iterable[Message]) -> CohortSum:
        """The step's sum once the replies are in: late replies taken in, devices without an
        upload named, every cohort still open closed."""
        for msg in replies:
            self.receive(msg)
        step, self._step = self._step, None
        if step is None:
            return CohortSum(sum=np.zeros(0), coord_count=np.zeros(0))
        for node, device in sorted(set(step.expected) - step.arrived):
            self.stats.refused.append(Refusal(f"{node}/{device}", NO_UPLOAD))
        for cohort in step.acc.open_cohorts:
            step.acc.close(cohort)
        return step.acc.result()

    # -- training ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round <= self.done_rounds:
            return []  # finished before a restart
        self.round_id = self._new_round_id(server_round, "train")
        plan = self.sampler.train()
        if self.on_round_start is not None:
            self.on_round_start(server_round)
        self.stats = RoundStats(sampled=len(plan), started=time.time())
        self.current = arrays[PARAMS_KEY].numpy().astype(np.float32)
        n = self.current.size
        msgs = self._send(grid, plan, "train", self.secure.train_params, server_round, arrays, n)
        self.stats.sent = time.time()
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if server_round <= self.done_rounds:
            return None, None
        assert self.current is not None
        s = self.stats
        t0 = time.time()
        s.wait_seconds = t0 - s.sent
        res = self._finish(replies)
        s.received = res.received
        s.refused += res.refused
        s.trained = res.count
        s.upload_bytes = res.upload_bytes
        s.noise_std = res.noise_std if self.secure.keyholder is not None else None
        s.out_of_range, s.norm_clipped = res.out_of_range, res.norm_clipped
        self._charge()
        s.aggregate_seconds = time.time() - t0
        metrics = MetricRecord({"trained": res.count, "bytes": s.bytes_received})
        if res.count == 0:
            log(WARNING, "round %d: no cohort was unmasked; the model is unchanged", server_round)
            s.skip_reason = f"no cohort reached k={self.cfg.k_min} valid uploads; model unchanged"
            return None, metrics
        new = self.current + res.mean(self.secure.expected_devices).astype(np.float32)
        return ArrayRecord({PARAMS_KEY: Array(new.astype(np.float32))}), metrics

    def _charge(self) -> None:
        """One more round spent: both epsilons into this round's stats (DP runs only)."""
        acc = self.secure.accountant
        if acc.enabled:
            self.stats.epsilon = acc.step(delta=self.cfg.delta)
            self.stats.epsilon_aggregator = acc.epsilon_aggregator(self.cfg.delta)

    # -- centred training (centre-features) ---------------------------------------------------
    def exported(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model as it leaves the server: with the input offset folded into the first bias."""
        if self.offset is None:
            return arrays
        folded = fold_input_offset(arrays[PARAMS_KEY].numpy(), self.offset, self.cfg.model_spec())
        return ArrayRecord({PARAMS_KEY: Array(folded.astype(np.float32))})

    def measure_feature_mean(self, grid: Grid, timeout: float) -> np.ndarray | None:
        """The training devices' mean scaled features, summed through the secure sum.

        `per_round` training devices are sampled as for a training round and, under DP, the
        accountant is charged one round for it. None when no cohort was unmasked."""
        self.stats = s = RoundStats(started=time.time())
        self.round_id = self._new_round_id(0, "stats")
        plan = self.sampler.train()
        params = self.secure.stats_params
        s.sampled = len(plan)
        n_features = self.cfg.model_spec().n_features
        msgs = self._send(grid, plan, "stats", params, 0, None, n_features + 1, STATS_COHORTS)
        res = self._finish(grid.send_and_receive(msgs, timeout=timeout))
        s.received = res.received
        s.refused += res.refused
        s.noise_std = res.noise_std if self.secure.keyholder is not None else None
        s.out_of_range, s.norm_clipped = res.out_of_range, res.norm_clipped
        self._charge()
        total = res.sum.copy() if res.count else None
        if total is not None and res.noise_std > 0:
            # Under DP the count coordinate's noise is as large as a cohort's count; divide by
            # the expected devices instead (those without a training day pull the mean to 0).
            total[n_features] = self.secure.expected_devices or res.count
        self.offset = None if total is None else mean_from_sum(total)
        s.trained = 0 if total is None else round(float(total[n_features]))
        return self.offset

    # -- evaluation ---------------------------------------------------------------------------
    def _sum_eval(self, replies: Iterable[Message]) -> np.ndarray | None:
        res = self._finish(replies)
        return res.sum if res.count else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round <= self.done_rounds or self.cfg.eval_per_round <= 0:
            return []
        plan = self.sampler.round_evaluation()
        if not plan:
            return []
        msgs = self._send(grid, plan, "evaluate", *self._eval_args(server_round, arrays), EVAL_COHORTS)
        return msgs

    def _eval_args(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[ProtectionParams, int, ArrayRecord, int]:
        return self.secure.eval_params, server_round, self.exported(arrays), self.cfg.eval_length

    def _metrics(self, summed: np.ndarray) -> dict[str, Any]:
        cfg = self.cfg
        return metrics_from_histogram(summed, cfg.eval_outcomes, cfg.eval_bins, noised=cfg.eval_noise > 0)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if server_round <= self.done_rounds:
            return None
        summed = self._sum_eval(replies)
        if summed is None:
            return None
        m = self._metrics(summed)
        self.stats.evaluation = m
        return MetricRecord({k: v for k, v in m.items() if not isinstance(v, list)})

    def evaluate_all(
        self, grid: Grid, arrays: ArrayRecord, server_round: int, timeout: float
    ) -> dict[str, Any]:
        """Evaluate on every final-evaluation device that has not evaluated in this run (after the
        last round; each device evaluates once per run)."""
        if self.attempts is not None:
            self.round_id = self._new_round_id(server_round, "eval")
        plan = self.sampler.final_evaluation()
        if not plan:
            return {}
        msgs = self._send(grid, plan, "evaluate", *self._eval_args(server_round, arrays), EVAL_COHORTS)
        summed = self._sum_eval(grid.send_and_receive(msgs, timeout=timeout))
        return {} if summed is None else self._metrics(summed)


class ChurnFedAdam(FedAdam, ChurnFedAvg):
    """FedAdam's server optimiser on top of ChurnFedAvg's sampling and aggregation."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.eta = self.cfg.server_lr_at(server_round)  # the step Flower's FedAdam takes this round
        return super().configure_train(server_round, arrays, config, grid)

    def state(self) -> tuple[object, dict[str, dict[str, np.ndarray]] | None]:
        moments = {name: dict(d) for name, d in (("m_t", self.m_t), ("v_t", self.v_t)) if d}
        return self.sampler.state(), moments or None

    def restore(self, rng_state: object, optimizer: dict[str, dict[str, np.ndarray]] | None) -> None:
        super().restore(rng_state, optimizer)
        if optimizer:
            self.m_t = optimizer.get("m_t")
            self.v_t = optimizer.get("v_t")


def make_strategy(
    cfg: RunConfig,
    roster: list[Pair],
    keyholder: KeyHolderClient | None = None,
    keyholder_key: Path | None = None,
    keyholder_state: Path | None = None,
) -> ChurnFedAvg:
    """`fedavg`: the mean of the devices' protected updates; `fedadam`: FedAdam's server optimiser
    on that mean."""
    common: dict[str, Any] = {"min_available_nodes": 0, "min_train_nodes": 0, "min_evaluate_nodes": 0}
    strategy: ChurnFedAvg
    if cfg.strategy == "fedavg":
        strategy = ChurnFedAvg(**common)
    elif cfg.strategy == "fedadam":
        strategy = ChurnFedAdam(
            eta=cfg.server_lr, eta_l=cfg.server_lr, beta_2=cfg.server_beta2, tau=cfg.server_tau, **common
        )
    else:
        raise ValueError(f"unknown strategy {cfg.strategy!r}: use fedavg or fedadam")
    strategy.setup(cfg, roster, keyholder, keyholder_key, keyholder_state)
    return strategy
