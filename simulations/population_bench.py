"""Benchmark of the population generator: devices x days generated, seconds, peak memory.

Generation is timed on its own; writing the Parquet files is timed separately, because the first
is what a simulation run waits for and the second depends on the disk.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedchurn.simulations.population import default_workers, generate_population, write_population
from fedchurn.simulations.scenario import load_scenario


def _peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its (finished) worker processes, in MB."""
    scale = (
        1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    )  # ru_maxrss is bytes on macOS, KB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return own, children


def bench_population(
    devices: int = 100_000,
    days: int = 120,
    seed: int = 0,
    scenario: str = "default",
    workers: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Generate a population, time it, report peak RSS; optionally time writing it to Parquet."""
    sc = load_scenario(scenario)
    n_workers = default_workers(devices) if workers is None else workers
    t0 = time.perf_counter()
    pop = generate_population(devices, seed, sc, days=days, workers=n_workers)
    seconds = time.perf_counter() - t0
    own, children = _peak_rss_mb()
    out: dict[str, Any] = {
        "devices": devices,
        "days": days,
        "seed": seed,
        "scenario": scenario,
        "workers": n_workers,
        "events": pop.n_events,
        "events_per_device_day": pop.n_events / max(devices * days, 1),
        "seconds": round(seconds, 3),
        "devices_per_second": round(devices / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": round(own, 1),
        "peak_rss_worker_mb": round(children, 1),
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if write:
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            paths = write_population(pop, Path(tmp))
            out["write_seconds"] = round(time.perf_counter() - t1, 3)
            out["events_parquet_mb"] = round(paths["events"].stat().st_size / 1e6, 1)
        out["peak_rss_mb_after_write"] = round(_peak_rss_mb()[0], 1)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m fedchurn.simulations.population_bench [devices] [days] [workers]`."""
    args = sys.argv[1:] if argv is None else argv
    devices = int(args[0]) if len(args) > 0 else 100_000
    days = int(args[1]) if len(args) > 1 else 120
    workers = int(args[2]) if len(args) > 2 else None
    print(json.dumps(bench_population(devices, days, workers=workers), indent=2))


if __name__ == "__main__":
    main()
