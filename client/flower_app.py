"""The Flower ClientApp logic: thin handlers over the device's own library functions.

`make_client_app(loader)` builds the app around a device loader: a phone (or a SuperNode
serving stores) loads its event store; a simulation generates its device from the population
seed. Replies carry only a protected model update (train) or a protected score histogram
(evaluate), usable by the server only inside a cohort sum — never events, features or a score.
Plaintext mode, a labelled baseline, sends the new parameters in the clear instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedchurn.client.device_data import DeviceData, prepare_device
from fedchurn.client.feature_mean import centre_rows, feature_summary
from fedchurn.client.protect import protect_update
from fedchurn.shared.evaluation import device_histogram, histogram_length
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.model_format import churn_probability
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig, is_eval_device

PARAMS_KEY = "params"
UPLOAD_RECORD, UPLOAD_KEY = "upload", "blob"  # one bytes value in one record: one request on the wire
ROUND_SEED_KEY, COHORT_KEY, MODEL_VERSION_KEY = "round-seed", "cohort-id", "model-version"
KEY_KEY, NOISE_KEY = "keyholder-key", "noise-multiplier"
DEVICE_KEY = "device-index"  # in simulation (slots), which device the node plays; -1: its own
ROUND_ID_KEY = "round-id"  # deployment: the attempt's id at the key holder (default: the server round)
FEATURE_MEAN_ACTION = "feature_mean"  # query.feature_mean: upload this device's feature summary
INPUT_OFFSET_KEY = "input-offset"  # train: the measured feature mean to centre inputs by
SUMMARY_RECORD, SUMMARY_KEY = "summary", "sum"  # plaintext baseline: the summary in the clear


@dataclass(frozen=True)
class LoadedDevice:
    index: int
    events: np.ndarray
    first_day: int | None = None
    today: int | None = None


DeviceLoader = Callable[[Context, RunConfig, int], LoadedDevice]
DeviceIndex = Callable[[Context], int]


def device_seed(cfg: RunConfig, device: int, server_round: int) -> int:
    h = hashlib.blake2b(f"fedchurn-train|{cfg.seed}|{device}|{server_round}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


def _protect(
    conf: ConfigRecord, params: ProtectionParams, vector: np.ndarray, round_id: int, rng: np.random.Generator
) -> bytes:
    """Protect a vector with the round's public parameters from the server's message."""
    return protect_update(
        vector,
        params,
        conf_bytes(conf, KEY_KEY),
        round_id=round_id,
        cohort_id=conf_int(conf, COHORT_KEY),
        model_version=conf_int(conf, MODEL_VERSION_KEY),
        round_seed=conf_bytes(conf, ROUND_SEED_KEY),
        rng=rng,
    )


def _conf(conf: ConfigRecord, key: str, kind: type) -> object:
    """A server-sent setting of the expected type, or a clear error naming it."""
    if key not in conf:
        raise ValueError(f"the server's message lacks {key!r}")
    value = conf[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"the server's {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def conf_int(conf: ConfigRecord, key: str) -> int:
    return int(_conf(conf, key, int))  # type: ignore[call-overload]


def conf_float(conf: ConfigRecord, key: str) -> float:
    value = conf.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return float(_conf(conf, key, float))  # type: ignore[arg-type]


def conf_bytes(conf: ConfigRecord, key: str) -> bytes:
    return bytes(_conf(conf, key, bytes))  # type: ignore[call-overload]


def conf_offset(conf: ConfigRecord) -> np.ndarray | None:
    """The input offset the server sent with a training request (None: train on raw features)."""
    if INPUT_OFFSET_KEY not in conf:
        return None
    value = _conf(conf, INPUT_OFFSET_KEY, list)
    offset = np.asarray(value, dtype=np.float64)
    if offset.shape != (N_FEATURES,) or not np.all(np.isfinite(offset)):
        raise ValueError(f"the server's {INPUT_OFFSET_KEY!r} must be {N_FEATURES} finite numbers")
    return offset


def round_id_of(conf: ConfigRecord) -> int:
    """The round id the upload is bound to: the attempt id in deployment, else the server round."""
    return conf_int(conf, ROUND_ID_KEY) if ROUND_ID_KEY in conf else conf_int(conf, "server-round")


def train_device(
    cfg: RunConfig, conf: ConfigRecord, global_params: np.ndarray, index: int, data: DeviceData
) -> tuple[int, np.ndarray]:
    """Local training on one device's own examples: (examples used, new parameters).

    Held-out devices know they are held out and keep the global parameters (0 examples)."""
    if is_eval_device(cfg.seed, index, cfg.eval_fraction):
        return 0, global_params
    # torch is imported here, not at the top: a ClientApp process that only evaluates or lists its
    # devices (one process per message in deployment) starts ~3.6 s faster without it.
    from fedchurn.client.training import TrainConfig, local_train

    x, t, e = data.training_rows()
    offset = conf_offset(conf)
    if offset is not None:
        x = centre_rows(x, offset)
    res = local_train(
        global_params,
        x,
        t,
        e,
        TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr),
        seed=device_seed(cfg, index, conf_int(conf, "server-round")),
    )
    return res.n_examples, res.params


def protected_train_upload(
    cfg: RunConfig, conf: ConfigRecord, global_params: np.ndarray, new_params: np.ndarray, index: int
) -> bytes:
    """Only the protected delta leaves (clipped, then quantised, then masked); a device with
    nothing to learn sends a masked zero."""
    server_round = conf_int(conf, "server-round")
    delta = np.asarray(new_params, dtype=np.float32) - np.asarray(global_params, dtype=np.float32)
    return _protect(
        conf,
        cfg.train_protection(conf_float(conf, NOISE_KEY)),
        delta,
        round_id_of(conf),
        np.random.default_rng(device_seed(cfg, index, server_round)),
    )


def eval_histogram(cfg: RunConfig, params: np.ndarray, index: int, data: DeviceData) -> np.ndarray:
    """A held-out device's one-count score histogram; zeros for every other device."""
    hist = np.zeros(histogram_length(cfg.horizon))
    if is_eval_device(cfg.seed, index, cfg.eval_fraction) and data.eval_day is not None:
        d = data.eval_day
        prob = float(churn_probability(params, data.features[d])[()])
        hist = device_histogram(prob, int(data.time[d]), bool(data.event[d]), cfg.horizon)
    return hist


