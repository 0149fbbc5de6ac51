from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> RunCli:
    """Run the installed `fedchurn` command; returns the CompletedProcess."""

    def run(
        *args: str, check: bool = False, timeout: float = 300, columns: int = 200
    ) -> subprocess.CompletedProcess[str]:
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, "COLUMNS": str(columns)}
        return subprocess.run(
            [str(VENV_BIN / "fedchurn"), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=env,
        )

    return run


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity, as inside a ServerApp process."""
    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)
