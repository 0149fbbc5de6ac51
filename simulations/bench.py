"""`fedchurn bench`: every speed and size figure of fedchurn, measured in one run on one machine."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from fedchurn.simulations.feature_bench import bench_batch, bench_one_device

Section = Callable[[bool, Console], dict[str, Any]]


def _per_100k(key: str, seconds: float, devices: int) -> dict[str, Any]:
    """A figure for 100,000 devices: measured, or extrapolated linearly (and said so)."""
    out: dict[str, Any] = {key: seconds * (100_000 / devices)}
    if devices != 100_000:
        out[f"{key}_note"] = f"extrapolated linearly from {devices:,} devices (--quick)"
    return out


def _features(quick: bool, console: Console) -> dict[str, Any]:
    devices = 10_000 if quick else 100_000
    with console.status(f"features: {devices:,} devices × 90 days…"):
        batch = bench_batch(devices=devices, days=90)
    out: dict[str, Any] = {
        "one_device_90d_ms": bench_one_device(90),
        "batch_devices": devices,
        "batch_device_days": batch["device_days"],
        "batch_events": batch["events"],
    }
    out["batch_measured_s"] = batch["seconds"]
    return {**out, **_per_100k("batch_100k_devices_s", batch["seconds"], devices)}


def _population(quick: bool, console: Console) -> dict[str, Any]:
    from fedchurn.simulations.population_bench import bench_population

    devices = 20_000 if quick else 100_000
    with console.status(f"population: {devices:,} devices × 120 days…"):
        r = bench_population(devices=devices, days=120, write=False)
    out: dict[str, Any] = {k: v for k, v in r.items() if isinstance(v, int | float)}
    out["peak_rss_mb"] = r["peak_rss_mb"]
    return {**out, **_per_100k("devices_100k_days_120_s", r["seconds"], devices)}


def _protection(quick: bool, console: Console) -> dict[str, Any]:
    import warnings

    from fedchurn.server.secure_sum import PlaintextModeWarning
    from fedchurn.shared.run_config import RunConfig
    from fedchurn.simulations.protection_bench import BENCH_NOISE_MULTIPLIER, bench_protection

    n = 200 if quick else 1000
    with console.status(f"protection: {n} updates per mode…"), warnings.catch_warnings():
        warnings.simplefilter("ignore", PlaintextModeWarning)
        # The product's default protection, with DP noise (which widens the ring, not the upload).
        r = bench_protection(n, secagg=RunConfig().train_protection(BENCH_NOISE_MULTIPLIER))
    rows = (
        "fedchurn_default",
        "fedchurn_ckks",
        "fedchurn_plaintext",
        "flower_plain_fedavg",
        "flower_secaggplus",
    )
    out: dict[str, Any] = {"n_updates": n}
    for key in ("upload_bytes", "protect_update_ms", "aggregate_1000_s"):
        out[key] = {row: r[row].get(key) for row in rows if isinstance(r.get(row), dict)}
    out["details"] = {row: r[row] for row in rows if isinstance(r.get(row), dict)}
    return out


def _api(quick: bool, console: Console) -> dict[str, Any]:
    import shutil

    from fedchurn.server.api_bench import bench_api

    with console.status("transparency API: 100 connections on loopback…"):
        r = bench_api(
            connections=100, seconds=5 if quick else 10, tool="wrk" if shutil.which("wrk") else "httpx"
        )
    return {k: v for k, v in r.items() if isinstance(v, int | float | str)}


SECTIONS: dict[str, Section] = {
    "features": _features,
    "population": _population,
    "protection": _protection,
    "api": _api,
}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def run_bench(
    quick: bool = False, console: Console | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    console = console or Console()
    if quick:
        console.print("[yellow]--quick[/]: smaller sizes; figures marked as extrapolated where they are")
    figures: dict[str, Any] = {"quick": quick, "machine": machine(), "started_at": time.time()}
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        figures[name] = fn(quick, console)
        figures[name]["section_seconds"] = time.perf_counter() - t
    return figures


def print_table(figures: dict[str, Any], console: Console) -> None:
    table = Table(title="fedchurn bench" + (" (--quick)" if figures.get("quick") else ""))
    table.add_column("section")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for section, values in figures.items():
        if not isinstance(values, dict) or section == "machine":
            continue
        for k, v in values.items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    table.add_row(section, f"{k}.{k2}", _fmt(v2))
            else:
                table.add_row(section, k, _fmt(v))
    console.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)
