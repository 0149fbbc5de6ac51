"""The one message protocol between the aggregator and a node, whatever the node is.

A node is a phone (one device), a SuperNode serving a folder of device stores, or a simulation
shard of thousands of simulated devices: to the aggregator they are all "a node that answers for a
list of devices". Per round and node the aggregator sends one `RoundTask` (the global parameters
once, and per device its cohort and round seed); the node answers with one `NodeReply` (one
protected upload per device it answered for, all in one record: one request on Flower's wire). A
node lists the devices it serves once, in answer to a `query` (`RosterReply`).

Both sides import this module; records are checked when read, and every error names the record
key and what was expected, so a malformed message is refused before any work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedchurn.shared.protection import bind_round_seed, task_digest

__all__ = [
    "FEATURE_MEAN_ACTION",
    "MAX_INDEX",
    "MessageError",
    "NodeReply",
    "Purpose",
    "RosterReply",
    "RoundTask",
    "message_type",
    "purpose_of",
    "roster_query",
]

Purpose = Literal["train", "evaluate", "stats"]
FEATURE_MEAN_ACTION = "feature_mean"  # Flower message type "query.feature_mean": the stats purpose
MAX_INDEX = 2**62 - 1  # device indices are Flower config integers (signed 64-bit)

# Record and key names: declared once, here.
PARAMS_RECORD, PARAMS_KEY = "arrays", "params"
TASK_RECORD = "config"
REPLY_RECORD = "uploads"
ROSTER_RECORD = "roster"
K_ROUND, K_ROUND_ID, K_MODEL_VERSION = "server-round", "round-id", "model-version"
K_NOISE, K_KEY, K_CKKS = "noise-multiplier", "keyholder-key", "keyholder-ckks-context"
K_OFFSET = "input-offset"
K_DEVICES, K_COHORTS, K_SEEDS, K_BLOBS = "devices", "cohorts", "round-seeds", "blobs"
ROUND_SEED_LEN = 32


class MessageError(ValueError):
    """A message that does not follow the protocol; the text names the key and what was wrong."""


def message_type(purpose: Purpose) -> str:
    if purpose == "train":
        return str(MessageType.TRAIN)
    if purpose == "evaluate":
        return str(MessageType.EVALUATE)
    if purpose == "stats":
        return f"{MessageType.QUERY}.{FEATURE_MEAN_ACTION}"
    raise MessageError(f"unknown purpose {purpose!r}: train, evaluate or stats")


def purpose_of(msg: Message) -> Purpose:
    kind = msg.metadata.message_type
    if kind == MessageType.TRAIN:
        return "train"
    if kind == MessageType.EVALUATE:
        return "evaluate"
    if kind == f"{MessageType.QUERY}.{FEATURE_MEAN_ACTION}":
        return "stats"
    raise MessageError(f"message type {kind!r} carries no round task")


def _get(record: ConfigRecord, key: str, kind: type, where: str) -> object:
    if key not in record:
        raise MessageError(f"{where} lacks {key!r}")
    value = record[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MessageError(f"{where}: {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _int(record: ConfigRecord, key: str, where: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    value = _get(record, key, int, where)
    assert isinstance(value, int)
    if not lo <= value <= hi:
        raise MessageError(f"{where}: {key!r} = {value} is outside {lo}..{hi}")
    return value


def _int_list(record: ConfigRecord, key: str, where: str, hi: int) -> tuple[int, ...]:
    value = _get(record, key, list, where)
    assert isinstance(value, list)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi for v in value):
        raise MessageError(f"{where}: {key!r} must be a list of integers in 0..{hi}")
    return tuple(int(v) for v in value)


def _bytes_list(record: ConfigRecord, key: str, where: str) -> tuple[bytes, ...]:
    value = _get(record, key, list, where)
    assert isinstance(value, list)
    if not all(isinstance(v, bytes) for v in value):
        raise MessageError(f"{where}: {key!r} must be a list of bytes")
    return tuple(bytes(v) for v in value)


def _record(msg: Message, name: str, where: str) -> ConfigRecord:
    if not msg.has_content():
        raise MessageError(f"{where} has no content (error: {msg.error.reason if msg.has_error() else '?'})")
    records = msg.content.config_records
    if name not in records:
        raise MessageError(f"{where} lacks the record {name!r}")
    return records[name]


@dataclass(frozen=True)
class RoundTask:
    """One node's work for one round: the global parameters once, and per device its cohort and
    the cohort's public round seed. `keyholder_key` and `ckks_context` are what the aggregator
    names; a device checks them against its own pin and never uses them otherwise."""

    purpose: Purpose
    server_round: int
    round_id: int
    model_version: int
    noise_multiplier: float
    devices: tuple[int, ...]
    cohorts: tuple[int, ...]
    round_seeds: tuple[bytes, ...]
    params: np.ndarray | None = None  # float32 global parameters (None for the stats purpose)
    keyholder_key: bytes | None = None
    ckks_context: bytes | None = None
    input_offset: np.ndarray | None = None  # centre-features: subtract from every scaled row

    def __post_init__(self) -> None:
        if not len(self.devices) == len(self.cohorts) == len(self.round_seeds):
            raise MessageError("devices, cohorts and round seeds must be lists of the same length")
        if len(set(self.devices)) != len(self.devices):
            raise MessageError("a device is listed twice")
        if any(len(s) != ROUND_SEED_LEN for s in self.round_seeds):
            raise MessageError(f"round seeds are {ROUND_SEED_LEN} bytes")
        if not (np.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise MessageError("the noise multiplier must be finite and >= 0")
        if self.purpose != "stats" and self.params is None:
            raise MessageError(f"a {self.purpose} task carries the global parameters")

    def bound_round_seeds(self, run: bytes) -> tuple[bytes, ...]:
        """Each device's round seed bound to this task's model and input offset and to the run's
        settings (`run`: `RunConfig.digest()`): what its upload is protected under
        (`shared.protection.bind_round_seed`)."""
        digest = task_digest(self.params, self.input_offset, run)
        return tuple(bind_round_seed(s, digest) for s in self.round_seeds)

    def to_message(self, node: int) -> Message:
        conf: dict[str, object] = {
            K_ROUND: self.server_round,
            K_ROUND_ID: self.round_id,
            K_MODEL_VERSION: self.model_version,
            K_NOISE: float(self.noise_multiplier),
            K_DEVICES: list(self.devices),
            K_COHORTS: list(self.cohorts),
            K_SEEDS: list(self.round_seeds),
        }
        if self.keyholder_key is not None:
            conf[K_KEY] = self.keyholder_key
        if self.ckks_context is not None:
            conf[K_CKKS] = self.ckks_context
        if self.input_offset is not None:
            conf[K_OFFSET] = [float(v) for v in self.input_offset]
        content = RecordDict({TASK_RECORD: ConfigRecord(conf)})  # type: ignore[arg-type]
        if self.params is not None:
            content[PARAMS_RECORD] = ArrayRecord(
                {PARAMS_KEY: Array(np.asarray(self.params, dtype=np.float32))}
            )
        return Message(content, dst_node_id=node, message_type=message_type(self.purpose))

    @classmethod
    def from_message(cls, msg: Message, n_params: int, n_features: int) -> RoundTask:
        where = "the aggregator's task"
        purpose = purpose_of(msg)
        conf = _record(msg, TASK_RECORD, where)
        params = None
        if purpose != "stats":
            arrays = msg.content.array_records
            if PARAMS_RECORD not in arrays or PARAMS_KEY not in arrays[PARAMS_RECORD]:
                raise MessageError(f"{where} lacks the global parameters ({PARAMS_RECORD}/{PARAMS_KEY})")
            params = np.asarray(arrays[PARAMS_RECORD][PARAMS_KEY].numpy(), dtype=np.float32)
            if params.shape != (n_params,) or not np.all(np.isfinite(params)):
                raise MessageError(f"{where}: the global parameters must be {n_params} finite numbers")
        offset = None
        if K_OFFSET in conf:
            raw = _get(conf, K_OFFSET, list, where)
            offset = np.asarray(raw, dtype=np.float64)
            if offset.shape != (n_features,) or not np.all(np.isfinite(offset)):
                raise MessageError(f"{where}: {K_OFFSET!r} must be {n_features} finite numbers")
        key = _get(conf, K_KEY, bytes, where) if K_KEY in conf else None
        ckks = _get(conf, K_CKKS, bytes, where) if K_CKKS in conf else None
        noise = _get(conf, K_NOISE, float, where)
        assert isinstance(noise, float)
        return cls(
            purpose=purpose,
            server_round=_int(conf, K_ROUND, where),
            round_id=_int(conf, K_ROUND_ID, where),
            model_version=_int(conf, K_MODEL_VERSION, where),
            noise_multiplier=noise,
            devices=_int_list(conf, K_DEVICES, where, MAX_INDEX),
            cohorts=_int_list(conf, K_COHORTS, where, 2**32 - 1),
            round_seeds=_bytes_list(conf, K_SEEDS, where),
            params=params,
            keyholder_key=key if isinstance(key, bytes) else None,
            ckks_context=ckks if isinstance(ckks, bytes) else None,
            input_offset=offset,
        )


@dataclass(frozen=True)
class NodeReply:
    """A node's answer: one protected upload per device it answered for (devices it cannot answer
    for are left out; the aggregator names them)."""

    devices: tuple[int, ...]
    blobs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.devices) != len(self.blobs):
            raise MessageError("a reply lists as many uploads as devices")

    def to_message(self, reply_to: Message) -> Message:
        record = ConfigRecord({K_DEVICES: list(self.devices), K_BLOBS: list(self.blobs)})
        return Message(RecordDict({REPLY_RECORD: record}), reply_to=reply_to)

    @classmethod
    def from_message(cls, msg: Message) -> NodeReply:
        where = f"node {msg.metadata.src_node_id}'s reply"
        rec = _record(msg, REPLY_RECORD, where)
        devices = _int_list(rec, K_DEVICES, where, MAX_INDEX)
        blobs = _bytes_list(rec, K_BLOBS, where)
        if len(devices) != len(blobs):
            raise MessageError(f"{where}: {len(devices)} devices but {len(blobs)} uploads")
        return cls(devices, blobs)


def roster_query(node: int) -> Message:
    """Ask a node which devices it serves (once per run)."""
    return Message(
        RecordDict({TASK_RECORD: ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY
    )


@dataclass(frozen=True)
class RosterReply:
    devices: tuple[int, ...]

    def to_message(self, reply_to: Message) -> Message:
        return Message(
            RecordDict({ROSTER_RECORD: ConfigRecord({K_DEVICES: list(self.devices)})}), reply_to=reply_to
        )

    @classmethod
    def from_message(cls, msg: Message) -> RosterReply:
        where = f"node {msg.metadata.src_node_id}'s device list"
        return cls(_int_list(_record(msg, ROSTER_RECORD, where), K_DEVICES, where, MAX_INDEX))


def group_by_node(pairs: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """(node, device) pairs to each node's devices, in the given order."""
    out: dict[int, list[int]] = {}
    for node, device in pairs:
        out.setdefault(node, []).append(device)
    return out
