"""The one message protocol (`shared.messages`), for every kind of node (issue 20).

Codec: a `RoundTask` / `NodeReply` survives Flower's own serialisation unchanged, and a malformed
one is refused with an error naming the key. Nodes: the same ClientApp answers a phone (a node
serving one device store), a deployed SuperNode serving many stores, and a simulation shard of
many devices; each answers one message per round with one protected upload per device it was
asked for, and nothing else.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common.serde import message_from_proto, message_to_proto
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from inprocess_grid import InProcessGrid, device_pins, simulation_grid

from fedchurn.client import deploy_client
from fedchurn.client.deploy_client import list_stores
from fedchurn.server.deploy import population_stores
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.strategy import ChurnFedAvg, make_strategy
from fedchurn.shared.feature_spec import BASE_FEATURES
from fedchurn.shared.messages import (
    K_COHORTS,
    K_DEVICES,
    K_NOISE,
    K_SEEDS,
    MAX_INDEX,
    PARAMS_KEY,
    PARAMS_RECORD,
    REPLY_RECORD,
    TASK_RECORD,
    MessageError,
    NodeReply,
    Purpose,
    RosterReply,
    RoundTask,
    group_by_node,
)
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig

N_PARAMS = DEFAULT_SPEC.n_params
pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _wire(msg: Message) -> Message:
    """The message as the other side receives it: through Flower's protobuf serialisation."""
    return message_from_proto(message_to_proto(msg))


@st.composite
def round_tasks(draw: st.DrawFn) -> RoundTask:
    purpose: Purpose = draw(st.sampled_from(["train", "evaluate", "stats"]))
    devices = draw(st.lists(st.integers(0, MAX_INDEX), max_size=40, unique=True))
    n = len(devices)
    params = None
    if purpose != "stats":
        params = draw(arrays(np.float32, N_PARAMS, elements=st.floats(-4, 4, width=32)))
    offset = draw(st.none() | arrays(np.float64, BASE_FEATURES, elements=st.floats(-3, 3)))
    return RoundTask(
        purpose=purpose,
        server_round=draw(st.integers(0, 2**32 - 1)),
        round_id=draw(st.integers(0, 2**32 - 1)),
        model_version=draw(st.integers(0, 2**32 - 1)),
        noise_multiplier=draw(st.floats(0, 50)),
        devices=tuple(devices),
        cohorts=tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))),
        round_seeds=tuple(draw(st.lists(st.binary(min_size=32, max_size=32), min_size=n, max_size=n))),
        params=params,
        keyholder_key=draw(st.none() | st.binary(min_size=32, max_size=32)),
        ckks_context=draw(st.none() | st.binary(min_size=1, max_size=64)),
        input_offset=offset,
    )


@settings(max_examples=60, deadline=None)
@given(round_tasks(), st.integers(1, 2**40))
def test_a_round_task_survives_flowers_wire(task: RoundTask, node: int) -> None:
    msg = task.to_message(node)
    assert msg.metadata.dst_node_id == node
    got = RoundTask.from_message(_wire(msg), N_PARAMS, BASE_FEATURES)
    for name in ("purpose", "server_round", "round_id", "model_version", "noise_multiplier", "devices"):
        assert getattr(got, name) == getattr(task, name), name
    assert got.cohorts == task.cohorts and got.round_seeds == task.round_seeds
    assert got.keyholder_key == task.keyholder_key and got.ckks_context == task.ckks_context
    for name in ("params", "input_offset"):
        want, have = getattr(task, name), getattr(got, name)
        assert (want is None) == (have is None), name
        if want is not None:
            np.testing.assert_array_equal(have, want)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, MAX_INDEX), st.binary(max_size=900)), max_size=30))
def test_a_node_reply_survives_flowers_wire(items: list[tuple[int, bytes]]) -> None:
    task = RoundTask("stats", 1, 1, 1, 0.0, (), (), ())
    reply = NodeReply(tuple(d for d, _ in items), tuple(b for _, b in items))
    got = NodeReply.from_message(_wire(reply.to_message(task.to_message(7))))
    assert got == reply


def _train_task(n: int = 3) -> RoundTask:
    return RoundTask(
        "train",
        4,
        4,
        4,
        0.0,
        tuple(range(n)),
        (0,) * n,
        (b"\x01" * 32,) * n,
        params=init_params(0),
    )


