"""Feature-extraction speed: one device with 90 days of history, and a 100,000-device batch."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fedchurn.client.aggregates import daily_aggregates_batch
from fedchurn.client.features import extract_features
from fedchurn.client.pipeline import device_features
from fedchurn.simulations.population import generate_device, generate_population
from fedchurn.simulations.scenario import load_scenario


def bench_one_device(days: int = 90, repeats: int = 50, seed: int = 0) -> float:
    """Median ms for events -> aggregates -> all daily feature vectors of one device."""
    sc = load_scenario("default")
    hist = generate_device(seed, 1, sc, days)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        device_features(hist.events)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def bench_batch(
    devices: int = 100_000,
    days: int = 90,
    seed: int = 0,
    chunk: int = 200,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Seconds to turn a generated population's events into every device-day's feature vector.

    Generation is excluded (timed separately); the batch runs in chunks so memory stays bounded.
    """
    sc = load_scenario("default")
    extract = 0.0
    n_vectors = 0
    events_total = 0
    for c0 in range(0, devices, chunk):
        n = min(chunk, devices - c0)
        pop = generate_population(n, seed + c0, sc, days)
        ev = pop.event_array()
        start = np.asarray(pop.truth["start_day"])
        first, last = int(start.min()), int(np.asarray(pop.truth["today"]).max())
        t = time.perf_counter()
        daily = daily_aggregates_batch(ev, np.asarray(pop.events["device"]), n, first, last - first + 1)
        feats = extract_features(daily, np.arange(first, last + 1), start)
        extract += time.perf_counter() - t
        n_vectors += feats.shape[0] * feats.shape[1]
        events_total += len(ev)
        if progress:
            progress(c0 + n)
    return {
        "devices": devices,
        "days": days,
        "seconds": extract,
        "device_days": n_vectors,
        "events": events_total,
    }
