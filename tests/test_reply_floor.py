"""A node answers no earlier than its provisioner's reply floor after a task arrives, so its reply
time does not show how much data its devices hold (the timing channel of docs/privacy.md: with
150 epochs of batch 1 a helper read row counts from latency, correlation 0.95). The floor's clock
and wait are replaced here by a fake clock that says how long the work took: the test asserts
the node waits exactly the rest of the floor, not that a wall clock agrees."""

from __future__ import annotations

import fcntl
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.config import parse_config_args
from inprocess_grid import InProcessGrid, device_pins, simulation_grid

from fedchurn.client import deploy_client, flower_app
from fedchurn.client.deploy_client import TASK_LOCK_FILE, list_stores
from fedchurn.client.device_config import (
    MAX_LOCAL_STEPS_KEY,
    MAX_REPLY_AFTER,
    MAX_UPLOADS_KEY,
    REPLY_AFTER_KEY,
    REPLY_AFTER_PER_DEVICE_KEY,
    local_steps_cap,
    reply_floor,
)
from fedchurn.deploy_cli import DEFAULT_MAX_LOCAL_STEPS, DEFAULT_REPLY_AFTER, _node_extra
from fedchurn.server.deploy import population_stores
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.keyholder_pin import PinError
from fedchurn.shared.messages import PARAMS_KEY, NodeReply
from fedchurn.shared.model_format import init_params
from fedchurn.shared.run_config import RunConfig

WORK = 0.3  # what the fake clock says each task took
pytestmark = pytest.mark.usefixtures("serverapp_identity")


class FakeClock:
    """Each task reads the clock twice (arrival, answer ready): 0, then WORK later. Records waits."""

    def __init__(self, work: float = WORK) -> None:
        self.work, self.reads, self.waits = work, 0, list[float]()

    def now(self) -> float:
        self.reads += 1
        return 100.0 + (self.work if self.reads % 2 == 0 else 0.0)

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(flower_app, "_clock", fake.now)
    monkeypatch.setattr(flower_app, "_sleep", fake.wait)
    return fake


def _store_grid(
    tmp_path: Path, extra: dict[str, Any], **settings: Any
) -> tuple[InProcessGrid, Any, list[Path]]:
    """Two store nodes of three devices with `extra` in their node configuration."""
    dirs, today = population_stores(tmp_path / "stores", 2, 3, days=40)
    roster = [(n + 1, d) for n, folder in enumerate(dirs) for d in list_stores(folder)]
    cfg = RunConfig(per_round=len(roster), k_min=1, cohort_size=3, eval_fraction=0.0, days=40, **settings)
    strategy = make_strategy(cfg, roster)
    pins = device_pins(strategy)

    def node_config(node: int) -> dict[str, Any]:
        return {"store-dir": str(dirs[node - 1]), "today": today, **pins, **extra}

    return InProcessGrid(deploy_client.app, node_config, cfg.to_flower(), run_id=5), strategy, dirs


def _store_round(tmp_path: Path, extra: dict[str, Any], **settings: Any) -> tuple[InProcessGrid, list[Any]]:
    """One training round of `_store_grid`'s nodes."""
    grid, strategy, _ = _store_grid(tmp_path, extra, **settings)
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    return grid, grid.send_and_receive(msgs)


def test_a_store_node_answers_no_earlier_than_its_reply_floor(tmp_path: Path, clock: FakeClock) -> None:
    grid, replies = _store_round(tmp_path, {REPLY_AFTER_KEY: 5.0, MAX_LOCAL_STEPS_KEY: 64})
    assert not grid.errors, grid.errors[:2]
    assert sum(len(NodeReply.from_message(r).devices) for r in replies) == 6
    assert clock.waits == pytest.approx([5.0 - WORK] * 2)  # each node waited out the rest of its floor


def test_a_refused_task_is_answered_after_the_floor_too(tmp_path: Path, clock: FakeClock) -> None:
    """A node pinned to another key holder refuses the task; its error also waits for the floor
    (how fast a node fails says nothing either)."""
    dirs, today = population_stores(tmp_path / "stores", 1, 3, days=40)
    roster = [(1, d) for d in list_stores(dirs[0])]
    cfg = RunConfig(per_round=3, k_min=1, cohort_size=3, eval_fraction=0.0, days=40)
    strategy, stranger = make_strategy(cfg, roster), make_strategy(cfg, roster)
    pins = device_pins(stranger)
    grid = InProcessGrid(
        deploy_client.app,
        lambda node: {"store-dir": str(dirs[0]), "today": today, **pins, REPLY_AFTER_KEY: 2.0},
        cfg.to_flower(),
        run_id=6,
    )
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    grid.send_and_receive(list(strategy.configure_train(1, start, ConfigRecord(), grid)))  # type: ignore[arg-type]
    assert len(grid.errors) == 1 and "key" in grid.errors[0].lower(), grid.errors
    assert clock.waits == pytest.approx([2.0 - WORK])


