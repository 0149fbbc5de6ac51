"""`fedchurn deploy local` ends by saying how the run ended (`run_status_line`, from the run's own
record) and that the federation it started is gone, API included, with the command that reads the
audit log again. The whole command (a TLS federation on loopback, ~70 s) is `slow`: the fast test
covers the status line, and tests/test_deploy_federation.py the federation itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import RunCli

from fedchurn.deploy_cli import run_status_line


def test_the_status_line_says_how_the_run_ended(tmp_path: Path) -> None:
    assert "the run wrote no result" in run_status_line(tmp_path)
    doc = {"status": "finished", "rounds": [{}, {}], "final_evaluation": {"roc_auc": 0.8123, "devices": 3}}
    (tmp_path / "federated.json").write_text(json.dumps(doc))
    assert run_status_line(tmp_path) == (
        "run status: [bold]finished[/], 2 rounds, ROC-AUC 0.812 on 3 held-out devices"
    )
    (tmp_path / "federated.json").write_text(json.dumps({"status": "running", "rounds": [{}]}))
    assert run_status_line(tmp_path) == "run status: [bold]running[/], 1 rounds"


@pytest.mark.slow
def test_deploy_local_ends_with_the_run_status_and_says_the_federation_is_gone(
    tmp_path: Path, run_cli: RunCli
) -> None:
    out = tmp_path / "local"
    args = ("deploy", "local", "--out", str(out), "--rounds", "1", "--nodes", "2", "--devices-per-node", "3")
    res = run_cli(*args, timeout=600, columns=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = " ".join((res.stdout + res.stderr).split())
    assert "run status: finished, 1 rounds" in text, text[-1500:]
    assert "the federation is stopped (SuperLink, SuperNodes, key holder, API)" in text
    assert f"fedchurn serve --database-url sqlite:///{out / 'audit.sqlite'}" in text
    assert (out / "audit.sqlite").exists()
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes of the federation outlived it: {left.stdout}"
