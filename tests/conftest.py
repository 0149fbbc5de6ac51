from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import settings

# No per-example deadline: the suite shares two cores with Flower runs in the other worker, where a
# deadline measures the machine's load, not the code (the property tests assert behaviour only).
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A small federated run through Flower's simulation engine, shared by every test that reads a
    real run's outputs (the end-to-end tests, the bench's JSON check).

    `make test` runs the suite in two pytest-xdist workers, each its own session: the first worker
    to need the run makes it under a file lock in the run's shared temporary folder, and the other
    waits and reads it (pytest-xdist's recipe for a session fixture made once). Every worker reads
    the summary back from the run's `metrics.json`, so all see the same values."""
    from filelock import FileLock
    from rich.console import Console

    from fedchurn.shared.run_config import RunConfig
    from fedchurn.simulations.simulate import simulate

    base = tmp_path_factory.getbasetemp()
    in_worker = "PYTEST_XDIST_WORKER" in os.environ  # set in each worker of `pytest -n`
    out = (base.parent if in_worker else base) / "small_run"
    with FileLock(f"{out}.lock"):
        if not (out / "metrics.json").exists():
            cfg = RunConfig(
                num_server_rounds=3,
                devices=400,  # ~190 held-out devices: ~70 left for the final evaluation
                per_round=30,
                # ~2/3 of a sample has a scored day, and only those count towards k (10)
                eval_per_round=30,
                eval_fraction=0.5,
                seed=11,
                sampling_source="seeded",
            )  # centred (the default): round 0 measures the feature mean through the secure sum
            # one simulation node (one Ray actor): the suite's runs are small, and each actor costs
            # seconds of CPU to start
            simulate(cfg, Console(quiet=True), out, audit_db=f"sqlite:///{out / 'audit.sqlite'}", nodes=1)
    summary: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return out, summary


def fedchurn_cli(
    *args: str, check: bool = False, timeout: float = 300, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """Run the installed `fedchurn` command; returns the CompletedProcess."""
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


@pytest.fixture
def run_cli() -> RunCli:
    """`fedchurn_cli` as a fixture, for tests that take their tools as arguments."""
    return fedchurn_cli


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity, as inside a ServerApp process."""
    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


# The module whose tests take longest (a TLS federation, ~2.5 min of one worker): scheduled first.
_LONGEST_FIRST = ("test_deploy_federation",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: the federation, then every test that starts Flower, then the rest (a stable
    sort, so each module's tests keep their order). `make test`'s workers take modules in this
    order (`--no-loadscope-reorder`), so the short tests fill in around the long runs instead of a
    long run ending the suite alone."""

    def rank(item: pytest.Item) -> int:
        if item.path.stem in _LONGEST_FIRST:
            return 0
        return 1 if item.get_closest_marker("integration") else 2

    items.sort(key=rank)


API_TOKEN = "inputs-token-" + "x" * 16  # the write token of the `api` fixture's app


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """The transparency API in process (TestClient, writable with `API_TOKEN`) over a fresh audit
    store, and the store."""
    from fastapi.testclient import TestClient

    from fedchurn.server.api import create_app
    from fedchurn.server.audit import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    with TestClient(create_app(store.database_url, API_TOKEN, store=store)) as client:
        yield client, store
    store.close()