def test_without_a_floor_a_node_answers_at_once(clock: FakeClock) -> None:
    """A simulated node (no node configuration of its own) never waits."""
    cfg = RunConfig(devices=60, per_round=20, k_min=5, days=40, sampling_source="seeded")
    strategy = make_strategy(cfg, [(1 + d % 2, d) for d in range(cfg.devices)])
    grid = simulation_grid(strategy, [1, 2])
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    grid.send_and_receive(list(strategy.configure_train(1, start, ConfigRecord(), grid)))  # type: ignore[arg-type]
    assert not grid.errors and clock.reads >= 4 and clock.waits == []


def test_work_longer_than_the_floor_is_answered_when_done_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeClock(work=7.5)
    monkeypatch.setattr(flower_app, "_clock", fake.now)
    monkeypatch.setattr(flower_app, "_sleep", fake.wait)
    with caplog.at_level(logging.WARNING, logger=flower_app.__name__):
        grid, _ = _store_round(tmp_path, {REPLY_AFTER_KEY: 5.0})
    assert not grid.errors and fake.waits == []
    assert f"longer than this node's floor of 5.00 s: raise {REPLY_AFTER_KEY}" in caplog.text


def test_deploy_writes_the_floor_into_the_node_configuration_and_the_node_reads_it() -> None:
    written = _node_extra(today=5, max_uploads=None, reply_after=DEFAULT_REPLY_AFTER)
    assert reply_floor(parse_config_args([f'store-dir="/s" {written}'])) == DEFAULT_REPLY_AFTER
    assert reply_floor(parse_config_args([f'store-dir="/s" {_node_extra(5, None, 0.0)}'])) == 0.0
    assert reply_floor({REPLY_AFTER_KEY: "1.5"}) == 1.5


@pytest.mark.parametrize("bad", [-1, "x", math.nan, math.inf, True, MAX_REPLY_AFTER + 1])
def test_a_malformed_floor_is_refused_naming_the_key_and_where(bad: object) -> None:
    with pytest.raises(PinError, match=f"'{REPLY_AFTER_KEY}' in the node configuration must be a number"):
        reply_floor({REPLY_AFTER_KEY: bad})


