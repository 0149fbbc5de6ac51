"""`fedchurn simulate` builds its baselines' examples in a daemon thread while Flower runs: the
result, or the error, must come out exactly as if it had been built in line."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from fedchurn.simulations.simulate import in_background


def test_the_result_comes_out_of_the_thread() -> None:
    seen: list[str] = []

    def build() -> list[int]:
        seen.append(threading.current_thread().name)
        return [1, 2, 3]

    fut = in_background(build, "baseline-examples")
    assert fut.result(timeout=30) == [1, 2, 3]
    assert seen == ["baseline-examples"]  # it ran in its own thread, not the caller's


def test_an_error_in_the_thread_reaches_the_caller() -> None:
    def build() -> None:
        raise ValueError("--scenario nosuch: no such scenario")

    fut = in_background(build, "baseline-examples")
    with pytest.raises(ValueError, match="no such scenario"):
        fut.result(timeout=30)


def test_the_thread_does_not_hold_the_process_open() -> None:
    """A process whose run fails while the examples are still being built exits at once."""
    code = (
        "import threading\n"
        "from fedchurn.simulations.simulate import in_background\n"
        "in_background(threading.Event().wait, 'baseline-examples')  # never finishes\n"
        "raise SystemExit(3)  # the run failed\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert done.returncode == 3, done.stderr.decode()
