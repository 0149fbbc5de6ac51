"""Synthetic event logs in the formats people import, shared by the tests that import them.

A small purchase log stands in for CDNOW (the bench fetches the real one): gzipped CSV, purchases
only, naive timestamps, no category column (a constant in the mapping). A parquet log carries a
simulated population's events under column names of its own, with each event's UTC offset.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.simulations.population import generate_population
from fedchurn.simulations.scenario import load_scenario

__all__ = ["MAP", "PARQUET_MAP", "START", "parquet_log", "purchase_log"]

START = datetime(1997, 1, 1)
MAP = "user=customer,timestamp=date,category=purchases,action=purchase,value=dollars"
PARQUET_MAP = "user=uid,timestamp=time,tz_offset=offset,category=kind,action=what,value=amount"


def purchase_log(path: Path, users: int = 600, seed: int = 0) -> Path:
    """Users buy at their own rate from a start day until a quit day (some never quit): naive
    local times, 1997-01-01 .. 1998-06-30, gzipped."""
    rng = np.random.default_rng(seed)
    lines = ["customer,date,cds,dollars"]
    for u in range(users):
        start = int(rng.integers(0, 90))
        quit_day = int(rng.integers(start + 30, 700))
        gap = float(rng.lognormal(3.2, 0.6))
        day = float(start)
        while day < min(quit_day, 545):
            t = START + timedelta(days=int(day), hours=int(rng.integers(8, 22)))
            lines.append(f"c{u:04d},{t:%Y-%m-%d %H:%M:%S},{int(rng.integers(1, 4))},{rng.uniform(5, 80):.2f}")
            day += rng.exponential(gap) + 1
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def parquet_log(path: Path, devices: int, days: int) -> Path:
    """Seed 3's default population as parquet (`PARQUET_MAP` reads it): users `user-000`, ..."""
    pop = generate_population(devices, 3, load_scenario("default"), days)
    ev = pop.events
    cats = [CATEGORIES[int(c)] for c in ev["cat"]]
    table = pa.table(
        {
            "uid": [f"user-{int(d):03d}" for d in ev["device"]],
            "time": np.asarray(ev["ts"]),
            "offset": np.asarray(ev["tz_min"]),
            "kind": [c.id for c in cats],
            "what": [c.actions[int(a)].name for c, a in zip(cats, ev["action"], strict=True)],
            "amount": np.asarray(ev["value"]),
        }
    )
    pq.write_table(table, path)
    return path
