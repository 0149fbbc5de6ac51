"""`fedchurn population --report` explains every FAIL in words, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import RunCli

from fedchurn.simulations.population_report import MEANING


def test_a_failed_calibration_check_is_explained(tmp_path: Path, run_cli: RunCli) -> None:
    # 200 devices over 40 days are too few for some of the brief's figures: checks fail
    res = run_cli("population", "--devices", "200", "--days", "40", "--seed", "0", "--out", str(tmp_path),
                  "--report", check=True, columns=80)  # fmt: skip
    report = json.loads((tmp_path / "report" / "calibration.json").read_text())
    failed = [c for c in report["checks"] if not c["pass"]]
    assert failed, "this small population was expected to miss some figure of the brief"
    text = " ".join(res.stdout.split())
    for c in report["checks"]:
        assert c["meaning"] == MEANING[c["name"]]
    for c in failed:
        assert f"FAIL {c['name']}: the check asks that {c['meaning']}." in text
    assert "A FAIL means this population does not reproduce that figure of the brief" in text
    assert "…" not in res.stdout  # names are folded at 80 columns, never cut
    plots = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(plots) == len(report["plots"]) >= 6
