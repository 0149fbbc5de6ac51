"""The Flower ClientApp: one node answers for a list of devices, whatever the node is.

A phone serves itself, a SuperNode serves a folder of device stores (`client.deploy_client`), a
simulation node serves a shard of simulated devices (`simulations.flower_client`): each is a
`DeviceSource`, and `make_client_app(source)` builds the same app around it. Per round the node
gets one `shared.messages.RoundTask` (the global parameters once, and per device its cohort and
round seed) and answers with one `NodeReply`: one protected upload per device, usable by the
server only inside a cohort sum — never events, features or a score. The devices of a task are
trained together (`client.training.train_devices`) and protected together
(`client.protect.protect_batch`); a batch of one is a phone.

What protects an upload is never taken from the aggregator: the key holder's identity comes from
the node's own configuration (`client.device_config`) and the task is checked against it before
any work. The aggregator is not trusted with what a cohort sum may contain either: a device
answers only tasks of its role (a held-out device evaluates, a training device trains and gives
statistics: roles are public), each round once and one evaluation per run, at most `max-uploads`
times if its configuration pins that (`client.contribution_ledger`); it protects its upload under
a round seed bound to the task's model and settings, so the key holder sums one task's uploads;
and whether it answers never depends on its data: without data of its own it sends zeros, and a
vector whose arithmetic diverged becomes zeros rather than an error reply (which the aggregator
reads in the clear). Otherwise a malicious aggregator could fill a cohort of k with one device's
repeated answers, or beside k - 1 devices whose uploads it knows (out of their role, or sent a
model that zeroes them), and read that device's update in the "sum"; or learn from who answered
that a held-out device had churned. A real device's rounding coins come from an OS-seeded
generator (a simulated device's from its seed, so a simulation is reproducible).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Protocol

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedchurn.client.contribution_ledger import ContributionLedger, role_of, scopes_of
from fedchurn.client.device_config import (
    MAX_LOCAL_STEPS_KEY,
    MIN_NOISE_KEY,
    REPLY_AFTER_KEY,
    REPLY_AFTER_PER_DEVICE_KEY,
    local_steps_cap,
    noise_floor,
    reply_floor,
    reply_floor_per_device,
    trusted_keyholder,
    upload_budget,
)
from fedchurn.client.device_data import DeviceData
from fedchurn.client.feature_mean import centre_rows, feature_summary
from fedchurn.client.protect import protect_batch

# At import, not on a task's first use: a deployed node starts each message in a fresh process, and
# torch's ~1.5 s of start-up inside the reply floor left little of it to hide the work (review 11).
from fedchurn.client.training import DeviceRows, TrainConfig, check_train_config, train_devices
from fedchurn.shared.evaluation import device_histogram
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.messages import NodeReply, RosterReply, RoundTask
from fedchurn.shared.model_format import churn_probability
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig, is_eval_device

__all__ = ["DeviceSource", "answer", "make_client_app", "simulated_entropy"]

# Devices protected at once. The encoder's temporaries are several (devices x coordinates) arrays
# of 8-byte values: a simulated node's final evaluation, ~5,000 devices x 2,400 histogram
# coordinates, took ~0.9 GB in one batch (the 100,000-device run peaked above 4 GB), ~0.1 GB per 512.
PROTECT_CHUNK = 512
_LOG = logging.getLogger(__name__)
_clock: Callable[[], float] = time.monotonic  # the reply floor's clock and wait (tests replace them)
_sleep: Callable[[float], None] = time.sleep


class DeviceSource(Protocol):
    """Where a node's devices come from: a simulation shard, a folder of stores, a phone."""

    plaintext_allowed: bool  # only a simulation may run the unprotected baseline

    def roster(self, context: Context, cfg: RunConfig) -> list[int]:
        """The public indices of the devices this node serves."""

    def load(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> dict[int, DeviceData]:
        """The devices' prepared data; a device this node does not serve is left out."""

    def ledger(self, context: Context) -> ContributionLedger:
        """Where the node's devices record the rounds and runs they answered."""

    def coins(self, cfg: RunConfig, device: int, salt: int) -> np.random.Generator | None:
        """A device's stochastic-rounding generator: None (OS-seeded) on a real device."""

    def serves(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> list[int]:
        """Those of `devices` this node serves, in order, known without reading their data."""

    def serialised(self, context: Context) -> AbstractContextManager[None]:
        """Held while the node answers one message, reply floor included: a node serving real
        devices answers one at a time, so nothing it answers meanwhile shows how busy it is."""


def device_seed(cfg: RunConfig, device: int, server_round: int) -> int:
    """The public seed of a device's local shuffling in a round (not secret: it orders rows)."""
    h = hashlib.blake2b(f"fedchurn-train|{cfg.seed}|{device}|{server_round}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


def simulated_entropy(cfg: RunConfig, device: int, salt: int) -> np.random.Generator:
    """A simulated device's rounding coins, seeded so that a simulation is reproducible. Real
    devices never use this: their coins come from an OS-seeded generator."""
    return np.random.default_rng(device_seed(cfg, device, salt))


def keyholder_for(
    node_config: Mapping[str, object], cfg: RunConfig, task: RoundTask
) -> KeyHolderPublic | None:
    """The pinned key holder this node protects with, checked against the aggregator's task before
    any work (None in the plaintext baseline, which protects nothing)."""
    if not cfg.scheme.private:
        return None
    ckks = cfg.scheme.homomorphic
    return trusted_keyholder(node_config, task.keyholder_key, ckks, task.ckks_context if ckks else None)


def _train(cfg: RunConfig, task: RoundTask, data: list[DeviceData], devices: Sequence[int]) -> np.ndarray:
    """Every training device's model delta, trained together (zero for a device without a labelled day)."""
    assert task.params is not None
    rows = []
    for d in data:
        x = d.x if task.input_offset is None else centre_rows(d.x, task.input_offset)
        rows.append(DeviceRows(x, d.time, d.event))
    res = train_devices(
        task.params,
        rows,
        _train_config(cfg),
        seeds=[device_seed(cfg, dev, task.server_round) for dev in devices],
        spec=cfg.model_spec(),
        with_loss=False,  # a local diagnostic the round never uses
    )
    return np.asarray(res.params, dtype=np.float32) - np.asarray(task.params, dtype=np.float32)[None, :]


def _histograms(cfg: RunConfig, task: RoundTask, data: list[DeviceData]) -> np.ndarray:
    """Each held-out device's one-count score histogram of the task's model; zeros for a device
    without a scored day (one that had already churned or was too new) or whose score is not a
    number (a crafted model). Those zeros are sent like any histogram: a device that did not
    answer would tell the aggregator that it had churned."""
    assert task.params is not None
    spec = cfg.model_spec()
    out = np.zeros((len(data), cfg.eval_length))
    held = [i for i, d in enumerate(data) if d.eval_x is not None]
    if held:
        x = np.stack([data[i].eval_x for i in held])  # type: ignore[misc]
        probs = np.atleast_1d(churn_probability(task.params, x, spec))
        for i, p in zip(held, probs, strict=True):
            if np.isfinite(p):
                # Under eval-noise the outcome is only "churned within the horizon" (day 1 stands for it).
                t, event = min(data[i].eval_time, cfg.eval_outcomes), data[i].eval_event
                out[i] = device_histogram(float(p), t, event, cfg.eval_outcomes, cfg.eval_bins)
    return out


def _summaries(cfg: RunConfig, data: list[DeviceData]) -> np.ndarray:
    """Each training device's feature summary (zeros for a device without a labelled day)."""
    n = cfg.model_spec().n_features
    return np.stack([feature_summary(d.x, n) for d in data])


def _in_role(cfg: RunConfig, purpose: str, device: int) -> bool:
    """Held-out devices evaluate and nothing else; training devices never evaluate."""
    return is_eval_device(cfg.seed, device, cfg.eval_fraction) == (purpose == "evaluate")


def _finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows with a non-finite value (a model or learning rate that overflowed the device's
    arithmetic) become zero. Failing instead would send an error reply, which the aggregator reads
    in the clear: a crafted model would learn whether the device's data crossed its threshold."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        vectors = vectors.copy()
        vectors[bad] = 0.0
    return vectors


# The part of the current message's floor that grows with the devices it lists: set by `answer`,
# read by the lifespan around it (both run in the message's one context).
_PER_DEVICE_FLOOR: ContextVar[float] = ContextVar("per_device_floor", default=0.0)


def _extend_the_floor(node_config: Mapping[str, object], n_listed: int) -> None:
    """Lengthen this message's floor by the node's per-device share times the devices the task
    lists (public: the aggregator wrote the list). A folder of many stores works in proportion
    to the devices a task names, so a fixed floor is outgrown: 400 devices at the step cap took
    3.3-3.7 s past a 2 s floor, and by then the time followed their data (review 10)."""
    _PER_DEVICE_FLOOR.set(reply_floor_per_device(node_config) * n_listed)


def _wait_out_the_floor(start: float, floor: float) -> None:
    """Wait until `floor` seconds after `start`; work that outlasted it is answered with a warning."""
    left = start + floor - _clock()
    if left > 0:
        _sleep(left)
    elif floor > 0:
        _LOG.warning(
            "a task took %.2f s, longer than this node's floor of %.2f s: raise %s or %s (or lower "
            "%s), or its reply time shows how much its devices hold",
            floor - left,
            floor,
            REPLY_AFTER_KEY,
            REPLY_AFTER_PER_DEVICE_KEY,
            MAX_LOCAL_STEPS_KEY,
        )


def _train_config(cfg: RunConfig) -> TrainConfig:
    """The local training a run asks of each device."""
    return TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr)


def _check_training(node_config: Mapping[str, object], cfg: RunConfig, task: RoundTask) -> None:
    """Refuse, before any store is read, a training task the trainer cannot run (named as the
    trainer names it: after the data is read every error is one fixed text) or asking more local
    steps than the node's cap (`max-local-steps`): epochs times the minibatches of a device with
    the most rows."""
    if task.purpose != "train":
        return
    check_train_config(_train_config(cfg))
    cap = local_steps_cap(node_config)
    if cap is None:
        return
    steps = cfg.local_epochs * math.ceil(TrainConfig().max_examples / cfg.batch_size)
    if steps > cap:
        raise ValueError(
            f"the run asks up to {steps} local steps per device ({cfg.local_epochs} epochs of batch "
            f"{cfg.batch_size}), above this node's {MAX_LOCAL_STEPS_KEY} of {cap}"
        )


def _upload_params(cfg: RunConfig, task: RoundTask) -> tuple[ProtectionParams, int]:
    """What the task's uploads are protected with (both sides build it from the run config and
    the task), and the salt of the devices' rounding coins for that purpose."""
    if task.purpose == "train":
        return cfg.train_protection(task.noise_multiplier), task.server_round
    if task.purpose == "evaluate":
        return cfg.eval_protection(), -1
    return cfg.stats_protection(task.noise_multiplier), -2


def _check_noise(
    node_config: Mapping[str, object], cfg: RunConfig, task: RoundTask, params: ProtectionParams
) -> None:
    """Refuse, before any claim or store read, a task whose release would carry less noise than
    the node's devices pin (`min-noise`): review 15 read a held-out device's churn day exactly
    through a crafted model, because evaluations are exact and exempt from the key holder's floor."""
    floor = noise_floor(node_config)
    if floor <= 0:
        return
    z = params.noise_multiplier if cfg.scheme.private else 0.0
    if z < floor:
        what = "eval-noise" if task.purpose == "evaluate" else "its noise multiplier"
        raise ValueError(
            f"the {task.purpose} task's release carries noise multiplier {z:g} ({what}), below this "
            f"node's {MIN_NOISE_KEY} of {floor:g}"
        )


def answer(msg: Message, context: Context, source: DeviceSource) -> Message:
    """A node's whole answer to a round task. Devices that may not answer (out of role, not served
    here, already answered this round, over budget) are left out of the reply, decided from the
    task and the ledger before any computation; the aggregator names them."""
    cfg = RunConfig.from_flower(context.run_config)
    spec = cfg.model_spec()
    task = RoundTask.from_message(msg, spec.n_params, spec.n_features)
    keyholder = keyholder_for(context.node_config, cfg, task)  # refuses before any work
    _check_training(context.node_config, cfg, task)
    # Settings no upload can be protected with are refused here, before any claim: built after it,
    # they spent a round and an upload of each device's budget on a task that could never be
    # released (review 18).
    params, salt = _upload_params(cfg, task)
    _check_noise(context.node_config, cfg, task, params)
    if keyholder is None and not source.plaintext_allowed:
        raise ValueError("this node serves real devices: it refuses the plaintext baseline")
    _extend_the_floor(context.node_config, len(task.devices))
    in_role = [d for d in task.devices if _in_role(cfg, task.purpose, d)]
    served = source.serves(context, cfg, in_role)  # reads no device's data
    holder = keyholder.x25519 if keyholder is not None else None
    evaluation = task.purpose == "evaluate"
    scopes = scopes_of(task.round_id, context.run_id, holder, evaluation)
    role = role_of(context.run_id, holder, evaluation)  # a device keeps its first role for a key holder
    granted = source.ledger(context).claim(scopes, served, upload_budget(context.node_config), role)
    try:
        return _answer_granted(msg, context, source, cfg, task, keyholder, (params, salt), granted)
    except Exception as e:
        # From here on the work reads the devices' data, so an error's text could carry it: a
        # MemoryError named an array's shape, whose length was one device's account age in days
        # (review 12). Flower sends an exception's type and text to the aggregator; it gets this
        # one, and the node's own log the rest.
        _LOG.error("a task failed after its devices were granted (%s)", type(e).__name__)
        _LOG.debug("the failure", exc_info=True)
        raise DeviceWorkError("this node's devices could not answer the task") from None


class DeviceWorkError(RuntimeError):
    """The one error a node sends once it has read its devices' data, whatever went wrong."""


def _answer_granted(
    msg: Message,
    context: Context,
    source: DeviceSource,
    cfg: RunConfig,
    task: RoundTask,
    keyholder: KeyHolderPublic | None,
    protection: tuple[ProtectionParams, int],
    granted: list[int],
) -> Message:
    """The part of `answer` that reads and computes on the granted devices' data, protected with
    `protection` (`_upload_params`)."""
    # Only now is any device's data read, and only the granted devices': a device refused (out of
    # budget or role, already answered) costs no work, so the work, and its time, says nothing
    # about it (review 10: stores of devices out of budget were still read).
    loaded = source.load(context, cfg, granted)
    devices = [d for d in granted if d in loaded]
    data = [loaded[d] for d in devices]
    position = {d: i for i, d in enumerate(task.devices)}
    cohorts = [task.cohorts[position[d]] for d in devices]
    bound = task.bound_round_seeds(cfg.digest())  # model and settings bound into every seal
    seeds = [bound[position[d]] for d in devices]
    if not devices:
        return NodeReply((), ()).to_message(msg)
    params, salt = protection
    if task.purpose == "train":
        vectors = _train(cfg, task, data, devices)
    elif task.purpose == "evaluate":
        vectors = _histograms(cfg, task, data)
    else:
        vectors = _summaries(cfg, data)
    rngs = [source.coins(cfg, d, salt * 1_000_003 + c) for d, c in zip(devices, cohorts, strict=True)]
    vectors = _finite_rows(vectors)
    blobs: list[bytes] = []
    for a in range(0, len(devices), PROTECT_CHUNK):  # upload i depends on row i alone
        s = slice(a, a + PROTECT_CHUNK)
        blobs += protect_batch(
            vectors[s], params, keyholder, task.round_id, cohorts[s], task.model_version, seeds[s], rngs[s]
        )
    return NodeReply(tuple(devices), tuple(blobs)).to_message(msg)


def _answered_after_the_floor(context: Context, source: DeviceSource) -> Iterator[None]:
    """Around every message the node gets, whatever its type (a roster query, an action no
    handler serves and Flower refuses, a task that fails): one at a time
    (`DeviceSource.serialised`), and no earlier than the node's reply floor
    (`client.device_config.reply_floor`; a simulated node has none). Timing only the tasks
    let a roster query sent beside a task read, from how slowly it ran, how long the task
    worked, and so how many rows the devices hold (review 9)."""
    # At module level: Ray pickles the ClientApp's nested functions by value, with the globals
    # they name, and a context variable does not pickle.
    floor = reply_floor(context.node_config)
    token = _PER_DEVICE_FLOOR.set(0.0)
    try:
        with source.serialised(context):
            start = _clock()
            yield
            _wait_out_the_floor(start, floor + _PER_DEVICE_FLOOR.get())
    finally:
        _PER_DEVICE_FLOOR.reset(token)


def make_client_app(source: DeviceSource) -> ClientApp:
    app = ClientApp()

    @app.lifespan()
    def one_message_at_a_time_answered_after_the_floor(context: Context) -> Iterator[None]:
        yield from _answered_after_the_floor(context, source)

    @app.query()
    def roster(msg: Message, context: Context) -> Message:
        """The indices of the devices this node serves (public pseudonyms the server samples from)."""
        cfg = RunConfig.from_flower(context.run_config)
        return RosterReply(tuple(source.roster(context, cfg))).to_message(msg)

    @app.query("feature_mean")
    def feature_mean(msg: Message, context: Context) -> Message:
        return answer(msg, context, source)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return answer(msg, context, source)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return answer(msg, context, source)

    return app
