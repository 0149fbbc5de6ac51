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
    env: dict[str, str] = {}
    key = private / "keyholder.key"
    if cfg.protection != "plaintext":
        pin = KeyHolder.provision(key, with_ckks=cfg.protection == "ckks")
        device = private / "device.toml"
        device.write_text("".join(f'{k} = "{v}"\n' for k, v in pin.to_node_config().items()))
        env[PROVISIONING_ENV] = str(device)
    settings = AggregatorSettings(
        out_dir=str(out),
        audit_db=audit_db,
        keyholder_key_file=str(key) if cfg.protection != "plaintext" else "",
        keyholder_state=str(private / "keyholder-state.sqlite") if cfg.protection != "plaintext" else "",
    )
    env[SETTINGS_ENV] = str(settings.write(private / "aggregator.toml"))
    return Provisioned(settings, env)
