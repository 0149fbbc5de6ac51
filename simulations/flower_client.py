"""The ClientApp for simulations: each node generates its own device from the population seed.

With `events-file` set, the node replays one user of a real log instead (one user = one device).
The population is never materialised: device i is a pure function of (seed, i, scenario).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedchurn.client.flower_app import LoadedDevice, make_client_app
from fedchurn.client.importer import ColumnMapping, read_log
from fedchurn.shared.events import local_day
from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.population import generate_device
from fedchurn.simulations.scenario import Scenario, load_scenario


@lru_cache(maxsize=4)
def _scenario(name: str) -> Scenario:
    return load_scenario(name)


@lru_cache(maxsize=2)
def _log(path: str, mapping: str) -> tuple[list[np.ndarray], int]:
    """A real log split per user (users sorted by id); today = the log's last local day."""
    per_user = read_log(Path(path), ColumnMapping.parse(mapping))
    users = sorted(per_user)
    arrays = [per_user[u] for u in users]
    today = max(int(local_day(a["ts"], a["tz_min"]).max()) for a in arrays)
    return arrays, today


def device_index(context: Context) -> int:
    if "device-index" in context.node_config:
        return int(context.node_config["device-index"])
    return int(context.node_config["partition-id"])


def load_device(context: Context, cfg: RunConfig, index: int) -> LoadedDevice:
    if cfg.events_file:
        arrays, today = _log(cfg.events_file, cfg.events_map)
        return LoadedDevice(index=index, events=arrays[index], today=today)
    hist = generate_device(cfg.seed, index, _scenario(cfg.scenario), cfg.days)
    return LoadedDevice(
        index=index,
        events=hist.events,
        first_day=int(hist.truth["start_day"]),
        today=int(hist.truth["today"]),
    )


# A simulated device's rounding coins are seeded (the run is reproducible from its seed); a real
# device's come from an OS-seeded generator. Its key holder pin comes from the provisioning file.
app = make_client_app(load_device, device_index, accept_assigned_device=True, seeded_entropy=True)
