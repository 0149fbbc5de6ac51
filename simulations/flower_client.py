"""The ClientApp of a simulation node: a shard of simulated devices, kept across rounds.

Node p of S serves the devices whose index is p modulo S (a public rule, so the aggregator's
roster and the node agree). A device is generated on first use with the population's batch path
(`population.generate_devices`; with `events-file`, one user of a real log) and prepared with the
device's own batch path (`client.device_data.prepare_devices`). Prepared devices are kept across
rounds in the run's device store (`simulations.device_store`: one file every worker process
reads, so a device is prepared once per run whichever process plays its node); when a node's
slots fit in 1 GB of disk it prepares its whole shard on its first message. Without a provisioned
store (tests that play nodes in one process) a node keeps its devices in memory, up to a budget,
least recently used first out. The population is never materialised.

The answer itself is every node's (`client.flower_app.answer`); only where the devices come from,
and that a simulated device's rounding coins are seeded (a run is reproducible from its seed), is
specific to simulation. The key holder's pin comes from the provisioning file
($FEDCHURN_DEVICE_CONFIG) the runner writes, as a phone's comes from its configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedchurn.client.contribution_ledger import ContributionLedger, FileLedger, MemoryLedger
from fedchurn.client.device_config import device_settings
from fedchurn.client.device_data import DeviceData, prepare_devices
from fedchurn.client.flower_app import make_client_app, simulated_entropy
from fedchurn.client.importer import read_log_devices
from fedchurn.shared.events import local_day
from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.device_store import DeviceStore
from fedchurn.simulations.population import generate_devices
from fedchurn.simulations.scenario import Scenario, load_scenario

__all__ = ["MEMORY_ENV", "SimulatedShard", "app", "shard_devices"]

MEMORY_ENV = "FEDCHURN_SHARD_MEMORY_MB"  # a node's budget for prepared devices (default 1,500 MB)
DEFAULT_MEMORY_MB = 1500
STORE_KEY = "simulation-store"  # provisioning key: the run's shared device store (a folder)
WARM_LIMIT_BYTES = 1 << 30  # a node prepares its whole shard up front if its slots fit in this
WARM_CHUNK = 512
LEDGER_KEY = "contribution-ledger"  # provisioning key: the run's contribution ledger file


@lru_cache(maxsize=4)
def _scenario(name: str) -> Scenario:
    return load_scenario(name)


def _log(cfg: RunConfig) -> tuple[tuple[np.ndarray, ...], int]:
    """The run's real log split per user (users sorted by id); today = the log's last local day."""
    return read_log_devices(cfg.events_file, cfg.events_map, cfg.events_tz)


def shard_devices(n_devices: int, partition: int, partitions: int) -> list[int]:
    """The devices node `partition` of `partitions` serves."""
    return list(range(partition, n_devices, partitions))


def _identity(cfg: RunConfig) -> tuple[object, ...]:
    """What a prepared device depends on: the population (or log) and the labelling."""
    return (
        cfg.seed,
        cfg.scenario,
        cfg.days,
        cfg.events_file,
        cfg.events_map,
        cfg.events_tz,
        cfg.protocol(),
    )


class _ShardCache:
    """This process's prepared devices when no shared store is provisioned (tests that play nodes
    in one process), least recently used first. Module-level because Flower's simulation engine
    ships a fresh copy of the ClientApp with every message, while the process lives for the run."""

    def __init__(self) -> None:
        self.devices: OrderedDict[tuple[object, int], DeviceData] = OrderedDict()
        self.bytes = 0
        self.ledger = MemoryLedger()
        self.stores: dict[tuple[object, ...], DeviceStore] = {}


_CACHE = _ShardCache()


class SimulatedShard:
    plaintext_allowed = True

    @staticmethod
    def _partition(context: Context) -> tuple[int, int]:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])

    def roster(self, context: Context, cfg: RunConfig) -> list[int]:
        """The node's devices; with a shared store it also prepares them now (the node's first
        message), unless the shard is too large to keep: then each device on first use."""
        p, n = self._partition(context)
        mine = shard_devices(self._population(cfg), p, n)
        store = self._store(context, cfg)
        if store is not None and len(mine) * store.slot <= WARM_LIMIT_BYTES:
            for a in range(0, len(mine), WARM_CHUNK):
                store.get(mine[a : a + WARM_CHUNK], lambda ds: self._prepare(cfg, ds))
        return mine

    def serves(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> list[int]:
        p, n = self._partition(context)
        return [d for d in devices if d % n == p and 0 <= d < self._population(cfg)]

    def load(self, context: Context, cfg: RunConfig, devices: Sequence[int]) -> dict[int, DeviceData]:
        mine = self.serves(context, cfg, devices)
        store = self._store(context, cfg)
        if store is not None:
            return store.get(mine, lambda ds: self._prepare(cfg, ds))
        ident, cache = _identity(cfg), _CACHE
        missing = [d for d in mine if (ident, d) not in cache.devices]
        if missing:
            for d, data in zip(missing, self._prepare(cfg, missing), strict=True):
                cache.devices[(ident, d)] = data
                cache.bytes += data.nbytes
        out = {}
        for d in mine:
            cache.devices.move_to_end((ident, d))
            out[d] = cache.devices[(ident, d)]
        budget = int(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_MB)) * 2**20
        while cache.bytes > budget and len(cache.devices) > len(mine):
            _, old = cache.devices.popitem(last=False)
            cache.bytes -= old.nbytes
        return out

    def _store(self, context: Context, cfg: RunConfig) -> DeviceStore | None:
        """The run's shared device store, when the runner provisioned one."""
        settings, _ = device_settings(context.node_config)
        root = settings.get(STORE_KEY)
        if not root:
            return None
        ident = _identity(cfg)
        if ident not in _CACHE.stores:
            digest = hashlib.sha256(repr(ident).encode()).hexdigest()[:16]
            _CACHE.stores[ident] = DeviceStore(
                Path(str(root)) / digest,
                self._population(cfg),
                self._capacity(cfg),
                cfg.model_spec().n_features,
            )
        return _CACHE.stores[ident]

    @staticmethod
    def _capacity(cfg: RunConfig) -> int:
        """Most labelled days a device can have: its days of history."""
        if not cfg.events_file:
            return max(1, cfg.days)
        arrays, today = _log(cfg)
        first = min(int(local_day(a["ts"], a["tz_min"]).min()) for a in arrays)
        return max(1, today - first + 1)

    @staticmethod
    def _population(cfg: RunConfig) -> int:
        return len(_log(cfg)[0]) if cfg.events_file else cfg.devices

    @staticmethod
    def _prepare(cfg: RunConfig, devices: list[int]) -> list[DeviceData]:
        if cfg.events_file:
            arrays, today = _log(cfg)
            chunks = [arrays[d] for d in devices]
            events = np.concatenate(chunks)
            rows = np.concatenate([np.full(len(c), j, dtype=np.int64) for j, c in enumerate(chunks)])
            starts = [int(local_day(c["ts"], c["tz_min"]).min()) for c in chunks]
            todays = [today] * len(devices)
        else:
            events, rows, starts_a, todays_a = generate_devices(
                cfg.seed, np.asarray(devices, dtype=np.int64), _scenario(cfg.scenario), cfg.days
            )
            starts, todays = list(starts_a), list(todays_a)
        return prepare_devices(events, rows, starts, todays, cfg.protocol())

    def ledger(self, context: Context) -> ContributionLedger:
        """The run's shared ledger file when provisioned (every process of the simulation sees the
        same one), else this process's memory."""
        settings, _ = device_settings(context.node_config)
        path = settings.get(LEDGER_KEY)
        return FileLedger(Path(str(path))) if path else _CACHE.ledger

    def coins(self, cfg: RunConfig, device: int, salt: int) -> np.random.Generator | None:
        return simulated_entropy(cfg, device, salt)

    def serialised(self, context: Context) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # no network: nothing to time, and the engine runs nodes apart


app = make_client_app(SimulatedShard())
