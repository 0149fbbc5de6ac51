"""The Flower app folder `flwr run` packages (a FAB): its pyproject.toml and run-config overrides.

Simulation (`simulations.flower_runner`) and deployment (`server.deploy`) ship the same app; only the
ClientApp differs (generated devices or device stores). Components name installed modules, so
the FAB carries no code and the SuperLink installs nothing.
"""

from __future__ import annotations

import json
from typing import Any

from fedchurn import __version__
from fedchurn.shared.run_config import RunConfig

SERVERAPP = "fedchurn.server.app:app"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def app_pyproject(clientapp: str, defaults: RunConfig | None = None, serverapp: str = SERVERAPP) -> str:
    """The app's pyproject.toml; its config defaults come from RunConfig."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedchurn-app"',
        f'version = "{__version__}"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedchurn"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {json.dumps(serverapp)}",
        f"clientapp = {json.dumps(clientapp)}",
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in (defaults or RunConfig()).to_flower().items()]
    return "\n".join(lines) + "\n"


def config_overrides(cfg: RunConfig) -> str:
    """`flwr run`'s --run-config argument: every key, so the run never depends on the FAB defaults."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in cfg.to_flower().items())
