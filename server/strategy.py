"""Flower strategies for fedchurn: Flower's FedAvg / FedAdam with device-level sampling.

Two ways to map devices onto Flower's SuperNodes:

* `slots` (simulation): the federation has as many SuperNodes as devices per round; every round the
  server draws devices by index and tells each node which device to play. Flower's dispatcher
  (which polls every node for every stored message) stays small however large the simulated
  population is.
* `nodes` (deployment, or Flower-style simulation): each node is its own device; the server samples
  node ids. Held-out devices know they are held out and answer a training request with zero
  examples; other devices answer an evaluation request with an empty histogram.
* `stores` (deployment): each SuperNode serves several devices' stores (`client.deploy_client`);
  the server asks every node once which device indices it serves, samples devices from that roster
  and sends each node one message listing its sampled devices. A device or node that fails or
  misses the round's timeout is left out and named; a cohort left with fewer than k devices is
  refused by the key holder, and a round with no usable cohort is recorded as skipped.

Who takes part is drawn from `secrets` (sampling-source "secret", the default and the only choice
for real devices), so nobody who reads the run's public configuration can predict it: that is what
the outsiders' epsilon (amplification by sampling) needs. A simulation may draw from its seed
instead (sampling-source "seeded") to be reproducible. A retried round after a crash draws afresh.

Each held-out device is asked to evaluate at most once per run (and refuses a second request
itself), so the run evaluates on the held-out devices after the last round, and per-round
evaluations take devices that have not evaluated yet.

Crash recovery (`server.checkpoint`): rounds up to `done_rounds` were finished by an earlier
process; Flower's loop still counts them but nothing is sent or aggregated for them.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedchurn.client.deploy_client import BLOBS_KEY, COHORTS_KEY, DEVICES_KEY, ROUND_SEEDS_KEY
from fedchurn.client.feature_mean import mean_from_sum
from fedchurn.client.flower_app import (
    DEVICE_KEY,
    FEATURE_MEAN_ACTION,
    INPUT_OFFSET_KEY,
    PARAMS_KEY,
    ROUND_ID_KEY,
    SUMMARY_KEY,
    SUMMARY_RECORD,
    UPLOAD_KEY,
    UPLOAD_RECORD,
)
from fedchurn.server.secure_rounds import KeyHolderClient, SecureRounds
from fedchurn.shared.evaluation import histogram_length, metrics_from_histogram
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.model_format import fold_input_offset
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig, is_eval_device, is_final_eval_device, round_seed


@dataclass
class RoundStats:
    """What the last round did, for the run's records (never per-device values)."""

    sampled: int = 0
    received: int = 0
    trained: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)
    bytes_received: int = 0
    started: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)
    upload_bytes: int = 0  # protected uploads alone (the wire format's bytes)
    eval_bytes: int = 0
    noise_std: float | None = None
    epsilon: float | None = None  # against outsiders (amplified by secret sampling)
    epsilon_aggregator: float | None = None  # against the aggregator (no amplification)
    out_of_range: int = 0  # coordinates of unmasked sums beyond what honest devices can produce
    norm_clipped: int = 0  # cohorts whose unmasked sum's norm was cut to the honest bound
    skip_reason: str | None = None  # set when the round left the model unchanged


EVAL_COHORTS = 100_000  # evaluation cohort ids start here, apart from training cohorts
STATS_COHORTS = 200_000  # and feature-mean cohorts here


def reply_bytes(msg: Message) -> int:
    """Protobuf body size of a reply's content (what Flower sends, before HTTP framing)."""
    return int(recorddict_to_proto(msg.content).ByteSize())