def test_a_roster_query_and_messages_no_handler_serves_wait_for_the_floor_too(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Review 9: only tasks waited, so a roster query (or an action Flower refuses before any
    handler) answered at once, beside a running task, and its own slowness showed the task's work."""
    grid, _, _ = _store_grid(tmp_path, {REPLY_AFTER_KEY: 5.0})
    for kind in ("query", "query.zzz", "train.nothing"):
        grid.deliver(Message(RecordDict(), dst_node_id=1, message_type=kind))
    assert clock.waits == pytest.approx([5.0 - WORK] * 3)
    assert any("No query function registered with name 'zzz'" in e for e in grid.errors), grid.errors


def test_a_node_answers_one_message_at_a_time_floor_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a node waits out its floor it still holds its task lock, so a message sent beside
    it runs after it, not alongside (each message runs in its own process on a SuperNode)."""
    grid, _, dirs = _store_grid(tmp_path, {REPLY_AFTER_KEY: 5.0})
    lock = dirs[0] / TASK_LOCK_FILE
    tried: list[float] = []

    def wait(seconds: float) -> None:
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # another process's attempt, in effect
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        tried.append(seconds)

    fake = FakeClock()
    monkeypatch.setattr(flower_app, "_clock", fake.now)
    monkeypatch.setattr(flower_app, "_sleep", wait)
    grid.deliver(Message(RecordDict(), dst_node_id=1, message_type="query"))
    assert tried == pytest.approx([5.0 - WORK])
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once the reply is out
    finally:
        os.close(fd)


def test_a_training_task_above_the_nodes_step_cap_is_refused_before_a_store_is_read(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator picks epochs and batch size; 150 epochs of batch 1 made one task take 2.4 s
    (and its time followed the device's rows). A node refuses work above its `max-local-steps`."""

    def no_store(*_: Any) -> None:
        raise AssertionError("a store was opened for a task the node refuses")

    monkeypatch.setattr(deploy_client, "EventStore", no_store)
    grid, _ = _store_round(tmp_path, {MAX_LOCAL_STEPS_KEY: 64}, local_epochs=150, batch_size=1)
    assert len(grid.errors) == 2 and all(
        f"up to 18000 local steps per device (150 epochs of batch 1), above this node's "
        f"{MAX_LOCAL_STEPS_KEY} of 64" in e
        for e in grid.errors
    ), grid.errors


def test_deploy_pins_a_step_cap_the_node_reads() -> None:
    written = _node_extra(5, None, DEFAULT_REPLY_AFTER, DEFAULT_MAX_LOCAL_STEPS)
    assert local_steps_cap(parse_config_args([f'store-dir="/s" {written}'])) == DEFAULT_MAX_LOCAL_STEPS
    assert local_steps_cap({}) is None
    with pytest.raises(PinError, match=f"'{MAX_LOCAL_STEPS_KEY}' in the node configuration must be a whole"):
        local_steps_cap({MAX_LOCAL_STEPS_KEY: "0"})


def test_a_task_listing_more_devices_waits_longer(tmp_path: Path, clock: FakeClock) -> None:
    """A folder of many stores works in proportion to the devices a task lists, past any fixed
    floor: 400 devices at the step cap took 3.3-3.7 s against a 2 s floor, by then following their
    data (review 10). The floor grows by the node's per-device share of the (public) list."""
    grid, replies = _store_round(tmp_path, {REPLY_AFTER_KEY: 5.0, REPLY_AFTER_PER_DEVICE_KEY: 0.5})
    assert not grid.errors, grid.errors[:2]
    assert sum(len(NodeReply.from_message(r).devices) for r in replies) == 6  # three per node
    assert clock.waits == pytest.approx([5.0 + 3 * 0.5 - WORK] * 2)


def test_a_device_the_ledger_refuses_costs_no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node read every listed store before its ledger said which devices may answer, so a task
    naming devices that had spent their upload budget still cost work in proportion to their
    data (200 heavy stores: 0.98-1.20 s against 0.50 s for light ones, nobody answering: review
    10). The ledger decides first; only granted devices' stores are opened."""
    from fedchurn.client.store import EventStore

    opened: list[str] = []

    def recording(path: Any) -> Any:
        opened.append(Path(path).name)
        return EventStore(path)

    monkeypatch.setattr(deploy_client, "EventStore", recording)
    grid, strategy, _ = _store_grid(tmp_path, {MAX_UPLOADS_KEY: 1})
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    for server_round in (1, 2):
        opened.clear()
        msgs = list(strategy.configure_train(server_round, start, ConfigRecord(), grid))
        replies = grid.send_and_receive(msgs)
        assert not grid.errors, grid.errors[:2]
        answered = sum(len(NodeReply.from_message(r).devices) for r in replies)
        assert (answered, len(opened)) == ((6, 6) if server_round == 1 else (0, 0)), (server_round, opened)


def test_the_client_apps_pickle_as_the_simulation_engine_pickles_them() -> None:
    """Ray pickles the ClientApp, its nested functions by value with every global they name: a
    context variable named by the lifespan once stopped every simulated node (no device trained)."""
    from ray import cloudpickle

    from fedchurn.simulations.flower_client import app as simulation_app

    for app in (deploy_client.app, simulation_app):
        assert cloudpickle.loads(cloudpickle.dumps(app)) is not None  # type: ignore[no-untyped-call]


def test_an_unreadable_store_leaves_its_device_out_and_its_name_on_the_node(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One store that could not be read (here: not a database) failed the node's whole task, its
    healthy devices included, and Flower sent the exception's text to the aggregator: for a store
    of another schema that text named the store file, the user's name the HMAC index hides
    (review 11). Now that device alone is left out, and only the error's type is logged."""
    grid, strategy, dirs = _store_grid(tmp_path, {})
    broken = sorted(dirs[0].glob("*.sqlite"))[0]
    broken.write_bytes(b"not a database" * 100)
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    with caplog.at_level(logging.ERROR):
        replies = grid.send_and_receive(list(strategy.configure_train(1, start, ConfigRecord(), grid)))
    assert not grid.errors, grid.errors
    assert sum(len(NodeReply.from_message(r).devices) for r in replies) == 5
    assert "could not be read (DatabaseError)" in caplog.text and broken.stem not in caplog.text


def test_an_error_once_the_devices_data_is_read_says_nothing_about_it(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flower sends an exception's type and text to the aggregator. Features are built over one
    range of days for all of a task's devices, from the earliest account's first day, so one old
    account made the allocation fail with "Unable to allocate 354. MiB for an array with shape
    (200, 3651, 127)": 3,651 was that account's age in days (review 12). Every failure after the
    devices' data is read now sends one fixed error."""

    def out_of_memory(*_: Any, **__: Any) -> Any:
        raise MemoryError("Unable to allocate 354. MiB for an array with shape (200, 3651, 127)")

    monkeypatch.setattr(deploy_client, "prepare_devices", out_of_memory)
    grid, _ = _store_round(tmp_path, {REPLY_AFTER_KEY: 2.0})
    assert grid.errors == ["DeviceWorkError: this node's devices could not answer the task"] * 2, grid.errors
    assert clock.waits == pytest.approx([2.0 - WORK] * 2)  # and after the floor, as any answer
