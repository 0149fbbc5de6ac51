"""The Flower ClientApp logic: thin handlers over the device's own library functions.

`make_client_app(loader)` builds the app around a device loader: a phone (or a SuperNode
serving stores) loads its event store; a simulation generates its device from the population
seed. Replies carry only: the device index (roll call), a model update (train), and a
score histogram (evaluate) — never events, features or an individual score in the clear
outside plaintext mode, which is a labelled baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedchurn.client.device_data import DeviceData, prepare_device
from fedchurn.client.training import TrainConfig, local_train
from fedchurn.shared.evaluation import device_histogram, histogram_length
from fedchurn.shared.model_format import churn_probability
from fedchurn.shared.run_config import RunConfig, is_eval_device

PARAMS_KEY = "params"


@dataclass(frozen=True)
class LoadedDevice:
    index: int
    events: np.ndarray
    first_day: int | None = None
    today: int | None = None


DeviceLoader = Callable[[Context, RunConfig], LoadedDevice]


def device_seed(cfg: RunConfig, device: int, server_round: int) -> int:
    h = hashlib.blake2b(f"fedchurn-train|{cfg.seed}|{device}|{server_round}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


def make_client_app(loader: DeviceLoader) -> ClientApp:
    app = ClientApp()
    cache: dict[tuple[object, ...], DeviceData] = {}

    def data_for(context: Context, cfg: RunConfig) -> tuple[int, DeviceData]:
        dev = loader(context, cfg)
        key = (cfg.seed, cfg.scenario, cfg.days, cfg.events_file, dev.index, cfg.horizon, cfg.silence_days,
               cfg.activity)
        if key not in cache:
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[key] = prepare_device(dev.events, dev.first_day, dev.today, cfg.horizon, cfg.silence_days,
                                        cfg.activity_categories())
        return dev.index, cache[key]

    @app.query()
    def roll_call(msg: Message, context: Context) -> Message:
        """Tell the server which device this node holds (an index, not user data)."""
        cfg = RunConfig.from_flower(context.run_config)
        index = loader(context, cfg).index
        return Message(RecordDict({"device": ConfigRecord({"index": index})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        global_params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        server_round = int(msg.content.config_records["config"]["server-round"])
        index, data = data_for(context, cfg)
        n = 0
        new_params = global_params
        if not is_eval_device(cfg.seed, index, cfg.eval_fraction):
            x, t, e = data.training_rows()
            res = local_train(global_params, x, t, e,
                              TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr),
                              seed=device_seed(cfg, index, server_round))
            n, new_params = res.n_examples, res.params
        content = RecordDict({
            "arrays": ArrayRecord({PARAMS_KEY: Array(np.asarray(new_params, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": n}),
        })
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        index, data = data_for(context, cfg)
        hist = np.zeros(histogram_length(cfg.horizon))
        if is_eval_device(cfg.seed, index, cfg.eval_fraction) and data.eval_day is not None:
            d = data.eval_day
            prob = float(churn_probability(params, data.features[d])[()])
            hist = device_histogram(prob, int(data.time[d]), bool(data.event[d]), cfg.horizon)
        content = RecordDict({"histogram": ArrayRecord({"counts": Array(hist.astype(np.float32))})})
        return Message(content, reply_to=msg)

    return app
