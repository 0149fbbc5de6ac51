"""The Flower ClientApp logic: thin handlers over the device's own library functions.

`make_client_app(loader)` builds the app around a device loader: a phone (or a SuperNode
serving stores) loads its event store; a simulation generates its device from the population
seed. Replies carry only a protected model update (train) or a protected score histogram
(evaluate), usable by the server only inside a cohort sum — never events, features or a score.
Plaintext mode, a labelled baseline, sends the new parameters in the clear instead.

What protects an upload is never taken from the aggregator: the key holder's identity comes from
the device's own configuration (`client.device_config`) and the aggregator's message is checked
against it before any work; a held-out device answers one evaluation per run
(`client.evaluation_ledger`); stochastic-rounding coins come from an OS-seeded generator on a real
device (a simulation passes its simulated device's seeded one, so a run is reproducible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedchurn.client.device_config import trusted_keyholder
from fedchurn.client.device_data import DeviceData, prepare_device
from fedchurn.client.evaluation_ledger import EvaluationLedger, MemoryLedger
from fedchurn.client.feature_mean import centre_rows, feature_summary
from fedchurn.client.protect import protect_update
from fedchurn.shared.evaluation import device_histogram, histogram_length
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.model_format import churn_probability
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig, is_eval_device

PARAMS_KEY = "params"
UPLOAD_RECORD, UPLOAD_KEY = "upload", "blob"  # one bytes value in one record: one request on the wire
ROUND_SEED_KEY, COHORT_KEY, MODEL_VERSION_KEY = "round-seed", "cohort-id", "model-version"
KEY_KEY, NOISE_KEY = "keyholder-key", "noise-multiplier"  # the key the aggregator names (checked)
CKKS_CONTEXT_KEY = "keyholder-ckks-context"  # CKKS: the public context (its SHA-256 is pinned)
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


def keyholder_for(
    node_config: dict[str, object], cfg: RunConfig, conf: ConfigRecord
) -> KeyHolderPublic | None:
    """The pinned key holder this device protects with, checked against the aggregator's message
    before any work (None in the plaintext baseline, which protects nothing)."""
    if cfg.protection == "plaintext":
        return None
    offered = conf_bytes(conf, KEY_KEY) if KEY_KEY in conf else None
    ckks = cfg.protection == "ckks"
    context = conf_bytes(conf, CKKS_CONTEXT_KEY) if ckks and CKKS_CONTEXT_KEY in conf else None
    return trusted_keyholder(node_config, offered, ckks, context)


def _protect(
    conf: ConfigRecord,
    params: ProtectionParams,
    vector: np.ndarray,
    round_id: int,
    keyholder: KeyHolderPublic,
    rng: np.random.Generator | None,
) -> bytes:
    """Protect a vector for the pinned key holder, with the round's public parameters."""
    return protect_update(
        vector,
        params,
        keyholder,
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


def simulated_entropy(cfg: RunConfig, index: int, salt: int) -> np.random.Generator:
    """A simulated device's rounding coins, seeded so that a simulation is reproducible. Real
    devices never use this: their coins come from an OS-seeded generator."""
    return np.random.default_rng(device_seed(cfg, index, salt))


def protected_train_upload(
    cfg: RunConfig,
    conf: ConfigRecord,
    global_params: np.ndarray,
    new_params: np.ndarray,
    keyholder: KeyHolderPublic,
    rng: np.random.Generator | None = None,
) -> bytes:
    """Only the protected delta leaves (clipped, then quantised, then masked); a device with
    nothing to learn sends a masked zero. `rng` None: OS-seeded rounding coins."""
    delta = np.asarray(new_params, dtype=np.float32) - np.asarray(global_params, dtype=np.float32)
    params = cfg.train_protection(conf_float(conf, NOISE_KEY))
    return _protect(conf, params, delta, round_id_of(conf), keyholder, rng)


def eval_histogram(cfg: RunConfig, params: np.ndarray, index: int, data: DeviceData) -> np.ndarray:
    """A held-out device's one-count score histogram; zeros for every other device."""
    hist = np.zeros(histogram_length(cfg.horizon))
    if is_eval_device(cfg.seed, index, cfg.eval_fraction) and data.eval_day is not None:
        d = data.eval_day
        prob = float(churn_probability(params, data.features[d])[()])
        hist = device_histogram(prob, int(data.time[d]), bool(data.event[d]), cfg.horizon)
    return hist


def protected_eval_upload(
    cfg: RunConfig,
    conf: ConfigRecord,
    hist: np.ndarray,
    keyholder: KeyHolderPublic,
    rng: np.random.Generator | None = None,
) -> bytes:
    return _protect(conf, cfg.eval_protection(), hist, round_id_of(conf), keyholder, rng)


def device_summary(cfg: RunConfig, index: int, data: DeviceData) -> np.ndarray:
    """A training device's feature summary; zeros for a held-out device (it trains nothing)."""
    if is_eval_device(cfg.seed, index, cfg.eval_fraction):
        return np.zeros(N_FEATURES + 1)
    return feature_summary(data.training_rows()[0])


def feature_mean_upload(
    cfg: RunConfig,
    conf: ConfigRecord,
    summary: np.ndarray,
    keyholder: KeyHolderPublic,
    rng: np.random.Generator | None = None,
) -> bytes:
    params = cfg.stats_protection(conf_float(conf, NOISE_KEY))
    return _protect(conf, params, summary, round_id_of(conf), keyholder, rng)


def make_client_app(
    loader: DeviceLoader,
    index_of: DeviceIndex,
    accept_assigned_device: bool = False,
    seeded_entropy: bool = False,
    ledger: EvaluationLedger | None = None,
) -> ClientApp:
    """`accept_assigned_device`: simulation only — the node plays the device the server names.
    `seeded_entropy`: simulation only — rounding coins from the simulated device's seed.
    `ledger`: where held-out devices record their one evaluation per run (default: memory)."""
    app = ClientApp()
    cache: dict[tuple[object, ...], DeviceData] = {}
    evaluated = ledger if ledger is not None else MemoryLedger()

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

    def coins(cfg: RunConfig, index: int, salt: int) -> np.random.Generator | None:
        return simulated_entropy(cfg, index, salt) if seeded_entropy else None

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        keyholder = keyholder_for(dict(context.node_config), cfg, conf)  # refuses before any work
        global_params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        index, data = data_for(msg, context, cfg)
        n, new_params = train_device(cfg, conf, global_params, index, data)
        if keyholder is None:  # plaintext baseline
            content = RecordDict(
                {
                    "arrays": ArrayRecord({PARAMS_KEY: Array(np.asarray(new_params, dtype=np.float32))}),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            )
            return Message(content, reply_to=msg)
        rng = coins(cfg, index, conf_int(conf, "server-round"))
        blob = protected_train_upload(cfg, conf, global_params, new_params, keyholder, rng)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    @app.query(FEATURE_MEAN_ACTION)
    def feature_mean(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        keyholder = keyholder_for(dict(context.node_config), cfg, conf)
        index, data = data_for(msg, context, cfg)
        summary = device_summary(cfg, index, data)
        if keyholder is None:
            arrays = ArrayRecord({SUMMARY_KEY: Array(summary.astype(np.float32))})
            content = RecordDict({SUMMARY_RECORD: arrays})
            return Message(content, reply_to=msg)
        rng = coins(cfg, index, -1 - conf_int(conf, COHORT_KEY))
        blob = feature_mean_upload(cfg, conf, summary, keyholder, rng)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flower(context.run_config)
        conf = msg.content.config_records["config"]
        keyholder = keyholder_for(dict(context.node_config), cfg, conf)
        params = msg.content.array_records["arrays"][PARAMS_KEY].numpy()
        index, data = data_for(msg, context, cfg)
        if is_eval_device(cfg.seed, index, cfg.eval_fraction):
            evaluated.claim(context.run_id, index)
        hist = eval_histogram(cfg, params, index, data)
        if keyholder is None:
            content = RecordDict({"histogram": ArrayRecord({"counts": Array(hist.astype(np.float32))})})
            return Message(content, reply_to=msg)
        rng = coins(cfg, index, -conf_int(conf, COHORT_KEY))
        blob = protected_eval_upload(cfg, conf, hist, keyholder, rng)
        return Message(RecordDict({UPLOAD_RECORD: ConfigRecord({UPLOAD_KEY: blob})}), reply_to=msg)

    return app
