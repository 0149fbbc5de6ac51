"""A device that sends garbage is refused, named in the audit log, and the model moves only by the
honest devices' protected updates (issue 8, item 4).

Real Flower messages through the real strategy: `configure_train` builds the round's messages
(14 phones, each node a list of one device), honest devices answer with `client.protect`'s
uploads in the real reply format, two devices answer with garbage and one with a tampered copy of
an honest upload; `aggregate_train` and the round recorder do the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from inprocess_grid import inprocess_keyholder

from fedchurn.client.protect import protect_batch
from fedchurn.server.app import round_recorder
from fedchurn.server.audit import AuditStore
from fedchurn.server.run_audit import RunAudit
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.messages import PARAMS_KEY, NodeReply, RoundTask
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.protection import select_coordinates
from fedchurn.shared.run_config import RunConfig

NODES = list(range(101, 115))  # 14 phones: 11 honest, 3 misbehaving
ROSTER = [(node, node * 10) for node in NODES]
GARBAGE = {101: os.urandom(780), 102: b"\x00" * 20}


pytestmark = pytest.mark.usefixtures("serverapp_identity")


def test_garbage_and_tampered_uploads_are_refused_named_and_leave_the_sum_to_honest_devices(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    cfg = RunConfig(
        devices=60,
        per_round=len(NODES),
        cohort_size=len(NODES),
        k_min=5,
        strategy="fedavg",
        eval_fraction=0.0,
    )
    strategy = make_strategy(cfg, ROSTER)
    keyholder = inprocess_keyholder(strategy).public()  # the devices' pin
    audit = RunAudit(cfg, url, strategy.secure.train_params, strategy.secure.dp_record())
    start = init_params(0)
    msgs = list(strategy.configure_train(1, ArrayRecord({PARAMS_KEY: Array(start)}), ConfigRecord(), None))  # type: ignore[arg-type]
    assert len(msgs) == len(NODES)
    params = strategy.secure.train_params

    rng = np.random.default_rng(3)
    replies, honest = [], []
    for msg in msgs:
        node = msg.metadata.dst_node_id
        task = RoundTask.from_message(msg, DEFAULT_SPEC.n_params, DEFAULT_SPEC.n_features)
        delta = rng.normal(0, 0.004, start.size).astype(np.float32)
        (blob,) = protect_batch(
            delta[None, :], params, keyholder, 1, task.cohorts, 1, task.bound_round_seeds(cfg.digest()), [rng]
        )
        if node in GARBAGE:
            blob = GARBAGE[node]
        elif node == 103:  # tampered in transit: one byte of the sealed seed flipped
            blob = blob[:40] + bytes([blob[40] ^ 0x01]) + blob[41:]
        else:
            honest.append(delta)
        replies.append(NodeReply(task.devices, (blob,)).to_message(msg))

    arrays, _ = strategy.aggregate_train(1, replies)
    refused = {r.device: r.reason for r in strategy.stats.refused}
    assert set(refused) == {"101/1010", "102/1020", "103/1030"}, refused
    assert strategy.stats.trained == len(NODES) - 3

    # The model moved by the honest devices' mean update: the same on every coordinate the cohort
    # uploaded, up to stochastic rounding (at most one quantisation step per device, so one step
    # in the mean; in practice far less).
    assert arrays is not None
    moved = arrays[PARAMS_KEY].numpy().astype(np.float64) - start
    seed = RoundTask.from_message(msgs[0], DEFAULT_SPEC.n_params, DEFAULT_SPEC.n_features).bound_round_seeds(
        cfg.digest()
    )[0]
    selected = select_coordinates(params, seed, start.size)
    expected = np.clip(
        np.mean(honest, axis=0)[selected], -params.coord_clip(start.size), params.coord_clip(start.size)
    )
    step = 1 / params.scale(start.size)
    err = np.abs(moved[selected] - expected)
    assert err.max() < step and err.mean() < step / 4
    assert not np.any(np.delete(moved, selected))  # nothing else moved

    # The round recorder writes the refusals into the audit log, by reason, without device ids.
    round_recorder(cfg, strategy, lambda report, _: audit.round(report), time.time())(1, arrays)
    rounds = AuditStore(url).list_rounds(audit.run_id).items
    assert len(rounds) == 1
    assert sum(int(r["count"]) for r in rounds[0].refused) == 3
    assert all(r["reason"] for r in rounds[0].refused)
