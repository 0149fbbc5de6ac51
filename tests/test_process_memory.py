"""The run's memory sampler: it sees its child processes, and it never takes more than its share
of a core from the run it measures."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedchurn.simulations import process_memory
from fedchurn.simulations.process_memory import MAX_SHARE, ProcessTreeMemory, next_wait

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@given(
    cost=st.floats(min_value=0.0, max_value=10.0),
    interval=st.floats(min_value=0.01, max_value=5.0),
)
def test_the_sampler_waits_its_interval_or_long_enough_to_stay_within_its_share(
    cost: float, interval: float
) -> None:
    wait = next_wait(cost, interval)
    assert wait >= interval
    assert cost / (cost + wait) <= MAX_SHARE + 1e-12
    if cost <= MAX_SHARE * interval:
        assert wait == interval  # a cheap sample keeps the requested pace


def test_an_expensive_sample_spaces_the_next_one_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample that cost 50 ms of CPU (a 4-node simulation's) is followed by a 2.5 s wait, not
    the 0.5 s interval."""
    waits: list[float] = []
    stopped = threading.Event()

    class _Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(float(timeout or 0.0))
            if len(waits) == 3:
                stopped.set()
                return True
            return False

    mem = ProcessTreeMemory(interval=0.5)
    monkeypatch.setattr(mem, "_stop", _Stop())
    monkeypatch.setattr(mem, "_sample", lambda: 0.05)
    mem._run()
    assert stopped.is_set()
    assert waits == [pytest.approx(2.5)] * 3


def test_the_peak_counts_a_descendant_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grandchild that holds 200 MB raises the peak of its grandparent's tree by about that much:
    a sample begun after it touched every page sees it (the grandchild exits only then; a sample
    begun earlier can see part of it, which made this test flaky). The tree is rooted at a child
    of this test, so other tests' processes in this worker do not count."""
    hold = (
        "import sys; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ready', flush=True); sys.stdin.readline()"
    )
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}], check=True)"
    ready, sampled = threading.Event(), threading.Event()
    real = process_memory.descendants_pss_mb

    def sample(root: int) -> float:
        whole = ready.is_set()  # begun after every page was touched (one begun earlier saw fewer)
        out = real(root)
        if whole and out > 150:
            sampled.set()
        return out

    monkeypatch.setattr(process_memory, "descendants_pss_mb", sample)
    child = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        with ProcessTreeMemory(interval=0.01, root=child.pid) as mem:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            ready.set()
            assert sampled.wait(timeout=30), "the sampler never saw the grandchild's 200 MB"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert 190 <= mem.peak_mb <= 300
    assert mem.samples >= 1
