"""Peak memory of a run: every process it started (SuperLink, ServerApp, simulation engine,
ClientApps), summed as PSS so that pages they share are counted once. Linux /proc only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["ProcessTreeMemory", "descendants_pss_mb", "next_wait"]

# The sampler's share of one core at most. Reading PSS makes the kernel walk every page table of
# every process: ~50 ms of CPU per sample in a 4-node simulation (torch mapped into each
# ClientApp), which at one sample per 0.5 s was ~10 % of a core taken from the run it measured.
MAX_SHARE = 0.02


def next_wait(cost_s: float, interval: float, max_share: float = MAX_SHARE) -> float:
    """Seconds until the next sample: `interval`, or longer when a sample costs so much CPU that
    sampling every `interval` would take more than `max_share` of a core."""
    return max(interval, cost_s / max_share)


class ProcessTreeMemory:
    """Peak memory of every process started from this one while the block runs (the SuperLink,
    ServerApp, simulation engine and ClientApps): the sum of their PSS, so pages they share are
    not counted twice, sampled every `interval` s, or less often when sampling would take more
    than `MAX_SHARE` of a core (`next_wait`: ~2.5 s apart in a 4-node simulation, so a spike
    shorter than that can be missed). Linux /proc only; elsewhere the peak stays 0."""

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval = interval
        self.root = os.getpid() if root is None else root  # whose descendants are counted
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> float:
        """One sample; returns the CPU it cost this thread (the kernel's page walks included)."""
        t0 = time.thread_time()
        self.peak_mb = max(self.peak_mb, descendants_pss_mb(self.root))
        self.samples += 1
        return time.thread_time() - t0

    def _run(self) -> None:
        while True:
            cost = self._sample()
            if self._stop.wait(next_wait(cost, self.interval)):
                return


def descendants_pss_mb(root: int) -> float:
    """Summed PSS (RSS where PSS is unreadable) of every descendant of `root`, in MB."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return 0.0
    for name in entries:
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    todo, kb = list(children.get(root, [])), 0
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        kb += _pss_kb(pid)
    return kb / 1024


def _pss_kb(pid: int) -> int:
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0
