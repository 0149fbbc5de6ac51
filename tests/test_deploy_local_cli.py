"""`fedchurn deploy local` through the real command: it ends by saying how the run ended and
that the federation it started is gone (its API included), with the command that reads the
audit log again; no process of the federation outlives the command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import RunCli


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
