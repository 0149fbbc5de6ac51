"""The ClientApp of a deployed SuperNode that serves one or more devices' event stores.

The SuperNode's `--node-config` names a folder of per-device SQLite stores (`store-dir`, the layout
`fedchurn import` writes: one `<user>.sqlite` per device), the pinned key holder identity
(`keyholder-x25519`, and `keyholder-ckks-sha256` for CKKS runs; `shared.keyholder_pin`) and
optionally `today` (a day number; default: the current UTC day). A device's public index is a
keyed hash (HMAC-SHA256 under the node's own secret, `<store-dir>/.node-secret`, created 0600 on
first use) of its store's name: the server can sample and name it, but cannot tell which store (or
user name) it is by hashing candidate names. Held-out membership (`is_eval_device`) follows from
the index, so node and server agree on it without a list. Each held-out device answers one
evaluation per run, remembered in `<store-dir>/.evaluations.sqlite`.

One message per node and round: the server lists the node's sampled devices with their cohorts;
the node answers with one protected upload per device, all in one record (one request on the wire).
A device whose training fails is left out of the reply; the server names it in the round's audit.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedchurn.client.device_data import DeviceData, prepare_device
from fedchurn.client.evaluation_ledger import AlreadyEvaluatedError, FileLedger
from fedchurn.client.flower_app import (
    COHORT_KEY,
    FEATURE_MEAN_ACTION,
    PARAMS_KEY,
    ROUND_SEED_KEY,
    UPLOAD_RECORD,
    device_summary,
    eval_histogram,
    feature_mean_upload,
    keyholder_for,
    protected_eval_upload,
    protected_train_upload,
    train_device,
)
from fedchurn.client.store import EventStore
from fedchurn.shared.events import SECONDS_PER_DAY
from fedchurn.shared.run_config import RunConfig, is_eval_device

STORE_DIR_KEY, TODAY_KEY = "store-dir", "today"
DEVICES_KEY, COHORTS_KEY, ROUND_SEEDS_KEY, BLOBS_KEY = "device-indices", "cohort-ids", "round-seeds", "blobs"


NODE_SECRET_FILE = ".node-secret"
LEDGER_FILE = ".evaluations.sqlite"
INDEX_BITS = 62  # Flower's config integers are signed 64-bit


def node_secret(store_dir: Path) -> bytes:
    """This node's pseudonym key, created 0600 on first use (32 bytes from `secrets`)."""
    path = store_dir / NODE_SECRET_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} must hold 32 bytes")
    return key


def store_index(path: Path, key: bytes) -> int:
    """A device's public index: HMAC-SHA256(node secret, store name), 62 bits (stable for this node,
    and not computable by anyone without the node's secret)."""
    mac = hmac.new(key, f"fedchurn-store|{path.stem}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "little") & ((1 << INDEX_BITS) - 1)


def list_stores(store_dir: Path) -> dict[int, Path]:
    """Index -> store file of every device this node serves."""
    key = node_secret(store_dir)
    out: dict[int, Path] = {}
    for p in sorted(store_dir.glob("*.sqlite")):
        if p.name.startswith("."):
            continue
        i = store_index(p, key)
        if i in out:
            raise ValueError(f"{p} and {out[i]} hash to the same device index; rename one")
        out[i] = p
    return out


def _today(context: Context) -> int:
    if TODAY_KEY in context.node_config:
        return int(context.node_config[TODAY_KEY])
    return int(time.time() // SECONDS_PER_DAY)


def _store_dir(context: Context) -> Path:
    if STORE_DIR_KEY not in context.node_config:
        raise ValueError("this SuperNode has no store-dir in its --node-config")
    return Path(str(context.node_config[STORE_DIR_KEY]))


def _stores(context: Context) -> dict[int, Path]:
    return list_stores(_store_dir(context))


def load_store(path: Path, cfg: RunConfig, today: int) -> DeviceData:
    with EventStore(path) as store:
        events, first = store.events(), store.first_day()
    return prepare_device(events, first, today, cfg.horizon, cfg.silence_days, cfg.activity_categories())


def _device_conf(conf: ConfigRecord, j: int) -> ConfigRecord:
    """The message's settings as one device sees them (its own cohort and round seed)."""
    cohorts, seeds = conf[COHORTS_KEY], conf[ROUND_SEEDS_KEY]
    assert isinstance(cohorts, list) and isinstance(seeds, list)
    cohort, seed = cohorts[j], seeds[j]
    if not isinstance(cohort, int) or not isinstance(seed, bytes):
        raise ValueError("the server's cohort ids or round seeds have the wrong type")
    return ConfigRecord({**dict(conf.items()), COHORT_KEY: cohort, ROUND_SEED_KEY: seed})


app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The indices of the devices this node serves (public pseudonyms the server samples from)."""
    return Message(
        RecordDict({UPLOAD_RECORD: ConfigRecord({DEVICES_KEY: sorted(_stores(context))})}), reply_to=msg
    )


def _answer(msg: Message, context: Context, kind: str) -> Message:
    """`kind`: train, evaluate or feature_mean, for every listed device this node serves."""
    cfg = RunConfig.from_flower(context.run_config)
    conf = msg.content.config_records["config"]
    keyholder = keyholder_for(dict(context.node_config), cfg, conf)  # refuses before any work
    if keyholder is None:
        raise ValueError("a SuperNode serving real devices refuses the plaintext baseline")
    ledger = FileLedger(_store_dir(context) / LEDGER_FILE)
    arrays = msg.content.array_records["arrays"]
    params = arrays[PARAMS_KEY].numpy() if PARAMS_KEY in arrays else np.zeros(0, dtype=np.float32)
    stores, today = _stores(context), _today(context)
    wanted = conf[DEVICES_KEY]
    assert isinstance(wanted, list)
    done: list[int] = []
    blobs: list[bytes] = []
    for j, index in enumerate(int(i) for i in wanted):
        if index not in stores:
            continue  # not ours (any more): left out, the server names it
        dconf = _device_conf(conf, j)
        if kind == "evaluate" and is_eval_device(cfg.seed, index, cfg.eval_fraction):
            try:  # before computing anything: a second evaluation in this run is refused
                ledger.claim(context.run_id, index)
            except AlreadyEvaluatedError:
                continue  # left out of the reply; the server names it
        data = load_store(stores[index], cfg, today)
        if kind == "train":
            _, new_params = train_device(cfg, dconf, params, index, data)
            blobs.append(protected_train_upload(cfg, dconf, params, np.asarray(new_params), keyholder))
        elif kind == "evaluate":
            blobs.append(
                protected_eval_upload(cfg, dconf, eval_histogram(cfg, params, index, data), keyholder)
            )
        else:
            blobs.append(feature_mean_upload(cfg, dconf, device_summary(cfg, index, data), keyholder))
        done.append(index)
    return Message(
        RecordDict({UPLOAD_RECORD: ConfigRecord({DEVICES_KEY: done, BLOBS_KEY: blobs})}), reply_to=msg
    )


@app.query(FEATURE_MEAN_ACTION)
def feature_mean(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "feature_mean")


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "evaluate")