def _set(msg: Message, key: str, value: Any) -> Message:
    msg.content.config_records[TASK_RECORD][key] = value
    return msg


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        (K_DEVICES, [1, 2, -3], K_DEVICES),
        (K_DEVICES, [1, 1, 2], "listed twice"),
        (K_COHORTS, [0, 0], "same length"),
        (K_SEEDS, [b"short", b"\x01" * 32, b"\x01" * 32], "32 bytes"),
        (K_NOISE, "a lot", K_NOISE),
        (K_NOISE, float("nan"), "noise multiplier"),
    ],
)
def test_a_malformed_task_is_refused_naming_the_key(key: str, value: Any, named: str) -> None:
    msg = _set(_train_task().to_message(3), key, value)
    with pytest.raises(MessageError, match=named):
        RoundTask.from_message(msg, N_PARAMS, BASE_FEATURES)


def test_a_task_without_usable_parameters_is_refused() -> None:
    msg = _train_task().to_message(3)
    del msg.content.config_records[TASK_RECORD][K_DEVICES]
    with pytest.raises(MessageError, match=f"lacks '{K_DEVICES}'"):
        RoundTask.from_message(msg, N_PARAMS, BASE_FEATURES)
    msg = _train_task().to_message(3)
    bad = init_params(0)
    bad[5] = np.inf
    msg.content.array_records[PARAMS_RECORD] = ArrayRecord({PARAMS_KEY: Array(bad)})
    with pytest.raises(MessageError, match="finite"):
        RoundTask.from_message(msg, N_PARAMS, BASE_FEATURES)
    msg = _train_task().to_message(3)
    del msg.content.array_records[PARAMS_RECORD]
    with pytest.raises(MessageError, match="global parameters"):
        RoundTask.from_message(msg, N_PARAMS, BASE_FEATURES)


def test_a_malformed_reply_is_refused_naming_the_key() -> None:
    query = _train_task().to_message(3)
    reply = NodeReply((1, 2), (b"a", b"b")).to_message(query)
    reply.content.config_records[REPLY_RECORD]["blobs"] = [b"a"]
    with pytest.raises(MessageError, match="2 devices but 1 uploads"):
        NodeReply.from_message(reply)
    reply.content.config_records[REPLY_RECORD]["blobs"] = ["a", "b"]
    with pytest.raises(MessageError, match="'blobs' must be a list of bytes"):
        NodeReply.from_message(reply)
    with pytest.raises(MessageError, match="record 'roster'"):
        RosterReply.from_message(reply)


def test_pairs_group_by_node_in_order() -> None:
    assert group_by_node([(2, 5), (1, 3), (2, 1)]) == {2: [5, 1], 1: [3]}


# --- every kind of node answers the same protocol ----------------------------------------------


def _one_round(strategy: ChurnFedAvg, grid: InProcessGrid) -> tuple[list[Message], list[Message]]:
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs)
    assert not grid.errors, grid.errors[:2]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.stats.trained == strategy.stats.sampled
    return msgs, replies


def _check_answers(msgs: list[Message], replies: list[Message], upload_bytes: int) -> int:
    """Each node answered its own message with one upload per device it was asked for."""
    assert len(replies) == len(msgs)
    answered = 0
    for msg, reply in zip(msgs, replies, strict=True):
        task = RoundTask.from_message(msg, N_PARAMS, BASE_FEATURES)
        got = NodeReply.from_message(reply)
        assert reply.metadata.src_node_id == msg.metadata.dst_node_id
        assert got.devices == task.devices
        assert {len(b) for b in got.blobs} == {upload_bytes}
        assert set(reply.content.config_records) == {REPLY_RECORD} and not reply.content.array_records
        answered += len(got.devices)
    return answered


def test_a_seeded_round_does_not_depend_on_node_ids_or_reply_order() -> None:
    """Flower's engine gives each shard a random node id per run, and replies arrive in any
    order: the same seed must still give the same cohorts (so the same uploaded coordinates) and
    the same model, bit for bit. (Before, cohorts followed the node ids' order.)"""
    cfg = RunConfig(devices=300, per_round=90, k_min=5, days=40, sampling_source="seeded")
    outcomes = []
    for nodes, reverse in (([7, 8, 9], False), ([9, 7, 8], True)):
        roster = [(nodes[d % 3], d) for d in range(cfg.devices)]  # partition i on nodes[i]
        strategy = make_strategy(cfg, roster)
        grid = simulation_grid(strategy, nodes, in_given_order=True)
        start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
        msgs = list(strategy.configure_train(1, start, ConfigRecord(), grid))  # type: ignore[arg-type]
        replies = grid.send_and_receive(msgs)
        arrays, _ = strategy.aggregate_train(1, replies[::-1] if reverse else replies)
        assert arrays is not None and strategy.stats.trained == 90
        tasks = [RoundTask.from_message(m, N_PARAMS, BASE_FEATURES) for m in msgs]
        cohorts = {d: c for t in tasks for d, c in zip(t.devices, t.cohorts, strict=True)}
        outcomes.append((cohorts, arrays[PARAMS_KEY].numpy()))
    assert outcomes[0][0] == outcomes[1][0]
    np.testing.assert_array_equal(outcomes[0][1], outcomes[1][1])