class ChurnFedAvg(FedAvg):
    """FedAvg with device-level sampling; configure with `setup` after construction.

    (Flower's FedOpt family calls `super().__init__` with FedAvg's own arguments, so the
    fedchurn-specific settings cannot be constructor arguments of a shared base.)
    """

    def setup(
        self,
        cfg: RunConfig,
        nodes: list[int],
        roster: list[tuple[int, int]] | None = None,
        keyholder: KeyHolderClient | None = None,
        keyholder_key: Path | None = None,
        keyholder_state: Path | None = None,
    ) -> None:
        """`roster`: (node, device index) pairs (stores sampling); `keyholder`: a deployed key
        holder, or `keyholder_key` (and `keyholder_state`): an in-process one (see SecureRounds)."""
        self.cfg = cfg
        self.nodes = sorted(nodes)
        if cfg.sampling_source not in ("secret", "seeded"):
            raise ValueError(f"sampling-source must be secret or seeded, got {cfg.sampling_source!r}")
        self.rng: random.Random = (
            random.Random(cfg.seed) if cfg.sampling_source == "seeded" else secrets.SystemRandom()
        )
        self.evaluated: set[int] = set()  # devices (slots, stores) or nodes asked to evaluate
        self.stats = RoundStats()
        self.current: np.ndarray | None = None
        self._cohort_of: dict[int, int] = {}
        self._device_cohort: dict[tuple[int, int], int] = {}
        self.done_rounds = 0  # finished before a restart: skipped by Flower's loop
        self.attempts: Callable[[int, str], int] | None = None  # fresh round ids (crash recovery)
        self.on_contact: Callable[[], None] | None = None  # called before the key holder is asked
        self.on_round_start: Callable[[int], None] | None = None  # a round's messages are about to leave
        self.round_id = 0
        self.offset: np.ndarray | None = None  # centre-features: the measured feature mean
        if cfg.sampling == "stores":
            if cfg.protection == "plaintext":
                raise ValueError("stores sampling serves real devices: plaintext mode is not allowed")
            self.roster = sorted(roster or [])
            self.train_pool_s = [
                p for p in self.roster if not is_eval_device(cfg.seed, p[1], cfg.eval_fraction)
            ]
            self.eval_pool_s = [p for p in self.roster if is_eval_device(cfg.seed, p[1], cfg.eval_fraction)]
            n_train = len(self.train_pool_s)
        elif cfg.sampling == "slots":
            pool = range(cfg.devices)
            self.train_pool = [d for d in pool if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
            self.eval_pool = [d for d in pool if is_eval_device(cfg.seed, d, cfg.eval_fraction)]
            n_train = len(self.train_pool)
        elif cfg.sampling == "nodes":
            n_train = round(len(self.nodes) * (1 - cfg.eval_fraction))
        else:
            raise ValueError(f"unknown sampling {cfg.sampling!r}: use slots, nodes or stores")
        self.secure: SecureRounds | None = None
        if cfg.protection != "plaintext":
            self.secure = SecureRounds(cfg, n_train, keyholder, keyholder_key, keyholder_state)

    # -- crash recovery -------------------------------------------------------------------------
    def _new_round_id(self, server_round: int, kind: str) -> int:
        return self.attempts(server_round, kind) if self.attempts else server_round

    def state(self) -> tuple[object, dict[str, dict[str, np.ndarray]] | None]:
        """(sampling RNG state, server optimiser moments) for a checkpoint. A secret sampler has no
        state to keep: a restarted run draws afresh (also for a retried round)."""
        return self._rng_state(), None

    def _rng_state(self) -> object:
        return None if isinstance(self.rng, secrets.SystemRandom) else self.rng.getstate()

    def restore(self, rng_state: object, optimizer: dict[str, dict[str, np.ndarray]] | None) -> None:
        if rng_state is not None and not isinstance(self.rng, secrets.SystemRandom):
            self.rng.setstate(rng_state)  # type: ignore[arg-type]

    # -- planning: which node plays which device ------------------------------------------
    def _plan(self, devices: list[int] | None, k: int) -> list[tuple[int, int]]:
        """(node, device) pairs; device -1 means "the node's own device"."""
        if self.cfg.sampling == "slots":
            assert devices is not None
            return list(zip(self.nodes, devices, strict=False))
        return [(n, -1) for n in self.rng.sample(self.nodes, min(k, len(self.nodes)))]

    def _train_plan(self) -> list[tuple[int, int]]:
        """This round's training draw: (node, device) pairs from the training pool (stores, slots)
        or sampled nodes playing their own device."""
        if self.cfg.sampling == "stores":
            return self.rng.sample(self.train_pool_s, min(self.cfg.per_round, len(self.train_pool_s)))
        k = min(self.cfg.per_round, len(self.nodes))
        devices = (
            self.rng.sample(self.train_pool, min(k, len(self.train_pool)))
            if self.cfg.sampling == "slots"
            else None
        )
        return self._plan(devices, k)

    def _messages(
        self,
        plan: list[tuple[int, int]],
        arrays: ArrayRecord,
        config: ConfigRecord,
        kind: str,
        cohort_base: int = 0,
        params: ProtectionParams | None = None,
    ) -> list[Message]:
        """One message per (node, device); in protected modes each carries its cohort's parameters."""
        out = []
        server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
        n_cohorts = self.secure.cohorts(len(plan), params) if self.secure and params else 1
        for i, (node, device) in enumerate(plan):
            extra: dict[str, Any] = {DEVICE_KEY: device}
            if self.secure is not None and params is not None:
                cohort = cohort_base + i % n_cohorts
                self._cohort_of[node] = cohort
                extra.update(self.secure.message_config(params, server_round, cohort))
                if self.attempts is not None:
                    extra[ROUND_ID_KEY] = self.round_id
            cfg = ConfigRecord({**dict(config.items()), **extra})
            out.append(
                Message(
                    RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg}),
                    dst_node_id=node,
                    message_type=kind,
                )
            )
        return out

    def _store_messages(
        self,
        plan: list[tuple[int, int]],
        arrays: ArrayRecord,
        config: ConfigRecord,
        kind: str,
        cohort_base: int,
        params: ProtectionParams,
    ) -> list[Message]:
        """Stores sampling: one message per node listing its sampled devices and their cohorts."""
        assert self.secure is not None
        server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
        n_cohorts = self.secure.cohorts(len(plan), params)
        self._device_cohort = {}
        per_node: dict[int, list[tuple[int, int]]] = {}
        for i, (node, device) in enumerate(plan):
            cohort = cohort_base + i % n_cohorts
            self._device_cohort[(node, device)] = cohort
            per_node.setdefault(node, []).append((device, cohort))
        out = []
        for node, items in sorted(per_node.items()):
            shared = self.secure.message_config(params, server_round, items[0][1])
            shared[ROUND_ID_KEY] = self.round_id
            shared[DEVICES_KEY] = [d for d, _ in items]
            shared[COHORTS_KEY] = [c for _, c in items]
            shared[ROUND_SEEDS_KEY] = [round_seed(self.cfg.seed, server_round, c) for _, c in items]
            cfg = ConfigRecord({**dict(config.items()), **shared})
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            out.append(Message(content, dst_node_id=node, message_type=kind))
        return out

    def _store_uploads(
        self, replies: list[Message], train: bool = True
    ) -> dict[int, list[tuple[str, bytes]]]:
        """Stores sampling: uploads by cohort; devices without an upload are named as left out."""
        by_cohort: dict[int, list[tuple[str, bytes]]] = {}
        arrived: set[tuple[int, int]] = set()
        s = self.stats
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                s.refused.append(
                    {"device": f"node {node}", "reason": f"client error: {(msg.error.reason or '')[:500]}"}
                )
                continue
            if train:
                s.bytes_received += reply_bytes(msg)
            else:
                s.eval_bytes += reply_bytes(msg)
            try:
                rec = msg.content.config_records[UPLOAD_RECORD]
                devices, blobs = rec[DEVICES_KEY], rec[BLOBS_KEY]
                if not isinstance(devices, list) or not isinstance(blobs, list) or len(devices) != len(blobs):
                    raise TypeError("device and upload lists do not match")
            except (KeyError, TypeError) as e:
                s.refused.append({"device": f"node {node}", "reason": f"malformed reply: {e}"})
                continue
            for device, blob in zip(devices, blobs, strict=True):
                key = (node, int(device))  # type: ignore[call-overload]
                name = f"{node}/{device}"
                if key not in self._device_cohort or key in arrived or not isinstance(blob, bytes):
                    s.refused.append({"device": name, "reason": "unexpected or repeated device in reply"})
                    continue
                arrived.add(key)
                by_cohort.setdefault(self._device_cohort[key], []).append((name, blob))
        for node, device in sorted(set(self._device_cohort) - arrived):
            s.refused.append({"device": f"{node}/{device}", "reason": "no upload (failed or timed out)"})
        self._device_cohort = {}  # consumed: an empty evaluation step must not name them again
        return by_cohort

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round <= self.done_rounds:
            return []  # finished before a restart
        self.round_id = self._new_round_id(server_round, "train")
        plan = self._train_plan()
        if self.on_round_start is not None:
            self.on_round_start(server_round)
        config["server-round"] = server_round
        if self.offset is not None:  # stores and slots alike: devices train on centred rows
            config[INPUT_OFFSET_KEY] = [float(v) for v in self.offset]
        self.stats = RoundStats(sampled=len(plan), started=time.time())
        self.current = arrays[PARAMS_KEY].numpy().astype(np.float32)
        if self.cfg.sampling == "stores":
            assert self.secure is not None
            return self._store_messages(plan, arrays, config, MessageType.TRAIN, 0, self.secure.train_params)
        self._cohort_of = {}
        params = self.secure.train_params if self.secure else None
        return self._messages(plan, arrays, config, MessageType.TRAIN, params=params)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if server_round <= self.done_rounds:
            return None, None
        replies = list(replies)
        s = self.stats
        s.received = len(replies)
        if self.secure is not None:
            return self._aggregate_secure(server_round, replies)
        total = np.zeros(0, dtype=np.float64)
        weight = 0.0
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                s.refused.append(
                    {"device": node, "reason": f"client error: {(msg.error.reason or '')[:500]}"}
                )
                continue
            s.bytes_received += reply_bytes(msg)
            try:
                params = msg.content.array_records["arrays"][PARAMS_KEY].numpy().astype(np.float64)
                n = float(msg.content.metric_records["metrics"][self.weighted_by_key])  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as e:
                s.refused.append({"device": node, "reason": f"malformed reply: {e}"})
                continue
            if not np.all(np.isfinite(params)) or not np.isfinite(n) or n < 0:
                s.refused.append({"device": node, "reason": "non-finite parameters or weight"})
                continue
            if n == 0:
                continue  # a held-out device, or one with no labelled day yet
            total = params * n if total.size == 0 else total + params * n
            weight += n
            s.trained += 1
        metrics = MetricRecord({"trained": s.trained, "bytes": s.bytes_received})
        if weight <= 0:
            log(WARNING, "round %d: no device trained; the model is unchanged", server_round)
            return None, metrics
        return ArrayRecord({PARAMS_KEY: Array((total / weight).astype(np.float32))}), metrics

    def _uploads(self, replies: list[Message], train: bool = True) -> dict[int, list[tuple[str, bytes]]]:
        """Protected uploads by cohort; errors and malformed replies are refused and named."""
        by_cohort: dict[int, list[tuple[str, bytes]]] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.stats.refused.append(
                    {"device": str(node), "reason": f"client error: {(msg.error.reason or '')[:500]}"}
                )
                continue
            if train:
                self.stats.bytes_received += reply_bytes(msg)
            else:
                self.stats.eval_bytes += reply_bytes(msg)
            try:
                blob = msg.content.config_records[UPLOAD_RECORD][UPLOAD_KEY]
                if not isinstance(blob, bytes):
                    raise TypeError(f"upload is {type(blob).__name__}, not bytes")
            except (KeyError, TypeError) as e:
                self.stats.refused.append({"device": str(node), "reason": f"malformed reply: {e}"})
                continue
            by_cohort.setdefault(self._cohort_of.get(node, -1), []).append((str(node), blob))
        return by_cohort

    def _uploads_for(self, replies: list[Message], train: bool) -> dict[int, list[tuple[str, bytes]]]:
        if self.cfg.sampling == "stores":
            return self._store_uploads(replies, train)
        return self._uploads(replies, train)

    def _aggregate_secure(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.secure is not None and self.current is not None
        s = self.stats
        uploads = self._uploads_for(replies, True)
        if self.cfg.sampling == "stores":
            s.received = sum(len(v) for v in uploads.values())  # devices, not nodes
        res = self.secure.aggregate(
            self.secure.train_params,
            server_round,
            uploads,
            self.current.size,
            round_id=self.round_id if self.attempts else None,
            on_contact=self.on_contact,
        )
        s.refused += res.refused
        s.trained = res.count
        s.upload_bytes = res.upload_bytes
        s.noise_std = res.noise_std
        s.out_of_range, s.norm_clipped = res.out_of_range, res.norm_clipped
        self._charge()
        metrics = MetricRecord({"trained": res.count, "bytes": s.bytes_received})
        if res.count == 0:
            log(WARNING, "round %d: no cohort was unmasked; the model is unchanged", server_round)
            s.skip_reason = f"no cohort reached k={self.cfg.k_min} valid uploads; model unchanged"
            return None, metrics
        new = self.current + res.mean().astype(np.float32)
        return ArrayRecord({PARAMS_KEY: Array(new.astype(np.float32))}), metrics

    def _final(self, device: int) -> bool:
        """Kept for the final evaluation (all held-out devices unless rounds are evaluated too)."""
        return is_final_eval_device(
            self.cfg.seed, device, self.cfg.eval_fraction, self.cfg.eval_per_round > 0
        )

    def _charge(self) -> None:
        """One more round spent: both epsilons into this round's stats (DP runs only)."""
        assert self.secure is not None
        acc = self.secure.accountant
        if acc.enabled:
            self.stats.epsilon = acc.step(delta=self.cfg.delta)
            self.stats.epsilon_aggregator = acc.epsilon_aggregator(self.cfg.delta)

    def _sum_eval(self, server_round: int, replies: Iterable[Message]) -> np.ndarray | None:
        replies = list(replies)
        if self.secure is None:
            return sum_plain_vectors(replies)
        params = self.secure.eval_params
        res = self.secure.aggregate(
            params,
            server_round,
            self._uploads_for(replies, False),
            histogram_length(self.cfg.horizon),
            round_id=self.round_id if self.attempts else None,
        )
        return res.sum if res.count else None

    # -- centred training (centre-features) ---------------------------------------------------
    def exported(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model as it leaves the server: with the input offset folded into the first bias."""
        if self.offset is None:
            return arrays
        folded = fold_input_offset(arrays[PARAMS_KEY].numpy(), self.offset)
        return ArrayRecord({PARAMS_KEY: Array(folded.astype(np.float32))})

    def measure_feature_mean(self, grid: Grid, timeout: float) -> np.ndarray | None:
        """The training devices' mean scaled features, summed through the secure sum.

        `per_round` training devices are sampled as for a training round and, under DP, the
        accountant is charged one round for it. None when no cohort was unmasked."""
        self.stats = s = RoundStats(started=time.time())
        config = ConfigRecord({"server-round": 0})
        params = self.secure.stats_params if self.secure else None
        kind = f"{MessageType.QUERY}.{FEATURE_MEAN_ACTION}"
        self.round_id = self._new_round_id(0, "stats")
        plan = self._train_plan()
        if self.cfg.sampling == "stores":
            assert params is not None
            msgs = self._store_messages(plan, ArrayRecord(), config, kind, STATS_COHORTS, params)
        else:
            self._cohort_of = {}
            msgs = self._messages(plan, ArrayRecord(), config, kind, STATS_COHORTS, params)
        s.sampled = len(plan)
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        s.received = len(replies)
        if self.secure is None:
            total = sum_plain_vectors(replies, SUMMARY_RECORD, SUMMARY_KEY)
        else:
            assert params is not None
            uploads = self._uploads_for(replies, False)
            if self.cfg.sampling == "stores":
                s.received = sum(len(v) for v in uploads.values())  # devices, not nodes
            res = self.secure.aggregate(
                params,
                0,
                uploads,
                N_FEATURES + 1,
                round_id=self.round_id if self.attempts else None,
                on_contact=self.on_contact,
            )
            s.refused += res.refused
            s.noise_std = res.noise_std
            s.out_of_range, s.norm_clipped = res.out_of_range, res.norm_clipped
            self._charge()
            total = res.sum.copy() if res.count else None
            if total is not None and res.noise_std > 0:
                # Under DP the count coordinate's noise is as large as a cohort's count; divide by
                # the devices summed instead (those without a training day pull the mean to 0).
                total[N_FEATURES] = res.count
        self.offset = None if total is None else mean_from_sum(total)
        s.trained = 0 if total is None else round(float(total[N_FEATURES]))
        return self.offset

    # -- evaluation ---------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round <= self.done_rounds:
            return []
        arrays = self.exported(arrays)
        if self.cfg.sampling == "stores":
            if self.cfg.eval_per_round <= 0 or not self.eval_pool_s:
                return []
            assert self.secure is not None
            config["server-round"] = server_round
            pairs = [p for p in self.eval_pool_s if p[1] not in self.evaluated and not self._final(p[1])]
            plan = self.rng.sample(pairs, min(self.cfg.eval_per_round, len(pairs)))
            self.evaluated |= {d for _, d in plan}
            return self._store_messages(
                plan, arrays, config, MessageType.EVALUATE, EVAL_COHORTS, self.secure.eval_params
            )
        k = min(self.cfg.eval_per_round, len(self.nodes))
        if k <= 0:
            return []
        devices = None
        if self.cfg.sampling == "slots":
            fresh = [d for d in self.eval_pool if d not in self.evaluated and not self._final(d)]
            devices = self.rng.sample(fresh, min(k, len(fresh)))
            self.evaluated |= set(devices)
            if not devices:
                return []
        config["server-round"] = server_round
        self._cohort_of = {}
        plan = self._plan(devices, k)
        if devices is None:  # nodes: every node is its own device
            plan = [(n, d) for n, d in plan if n not in self.evaluated]
            self.evaluated |= {n for n, _ in plan}
        return self._messages(
            plan,
            arrays,
            config,
            MessageType.EVALUATE,
            EVAL_COHORTS,
            self.secure.eval_params if self.secure else None,
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if server_round <= self.done_rounds:
            return None
        summed = self._sum_eval(server_round, replies)
        if summed is None:
            return None
        m = metrics_from_histogram(summed, self.cfg.horizon)
        self.stats.evaluation = m
        return MetricRecord(m)

    def evaluate_all(
        self, grid: Grid, arrays: ArrayRecord, server_round: int, timeout: float
    ) -> dict[str, Any]:
        """Evaluate on every held-out device that has not evaluated in this run (after the last
        round; each device evaluates once per run).

        Batches are as equal as possible, so every cohort reaches the key holder's minimum."""
        arrays = self.exported(arrays)
        config = ConfigRecord({"server-round": server_round})
        total: np.ndarray | None = None
        if self.cfg.sampling == "stores":
            pairs = [p for p in self.eval_pool_s if p[1] not in self.evaluated and self._final(p[1])]
            if not pairs or self.secure is None:
                return {}
            self.evaluated |= {d for _, d in pairs}
            self.round_id = self._new_round_id(server_round, "eval")
            msgs = self._store_messages(
                pairs, arrays, config, MessageType.EVALUATE, EVAL_COHORTS, self.secure.eval_params
            )
            part = self._sum_eval(server_round, grid.send_and_receive(msgs, timeout=timeout))
            return {} if part is None else metrics_from_histogram(part, self.cfg.horizon)
        if self.attempts is not None:
            self.round_id = self._new_round_id(server_round, "eval")
        if self.cfg.sampling == "slots":
            fresh = [d for d in self.eval_pool if d not in self.evaluated and self._final(d)]
            if not fresh:
                return {}
            self.evaluated |= set(fresh)
            n_batches = max(1, -(-len(fresh) // len(self.nodes)))
            batches = np.array_split(np.array(fresh, dtype=np.int64), n_batches)
            plans = [self._plan([int(d) for d in b], len(b)) for b in batches]
        else:
            plans = [[(n, -1) for n in self.nodes if n not in self.evaluated]]
            self.evaluated |= set(self.nodes)
        params = self.secure.eval_params if self.secure else None
        for b, plan in enumerate(plans):
            self._cohort_of = {}
            msgs = self._messages(plan, arrays, config, MessageType.EVALUATE, EVAL_COHORTS + 1000 * b, params)
            part = self._sum_eval(server_round, grid.send_and_receive(msgs, timeout=timeout))
            if part is not None:
                total = part if total is None else total + part
        return {} if total is None else metrics_from_histogram(total, self.cfg.horizon)


def sum_plain_vectors(
    replies: Iterable[Message], record: str = "histogram", key: str = "counts"
) -> np.ndarray | None:
    """Plaintext baseline: the sum of the replies' vectors (histograms or feature summaries)."""
    total: np.ndarray | None = None
    for msg in replies:
        if msg.has_error():
            continue
        try:
            hist = msg.content.array_records[record][key].numpy().astype(np.float64)
        except KeyError:
            continue
        total = hist if total is None else total + hist
    return total


class ChurnFedAdam(FedAdam, ChurnFedAvg):
    """FedAdam's server optimiser on top of ChurnFedAvg's sampling and aggregation."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.eta = self.cfg.server_lr_at(server_round)  # the step Flower's FedAdam takes this round
        return super().configure_train(server_round, arrays, config, grid)

    def state(self) -> tuple[object, dict[str, dict[str, np.ndarray]] | None]:
        moments = {name: dict(d) for name, d in (("m_t", self.m_t), ("v_t", self.v_t)) if d}
        return self._rng_state(), moments or None

    def restore(self, rng_state: object, optimizer: dict[str, dict[str, np.ndarray]] | None) -> None:
        super().restore(rng_state, optimizer)
        if optimizer:
            self.m_t = optimizer.get("m_t")
            self.v_t = optimizer.get("v_t")


def make_strategy(
    cfg: RunConfig,
    nodes: list[int],
    roster: list[tuple[int, int]] | None = None,
    keyholder: KeyHolderClient | None = None,
    keyholder_key: Path | None = None,
    keyholder_state: Path | None = None,
) -> ChurnFedAvg:
    """`fedavg`: weighted averaging; `fedadam`: FedAdam's server optimiser on the averaged update."""
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
    strategy.setup(cfg, nodes, roster, keyholder, keyholder_key, keyholder_state)
    return strategy
