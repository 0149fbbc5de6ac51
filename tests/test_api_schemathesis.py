"""Schemathesis against the live server's OpenAPI schema: every operation, every phase.

Run through its CLI (`st run`) in a subprocess: schemathesis 4.32's pytest loader
(`schemathesis.pytest.from_fixture`) breaks on pytest 9 (it sets `Function._nodeid`), and the CLI
also runs the coverage, fuzzing and stateful phases. Bounded examples and a fixed seed keep it
deterministic and under a minute; the writable server gets the bearer token, so the write routes
are exercised too (and the `ignored_auth` check probes them without it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedchurn.server.api_bench import live_server

TOKEN = "schemathesis-" + "t" * 16
ST = Path(sys.executable).parent / "st"
# Rules between fields that JSON Schema cannot state (docs/api.md): a round's `received` at most its
# `sampled`, `finished_at` not before `started_at`, `skip_reason` only on a skipped round; a filter
# range that can hold something. Schema-valid requests that break them are answered 422 there; a
# `run_id` that names no run is 404 there (review 21), as on every route that takes one.
# One filter per entry: schemathesis ORs the filters of an entry (each path has one operation).
CONFIG = """
[[operations]]
include-path = "/v1/runs/{run_id}/rounds"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-path = "/v1/audit/rounds"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422"]
"""


def test_schemathesis_finds_no_failures(tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)  # found in the working directory
    with live_server(f"sqlite:///{tmp_path / 'audit.sqlite'}", TOKEN) as base:
        cmd = [
            str(ST),
            "run",
            f"{base}/openapi.json",
            "--max-examples=15",
            "--seed=20260105",
            "--generation-database=none",
            "--request-timeout=10",
            "--no-color",
            "--header",
            f"Authorization: Bearer {TOKEN}",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-12000:] + res.stderr[-3000:]
    assert "No issues found" in res.stdout