def _store_strategy(tmp_path: Path, per_node: int, n_nodes: int) -> tuple[ChurnFedAvg, InProcessGrid]:
    dirs, today = population_stores(tmp_path / "stores", n_nodes, per_node, days=40)
    roster = [(n + 1, d) for n, folder in enumerate(dirs) for d in list_stores(folder)]
    cfg = RunConfig(per_round=len(roster), k_min=1, cohort_size=4, eval_fraction=0.0, days=40)
    strategy = make_strategy(cfg, roster)
    pins = device_pins(strategy)

    def node_config(node: int) -> dict[str, Any]:
        return {"store-dir": str(dirs[node - 1]), "today": today, **pins}

    return strategy, InProcessGrid(deploy_client.app, node_config, cfg.to_flower(), run_id=3)


def test_a_phone_is_a_list_of_one(tmp_path: Path) -> None:
    """Five phones (a node serving one store each): five messages, one upload each."""
    strategy, grid = _store_strategy(tmp_path, per_node=1, n_nodes=5)
    msgs, replies = _one_round(strategy, grid)
    assert _check_answers(msgs, replies, strategy.secure.train_params.upload_bytes(N_PARAMS)) == 5
    assert all(len(RoundTask.from_message(m, N_PARAMS, BASE_FEATURES).devices) == 1 for m in msgs)


def test_a_store_node_answers_for_its_stores(tmp_path: Path) -> None:
    """Two SuperNodes of six stores each: one message per node, six uploads in each reply."""
    strategy, grid = _store_strategy(tmp_path, per_node=6, n_nodes=2)
    msgs, replies = _one_round(strategy, grid)
    assert len(msgs) == 2
    assert _check_answers(msgs, replies, 780) == 12


def test_a_simulation_shard_answers_for_many_devices() -> None:
    """Three simulation shards of a 300-device population, 90 devices per round."""
    nodes = [7, 8, 9]
    cfg = RunConfig(devices=300, per_round=90, k_min=5, days=40)
    strategy = make_strategy(cfg, simulation_roster(nodes, cfg.devices))
    msgs, replies = _one_round(strategy, simulation_grid(strategy, nodes))
    assert len(msgs) == 3
    assert _check_answers(msgs, replies, 780) == 90


@settings(max_examples=30, deadline=None)
@given(st.integers(0, DEFAULT_SPEC.n_params - 1), st.booleans(), st.floats(1e-6, 1.0))
def test_a_tasks_round_seeds_are_bound_to_its_model_offset_and_settings(
    where: int, centred: bool, lr: float
) -> None:
    """The seed a device protects under is the round seed bound to the digest of the model, input
    offset and run settings it was sent: the same task and settings give the same seeds; one
    changed parameter (one float32 step), offset or setting gives other seeds, so the key holder
    never opens seals made from two of them in one cohort."""
    from fedchurn.shared.protection import bind_round_seed, task_digest

    run = RunConfig(lr=lr)
    offset = np.linspace(-1, 1, BASE_FEATURES) if centred else None
    task = replace(_train_task(), input_offset=offset)
    bound = task.bound_round_seeds(run.digest())
    expected = tuple(
        bind_round_seed(s, task_digest(task.params, offset, run.digest())) for s in task.round_seeds
    )
    assert bound == expected and all(len(b) == 32 for b in bound)
    assert RunConfig.from_flower(run.to_flower()).digest() == run.digest()  # what a device parses
    assert task.params is not None
    nudged = task.params.copy()
    nudged[where] = np.nextafter(nudged[where], np.float32(np.inf))
    moved = None if offset is not None else np.zeros(BASE_FEATURES)
    for other, sent in (
        (replace(task, params=nudged), run),
        (replace(task, input_offset=moved), run),
        (task, replace(run, lr=lr * 2)),
    ):
        assert not set(other.bound_round_seeds(sent.digest())) & set(bound)
