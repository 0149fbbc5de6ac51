"""The Flower app folder `flwr run` packages (a FAB), its run-config overrides, and where the
Flower commands that run it are.

Simulation (`simulations.flower_runner`) and deployment (`server.deploy`) ship the same app; only the
ClientApp differs (generated devices or device stores). Components name installed modules, so
the FAB carries no code and the SuperLink installs nothing.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
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


def write_run_config(cfg: RunConfig, path: Path) -> Path:
    """Every run-config key as a TOML file for `flwr run --run-config FILE` (so the run never
    depends on the FAB's defaults, and no setting rides on a command line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.to_flower().items()))
    return path


def flower_bin(name: str) -> str:
    """A Flower command from this interpreter's venv (`flwr run` needs the venv's, not PATH's)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port (loopback by default) for a server a run, a benchmark or a test starts itself."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