def protected_eval_upload(cfg: RunConfig, conf: ConfigRecord, hist: np.ndarray, index: int) -> bytes:
    return _protect(
        conf,
        cfg.eval_protection(),
        hist,
        round_id_of(conf),
        np.random.default_rng(device_seed(cfg, index, -conf_int(conf, COHORT_KEY))),
    )


def device_summary(cfg: RunConfig, index: int, data: DeviceData) -> np.ndarray:
    """A training device's feature summary; zeros for a held-out device (it trains nothing)."""
    if is_eval_device(cfg.seed, index, cfg.eval_fraction):
        return np.zeros(N_FEATURES + 1)
    return feature_summary(data.training_rows()[0])


def feature_mean_upload(cfg: RunConfig, conf: ConfigRecord, summary: np.ndarray, index: int) -> bytes:
    return _protect(
        conf,
        cfg.stats_protection(conf_float(conf, NOISE_KEY)),
        summary,
        round_id_of(conf),
        np.random.default_rng(device_seed(cfg, index, -1 - conf_int(conf, COHORT_KEY))),
    )


def make_client_app(
    loader: DeviceLoader, index_of: DeviceIndex, accept_assigned_device: bool = False
) -> ClientApp:
    """`accept_assigned_device`: simulation only — the node plays the device the server names."""
    app = ClientApp()
    cache: dict[tuple[object, ...], DeviceData] = {}

    def data_for(msg: Message, context: Context, cfg: RunConfig) -> tuple[int, DeviceData]:
        conf = msg.content.config_records["config"]
        assigned = conf_int(conf, DEVICE_KEY) if DEVICE_KEY in conf else -1
        dev = loader(
            context, cfg, assigned if accept_assigned_device and assigned >= 0 else index_of(context)
        )
        key = (
            cfg.seed,
            cfg.scenario,
            cfg.days,
            cfg.events_file,
            dev.index,
            cfg.horizon,
            cfg.silence_days,
            cfg.activity,
        )
        if key not in cache:
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[key] = prepare_device(
                dev.events, dev.first_day, dev.today, cfg.horizon, cfg.silence_days, cfg.activity_categories()
            )
        return dev.index, cache[key]

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        global_params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        index, data = data_for(msg, context, cfg)
        n, new_params = train_device(cfg, conf, global_params, index, data)
        if cfg.protection == "plaintext":
            content = RecordDict(
                {
                    "arrays": ArrayRecord({PARAMS_KEY: Array(np.asarray(new_params, dtype=np.float32))}),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            )
            return Message(content, reply_to=msg)
        blob = protected_train_upload(cfg, conf, global_params, new_params, index)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    @app.query(FEATURE_MEAN_ACTION)
    def feature_mean(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        index, data = data_for(msg, context, cfg)
        summary = device_summary(cfg, index, data)
        if cfg.protection == "plaintext":
            arrays = ArrayRecord({SUMMARY_KEY: Array(summary.astype(np.float32))})
            content = RecordDict({SUMMARY_RECORD: arrays})
            return Message(content, reply_to=msg)
        blob = feature_mean_upload(cfg, conf, summary, index)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        index, data = data_for(msg, context, cfg)
        hist = eval_histogram(cfg, params, index, data)
        if cfg.protection == "plaintext":
            content = RecordDict({"histogram": ArrayRecord({"counts": Array(hist.astype(np.float32))})})
            return Message(content, reply_to=msg)
        blob = protected_eval_upload(cfg, conf, hist, index)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    return app
