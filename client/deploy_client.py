"""The ClientApp of a deployed SuperNode that serves one or more devices' event stores.

The SuperNode's `--node-config` names a folder of per-device SQLite stores (`store-dir`, the layout
`fedchurn import` writes: one `<user>.sqlite` per device), the pinned key holder identity
(`keyholder-x25519`, and `keyholder-ckks-sha256` for CKKS runs; `shared.keyholder_pin`) and
optionally `today` (a day number; default: the current UTC day). A device's public index is a
keyed hash (HMAC-SHA256 under the node's own secret, `<store-dir>/.node-secret`, created 0600 on
first use) of its store's name: the server can sample and name it, but cannot tell which store (or
user name) it is by hashing candidate names. Held-out membership (`is_eval_device`) follows from
the index, so node and server agree on it without a list. Each device answers each round once
and each held-out device one evaluation per run, remembered in `<store-dir>/.contributions.sqlite`
(`client.contribution_ledger`); `max-uploads` in the node configuration caps each device's uploads.

The protocol is every node's (`shared.messages`, `client.flower_app`): one task per node and round
listing its sampled devices; one reply with one protected upload per device. A device whose store
cannot be read is left out of the reply; the server names it in the round's audit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedchurn.client.contribution_ledger import ContributionLedger, FileLedger
from fedchurn.client.device_data import DeviceData, prepare_devices
from fedchurn.client.flower_app import make_client_app
from fedchurn.client.store import EventStore
from fedchurn.shared.events import SECONDS_PER_DAY
from fedchurn.shared.run_config import RunConfig

__all__ = ["StoreSource", "app", "list_stores", "node_secret", "store_index"]

STORE_DIR_KEY, TODAY_KEY = "store-dir", "today"
NODE_SECRET_FILE = ".node-secret"
LEDGER_FILE = ".contributions.sqlite"
TASK_LOCK_FILE = ".task.lock"  # held while the node answers one message (`StoreSource.serialised`)
LEGACY_LEDGER_FILE = ".evaluations.sqlite"  # its name when it held evaluations only
INDEX_BITS = 62  # Flower's config integers are signed 64-bit
_LOG = logging.getLogger(__name__)


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


def _store_dir(context: Context) -> Path:
    if STORE_DIR_KEY not in context.node_config:
        raise ValueError("this SuperNode has no store-dir in its --node-config")
    return Path(str(context.node_config[STORE_DIR_KEY]))


def _today(context: Context) -> int:
    if TODAY_KEY in context.node_config:
        return int(context.node_config[TODAY_KEY])
    return int(time.time() // SECONDS_PER_DAY)


class StoreSource:
    """The devices of one folder of stores, read afresh each round (stores grow between rounds)."""

    plaintext_allowed = False

    def roster(self, context: Context, cfg: RunConfig) -> list[int]:
        return sorted(list_stores(_store_dir(context)))

    def serves(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> list[int]:
        stores = list_stores(_store_dir(context))  # file names only
        return [d for d in devices if d in stores]

    def load(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> dict[int, DeviceData]:
        stores, today = list_stores(_store_dir(context)), _today(context)
        served = [d for d in devices if d in stores]
        if not served:
            return {}
        chunks, rows, firsts = [], [], []
        read: list[int] = []
        for d in served:
            try:
                with EventStore(stores[d]) as store:
                    events, first = store.events(), store.first_day()
            except Exception as e:
                # One unreadable store (corrupt, another schema, an event this code does not know)
                # leaves its device out, not the node's whole reply; and its text, which may name
                # the store file (the user's name the HMAC index hides) or its contents, stays on
                # the node: Flower sends an exception's text to the aggregator (review 11).
                _LOG.error("device %d left out: its store could not be read (%s)", d, type(e).__name__)
                continue
            chunks.append(events)
            rows.append(np.full(len(events), len(read), dtype=np.int64))
            firsts.append(first if first is not None else today)
            read.append(d)
        if not read:
            return {}
        prepared = prepare_devices(
            np.concatenate(chunks),
            np.concatenate(rows),
            firsts,
            [max(today, f) for f in firsts],
            cfg.protocol(),
        )
        return dict(zip(read, prepared, strict=True))

    def ledger(self, context: Context) -> ContributionLedger:
        store_dir = _store_dir(context)
        legacy, path = store_dir / LEGACY_LEDGER_FILE, store_dir / LEDGER_FILE
        if legacy.exists() and not path.exists():
            # Its claims stay claimed (FileLedger takes the old table over). A rollback journal an
            # old process left behind moves first, under the new name, so SQLite still finds and
            # replays it. Two processes may both see the old files; the one that finds a file gone
            # has nothing left to move.
            for suffix in ("-journal", ""):
                with contextlib.suppress(FileNotFoundError):
                    legacy.with_name(legacy.name + suffix).rename(path.with_name(path.name + suffix))
        return FileLedger(path)

    def coins(self, cfg: RunConfig, device: int, salt: int) -> np.random.Generator | None:
        return None  # a real device: OS-seeded

    @contextlib.contextmanager
    def serialised(self, context: Context) -> Iterator[None]:
        """An exclusive lock on `<store-dir>/.task.lock` (each message runs in its own process)."""
        path = _store_dir(context) / TASK_LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


app = make_client_app(StoreSource())
