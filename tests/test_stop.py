"""Ctrl-C on `fedchurn simulate` leaves no process behind: not the SuperLink, not the ServerApp,
not Ray's actors or its dashboard and runtime-env agents (issue 20, item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import VENV_BIN

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it

TAG_ENV = "FEDCHURN_TEST_TAG"  # every descendant inherits it, wherever it is reparented


def _session(entry: Path) -> int:
    stat = (entry / "stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[3])


def _tagged(tag: str, sessions: frozenset[int] = frozenset()) -> list[str]:
    """Processes carrying the tag in their environment, or in one of `sessions` (Ray's agents
    overwrite their environment with their process title, but keep their session)."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _session(entry) in sessions or needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


def _sessions_of(tag: str) -> frozenset[int]:
    """The sessions the run's processes live in, other than this test's own."""
    own = os.getsid(0)
    pids = [line.split(":")[0] for line in _tagged(tag)]
    out = set()
    for pid in pids:
        try:
            out.add(_session(Path("/proc") / pid))
        except OSError:
            continue
    return frozenset(out - {own})


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it started training"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


def test_ctrl_c_stops_every_process_of_the_run(tmp_path: Path) -> None:
    assert sys.platform.startswith("linux")  # /proc tells which processes the run left
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_ENV: tag, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "run"
    args = ["--devices", "300", "--rounds", "500", "--per-round", "20", "--eval-per-round", "0"]
    args += ["--nodes", "1"]
    proc = subprocess.Popen(
        [str(VENV_BIN / "fedchurn"), "simulate", *args, "--no-baselines", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A shell gives its foreground job the default Ctrl-C action; a test runner's worker may
        # ignore SIGINT (pytest-xdist's do), and an ignored signal stays ignored across exec.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(out / "rounds.jsonl", proc, timeout=180)  # Ray's actors and agents are all up
        assert len(_tagged(tag)) > 3
        sessions = _sessions_of(tag)
        assert sessions  # the SuperLink runs in a session of its own
        proc.send_signal(signal.SIGINT)  # what a terminal sends its foreground process on Ctrl-C
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 10  # reparented processes may take a moment to be reaped
        while _tagged(tag, sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _tagged(tag, sessions) == []
    finally:
        if proc.poll() is None:
            proc.kill()
