"""Provision a simulation the way an operator provisions a deployment: a key holder with its own
key, the aggregator's private settings, and devices that pin the key holder out of band.

Everything lands in `<run folder>/private/` (0700; key files 0600). The simulation's devices read
the pins from the file named by $FEDCHURN_DEVICE_CONFIG (Flower's simulation engine gives simulated
nodes no node configuration of their own); the ServerApp reads its settings from the file named
by $FEDCHURN_AGGREGATOR_CONFIG. Both variables are set in the environment of the SuperLink this
run starts, never on a command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedchurn.client.device_config import PROVISIONING_ENV
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.settings import SETTINGS_ENV, AggregatorSettings
from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.flower_client import LEDGER_KEY, STORE_KEY

__all__ = ["Provisioned", "provision_simulation"]


@dataclass(frozen=True)
class Provisioned:
    settings: AggregatorSettings
    env: dict[str, str]  # what the SuperLink (and so the ServerApp and the simulated nodes) inherits


def provision_simulation(cfg: RunConfig, out: Path, audit_db: str = "") -> Provisioned:
    """A fresh key holder (in-process in the simulation's ServerApp, as its own object with its own
    key), the aggregator settings and the devices' pins, for one simulated run written to `out`."""
    private = out / "private"
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(private, 0o700)
    for stale in private.glob("keyholder*"):
        stale.unlink()
    key = private / "keyholder.key"
    device: dict[str, str] = {
        LEDGER_KEY: str(private / "contributions.sqlite"),
        STORE_KEY: str(out / "devices"),  # the simulated devices' own storage (shared, sparse)
    }
    (private / "contributions.sqlite").unlink(missing_ok=True)
    if cfg.scheme.private:
        device.update(KeyHolder.provision(key, with_ckks=cfg.scheme.homomorphic).to_node_config())
    device_file = private / "device.toml"
    device_file.write_text("".join(f'{k} = "{v}"\n' for k, v in device.items()))
    env: dict[str, str] = {PROVISIONING_ENV: str(device_file)}
    settings = AggregatorSettings(
        out_dir=str(out),
        audit_db=audit_db,
        keyholder_key_file=str(key) if cfg.scheme.private else "",
        # The once-only state lives as long as the run's ServerApp (a simulation is never resumed);
        # a deployed key holder keeps it in SQLite with a full sync per answer.
        keyholder_state="",
    )
    env[SETTINGS_ENV] = str(settings.write(private / "aggregator.toml"))
    return Provisioned(settings, env)
