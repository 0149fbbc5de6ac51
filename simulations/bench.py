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
    out["batch_100k_devices_s"] = batch["seconds"] * (100_000 / devices)
    out["batch_measured_s"] = batch["seconds"]
    if quick:
        out["batch_100k_devices_s_note"] = f"extrapolated linearly from {devices:,} devices (--quick)"
    return out


SECTIONS: dict[str, Section] = {"features": _features}


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
