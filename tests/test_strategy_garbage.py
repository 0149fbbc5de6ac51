"""A device that sends garbage is refused, named in the audit log, and the model moves only by the
honest devices' protected updates (issue 8, item 4).

Real Flower messages through the real strategy: `configure_train` builds the round's messages,
honest devices answer with `client.flower_app.protected_train_upload`, two devices answer with
garbage and one with a tampered copy of an honest upload; `aggregate_train` and the round recorder
do the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedchurn.client.flower_app import (
    DEVICE_KEY,
    PARAMS_KEY,
    UPLOAD_KEY,
    UPLOAD_RECORD,
    protected_train_upload,
)
from fedchurn.server.app import round_recorder
from fedchurn.server.audit import AuditStore
from fedchurn.server.run_audit import RunAudit
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.model_format import init_params
from fedchurn.shared.run_config import RunConfig

NODES = list(range(101, 115))  # 14 slots: 11 honest, 3 misbehaving
GARBAGE = {101: os.urandom(780), 102: b"\x00" * 20}


pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _reply(msg: Message, blob: bytes) -> Message:
    return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)


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
        audit_db=url,
    )
    strategy = make_strategy(cfg, NODES)
    assert strategy.secure is not None
    audit = RunAudit(cfg, strategy.secure.train_params, strategy.secure.dp_record())
    start = init_params(0)
    msgs = list(strategy.configure_train(1, ArrayRecord({PARAMS_KEY: Array(start)}), ConfigRecord(), None))  # type: ignore[arg-type]
    assert len(msgs) == len(NODES)

    rng = np.random.default_rng(3)
    replies, honest = [], []
    for msg in msgs:
        node = msg.metadata.dst_node_id
        conf = msg.content.config_records[strategy.configrecord_key]
        delta = rng.normal(0, 0.004, start.size).astype(np.float32)
        blob = protected_train_upload(cfg, conf, start, start + delta, int(conf[DEVICE_KEY]))  # type: ignore[arg-type]
        if node in GARBAGE:
            blob = GARBAGE[node]
        elif node == 103:  # tampered in transit: one payload byte flipped
            blob = blob[:-1] + bytes([blob[-1] ^ 0x01])
        else:
            honest.append(delta)
        replies.append(_reply(msg, blob))

    arrays, _ = strategy.aggregate_train(1, replies)
    refused = {r["device"]: r["reason"] for r in strategy.stats.refused}
    assert set(refused) == {"101", "102", "103"}, refused
    assert strategy.stats.trained == len(NODES) - 3

    # The model moved by the honest devices' mean update, within quantisation error.
    assert arrays is not None
    moved = arrays[PARAMS_KEY].numpy() - start
    expected = np.mean(honest, axis=0)
    covered = moved != 0
    assert covered.sum() > 100  # the coordinates this round's cohort uploaded (zeros round away)
    step = strategy.secure.train_params.clip_norm
    assert np.abs(moved[covered] - expected[covered]).max() < step / 2

    # The round recorder writes the refusals into the audit log, device by device.
    round_recorder(cfg, strategy, None, audit, time.time())(1, arrays)
    rounds = AuditStore(url).list_rounds(audit.run_id).items
    assert len(rounds) == 1
    named = {r["device"]: r["reason"] for r in rounds[0].refused}
    assert set(named) == {"101", "102", "103"}
    assert all(reason for reason in named.values())
