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
any work; a held-out device answers one evaluation per run (`client.evaluation_ledger`); a real
device's rounding coins come from an OS-seeded generator (a simulated device's from its seed, so
a simulation is reproducible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedchurn.client.device_config import trusted_keyholder
from fedchurn.client.device_data import DeviceData, empty_device
from fedchurn.client.evaluation_ledger import AlreadyEvaluatedError, EvaluationLedger
from fedchurn.client.feature_mean import centre_rows, feature_summary
from fedchurn.client.protect import protect_batch
from fedchurn.shared.evaluation import device_histogram, histogram_length
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.messages import NodeReply, RosterReply, RoundTask
from fedchurn.shared.model_format import churn_probability
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig, is_eval_device

__all__ = ["DeviceSource", "answer", "make_client_app", "simulated_entropy"]


class DeviceSource(Protocol):
    """Where a node's devices come from: a simulation shard, a folder of stores, a phone."""

    plaintext_allowed: bool  # only a simulation may run the unprotected baseline

    def roster(self, context: Context, cfg: RunConfig) -> list[int]:
        """The public indices of the devices this node serves."""

    def load(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> dict[int, DeviceData]:
        """The devices' prepared data; a device this node does not serve is left out."""

    def ledger(self, context: Context) -> EvaluationLedger:
        """Where held-out devices record their one evaluation per run."""

    def coins(self, cfg: RunConfig, device: int, salt: int) -> np.random.Generator | None:
        """A device's stochastic-rounding generator: None (OS-seeded) on a real device."""


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
    """Every device's model delta, trained together; held-out devices (and devices without a
    labelled day) keep the global parameters: a zero delta."""
    from fedchurn.client.training import DeviceRows, TrainConfig, train_devices

    assert task.params is not None
    rows = []
    for device, d in zip(devices, data, strict=True):
        if is_eval_device(cfg.seed, device, cfg.eval_fraction):
            d = empty_device(cfg.model_spec().n_features)
        x = d.x if task.input_offset is None else centre_rows(d.x, task.input_offset)
        rows.append(DeviceRows(x, d.time, d.event))
    res = train_devices(
        task.params,
        rows,
        TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr),
        seeds=[device_seed(cfg, dev, task.server_round) for dev in devices],
        spec=cfg.model_spec(),
        with_loss=False,  # a local diagnostic the round never uses
    )
    return np.asarray(res.params, dtype=np.float32) - np.asarray(task.params, dtype=np.float32)[None, :]


def _histograms(
    cfg: RunConfig, task: RoundTask, data: list[DeviceData], devices: Sequence[int]
) -> np.ndarray:
    """A held-out device's one-count score histogram; zeros for every other device."""
    assert task.params is not None
    spec = cfg.model_spec()
    out = np.zeros((len(devices), histogram_length(spec.outputs)))
    held = [
        i
        for i, (dev, d) in enumerate(zip(devices, data, strict=True))
        if is_eval_device(cfg.seed, dev, cfg.eval_fraction) and d.eval_x is not None
    ]
    if held:
        x = np.stack([data[i].eval_x for i in held])  # type: ignore[misc]
        probs = churn_probability(task.params, x, spec)
        for i, p in zip(held, np.atleast_1d(probs), strict=True):
            out[i] = device_histogram(float(p), data[i].eval_time, data[i].eval_event, spec.outputs)
    return out


def _summaries(cfg: RunConfig, data: list[DeviceData], devices: Sequence[int]) -> np.ndarray:
    """A training device's feature summary; zeros for a held-out device (it trains nothing)."""
    n = cfg.model_spec().n_features
    return np.stack(
        [
            np.zeros(n + 1) if is_eval_device(cfg.seed, dev, cfg.eval_fraction) else feature_summary(d.x, n)
            for dev, d in zip(devices, data, strict=True)
        ]
    )


def answer(msg: Message, context: Context, source: DeviceSource) -> Message:
    """A node's whole answer to a round task."""
    cfg = RunConfig.from_flower(context.run_config)
    spec = cfg.model_spec()
    task = RoundTask.from_message(msg, spec.n_params, spec.n_features)
    keyholder = keyholder_for(context.node_config, cfg, task)  # refuses before any work
    if keyholder is None and not source.plaintext_allowed:
        raise ValueError("this node serves real devices: it refuses the plaintext baseline")
    wanted = list(task.devices)
    if task.purpose == "evaluate":
        ledger = source.ledger(context)
        kept = []
        for device in wanted:
            if is_eval_device(cfg.seed, device, cfg.eval_fraction):
                try:  # before computing anything: a second evaluation in this run is refused
                    ledger.claim(context.run_id, device)
                except AlreadyEvaluatedError:
                    continue  # left out of the reply; the aggregator names it
            kept.append(device)
        wanted = kept
    loaded = source.load(context, cfg, wanted)
    devices = [d for d in wanted if d in loaded]
    data = [loaded[d] for d in devices]
    position = {d: i for i, d in enumerate(task.devices)}
    cohorts = [task.cohorts[position[d]] for d in devices]
    seeds = [task.round_seeds[position[d]] for d in devices]
    if not devices:
        return NodeReply((), ()).to_message(msg)
    params: ProtectionParams
    if task.purpose == "train":
        vectors = _train(cfg, task, data, devices)
        params, salt = cfg.train_protection(task.noise_multiplier), task.server_round
    elif task.purpose == "evaluate":
        vectors = _histograms(cfg, task, data, devices)
        params, salt = cfg.eval_protection(), -1
    else:
        vectors = _summaries(cfg, data, devices)
        params, salt = cfg.stats_protection(task.noise_multiplier), -2
    rngs = [source.coins(cfg, d, salt * 1_000_003 + c) for d, c in zip(devices, cohorts, strict=True)]
    blobs = protect_batch(vectors, params, keyholder, task.round_id, cohorts, task.model_version, seeds, rngs)
    return NodeReply(tuple(devices), tuple(blobs)).to_message(msg)


def make_client_app(source: DeviceSource) -> ClientApp:
    app = ClientApp()

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
