"""`fedchurn bench`: every speed, size and quality figure of fedchurn, measured in one run on one machine.

One process runs every section, so ratios between figures hold (same machine, same load). The
federated sections run the real Flower simulation engine three times (fedchurn default protection,
fedchurn plaintext, Flower's quickstart FedAvg); the quality section scores the models of those
same runs against central baselines built from the same devices, so nothing is run twice.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.feature_bench import bench_batch, bench_one_device
from fedchurn.simulations.process_memory import ProcessTreeMemory
from fedchurn.simulations.real_log_bench import RealLogSizes, run_cdnow

PROTECTION_ROWS = ("fedchurn_default", "fedchurn_ckks", "flower_plain_fedavg", "flower_secaggplus")
HEADLINE = ("upload_bytes", "aggregate_1000_s", "protect_update_ms")
QUALITY_MODELS = ("federated_default", "federated_plain", "central_net", "xgboost", "logreg")
NO_DP_EPSILON = sys.float_info.max  # JSON has no infinity; the largest finite double stands for it


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; `quick` and `test` are smaller, and the output says so."""

    name: str
    feature_devices: int
    population_devices: int
    protection_updates: int  # a multiple of the default cohort size (32): every cohort is unmasked
    api_seconds: float
    scoring_devices: int
    sim_devices: int
    sim_rounds: int
    sim_per_round: int  # the run beside Flower's quickstart (same devices, rounds and cohort)
    sim_per_round_large: int  # a second fedchurn run with larger cohorts (0: none)
    memory_devices: int  # a short run on this many devices, for its peak memory (0: none)
    real_log: RealLogSizes | None = None  # the CDNOW benchmark (None: not at these sizes)


FULL = Sizes(
    "full", 100_000, 100_000, 1024, 10, 100_000, 10_000, 20, 300, 1000, 100_000, RealLogSizes(5, 200, 1000)
)
QUICK = Sizes("quick", 5_000, 20_000, 256, 3, 5_000, 3_000, 4, 200, 0, 0, RealLogSizes(1, 60, 1000))
# For the test suite only: every section runs for real, at sizes too small to be benchmarks. The
# CDNOW section needs the package index; the suite runs the same path on a small gzipped log
# (tests/test_simulate_events.py).
TEST = Sizes("test", 400, 2_000, 64, 1, 200, 300, 2, 20, 0, 0)
SIZES = {s.name: s for s in (FULL, QUICK, TEST)}
Section = Callable[[Sizes, Console, dict[str, Any]], dict[str, Any]]


def _per_100k(key: str, seconds: float, devices: int) -> dict[str, Any]:
    """A figure for 100,000 devices: measured, or extrapolated linearly (and said so)."""
    out: dict[str, Any] = {key: seconds * (100_000 / devices)}
    if devices != 100_000:
        out[f"{key}_note"] = f"extrapolated linearly from {devices:,} devices"
    return out


def _features(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    devices = sizes.feature_devices
    with console.status(f"features: {devices:,} devices × 90 days…"):
        batch = bench_batch(devices=devices, days=90)
        one = bench_one_device(90)
    out: dict[str, Any] = {
        "one_device_90d_ms": one,
        "batch_devices": devices,
        "batch_device_days": batch["device_days"],
        "batch_events": batch["events"],
        "batch_measured_s": batch["seconds"],
    }
    return {**out, **_per_100k("batch_100k_devices_s", batch["seconds"], devices)}


def _population(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    from fedchurn.simulations.population_bench import bench_population

    devices = sizes.population_devices
    with console.status(f"population: {devices:,} devices × 120 days…"):
        r = bench_population(devices=devices, days=120, write=False)
    out: dict[str, Any] = {k: v for k, v in r.items() if isinstance(v, int | float)}
    out["peak_rss_mb_note"] = "peak RSS of the bench process so far (features ran before)"
    return {**out, **_per_100k("devices_100k_days_120_s", r["seconds"], devices)}


def _protection(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    import warnings

    from fedchurn.server.secure_sum import PlaintextModeWarning
    from fedchurn.simulations.protection_bench import BENCH_NOISE_MULTIPLIER, bench_protection

    n = sizes.protection_updates
    with console.status(f"protection: {n:,} updates per mode…"), warnings.catch_warnings():
        warnings.simplefilter("ignore", PlaintextModeWarning)
        # The product's default protection, with DP noise (which widens the ring, not the upload).
        r = bench_protection(n, secagg=RunConfig().train_protection(BENCH_NOISE_MULTIPLIER))
    rows = (*PROTECTION_ROWS, "fedchurn_plaintext")
    found = [row for row in rows if isinstance(r.get(row), dict)]
    out: dict[str, Any] = {"n_updates": n}
    for key in HEADLINE:
        out[key] = {row: r[row][key] for row in found}
    # bench_protection's `aggregate_1000_s` is the time for the n updates it was given.
    out["aggregate_1000_s"] = {row: v * 1000 / n for row, v in out["aggregate_1000_s"].items()}
    if n != 1000:
        out["aggregate_1000_s_note"] = f"measured on {n:,} updates, scaled linearly to 1,000"
    out["details"] = {row: r[row] for row in found}
    return out


def _api(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    from fedchurn.server.api_bench import bench_api

    with console.status(f"transparency API: 100 connections on loopback, {sizes.api_seconds:g} s…"):
        r = bench_api(connections=100, seconds=sizes.api_seconds, tool="auto")
    return {k: v for k, v in r.items() if isinstance(v, int | float | str)}


def _scoring(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """Devices scored per second by the numpy path a device runs: events → features → churn score."""
    from fedchurn.client.aggregates import daily_aggregates_batch
    from fedchurn.client.features import extract_features
    from fedchurn.client.scoring import score_device
    from fedchurn.shared.model_format import churn_probability
    from fedchurn.simulations.policy_bench import reference_params
    from fedchurn.simulations.population import generate_population
    from fedchurn.simulations.scenario import load_scenario

    n, days, chunk = sizes.scoring_devices, 120, 250
    params, source = reference_params()
    with console.status(f"scoring: {n:,} devices × {days} days…"):
        pop = generate_population(n, 0, load_scenario("default"), days)
        ev = pop.event_array()
        dev = np.asarray(pop.events["device"])
        start = np.asarray(pop.truth["start_day"], dtype=np.int64)
        today = np.asarray(pop.truth["today"], dtype=np.int64)
        bounds = np.searchsorted(dev, np.arange(0, n + chunk, chunk))
        features_s = forward_s = 0.0
        for k, c0 in enumerate(range(0, n, chunk)):
            c1 = min(c0 + chunk, n)
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            first, last = int(start[c0:c1].min()), int(today[c0:c1].max())
            t = time.perf_counter()
            daily = daily_aggregates_batch(ev[lo:hi], dev[lo:hi] - c0, c1 - c0, first, last - first + 1)
            feats = extract_features(daily, np.arange(first, last + 1), start[c0:c1])
            rows = feats[np.arange(c1 - c0), today[c0:c1] - first]
            features_s += time.perf_counter() - t
            t = time.perf_counter()
            prob = churn_probability(params, rows)
            forward_s += time.perf_counter() - t
            assert np.all(np.isfinite(prob))
        sample = min(500, n)
        t = time.perf_counter()
        for i in range(sample):
            score_device(params, pop.device_events(i))
        single_s = time.perf_counter() - t
    return {
        "devices_per_s": n / (features_s + forward_s),
        "devices_per_s_how": (
            f"{n:,} devices × {days} days, chunks of {chunk}: events → daily aggregates → features → "
            "churn probability on each device's last day (the device's numpy arithmetic, batched)"
        ),
        "devices": n,
        "forward_only_devices_per_s": n / forward_s,
        "single_device_path_devices_per_s": sample / single_s,
        "single_device_path_how": f"client.scoring.score_device one device at a time ({sample} devices)",
        "model": source,
    }


# --- federated runs (simulation + quality) ---


def _throughput(updates: list[int], seconds: list[float]) -> dict[str, float]:
    """Client updates per second over the rounds after the first, and over all rounds.

    The first round is left out of the headline: for Flower's quickstart it includes the engine
    starting its ClientApp workers, which fedchurn's run does during its initial evaluation."""
    steady = slice(1, None) if len(seconds) > 1 else slice(None)
    return {
        "updates_per_s": sum(updates[steady]) / max(sum(seconds[steady]), 1e-9),
        "updates_per_s_all_rounds": sum(updates) / max(sum(seconds), 1e-9),
        "rounds_s": sum(seconds),
        "first_round_s": seconds[0] if seconds else math.nan,
        "updates": sum(updates),
    }


def _fedchurn_run(cfg: RunConfig, out: Path, console: Console, nodes: int) -> dict[str, Any]:
    from fedchurn.simulations.simulate import simulate

    shutil.rmtree(out, ignore_errors=True)  # no stale federated.json can pass for this run
    return run_figures(simulate(cfg, console, out, baselines=False, nodes=nodes))


def run_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What the bench reads from a `simulate` summary: wall time, memory, throughput, bytes."""
    rounds = summary["federated"]["rounds"]
    elapsed = [float(r["elapsed"]) for r in rounds]
    seconds = [float(rounds[0]["seconds"])] + [b - a for a, b in pairwise(elapsed)]
    return {
        "summary": summary,
        "wall_s": summary["wall_seconds"],
        "peak_mem_mb": summary["peak_memory_mb"],
        **_throughput([int(r["received"]) for r in rounds], seconds),
        "bytes_per_device": float(np.mean([r["bytes_per_device"] for r in rounds])),
    }


def _quickstart_run(cfg: RunConfig, out: Path, console: Console) -> dict[str, Any]:
    from fedchurn.server.settings import SETTINGS_ENV, AggregatorSettings
    from fedchurn.simulations import flower_quickstart as fq
    from fedchurn.simulations.flower_runner import run_flower

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    settings = AggregatorSettings(out_dir=str(out)).write(out / "private" / "aggregator.toml")
    t0 = time.time()
    with (
        console.status(f"Flower quickstart FedAvg: {cfg.num_server_rounds} rounds × {cfg.per_round}…"),
        ProcessTreeMemory() as mem,
    ):
        run_flower(
            cfg,
            out / "flower",
            num_supernodes=max(cfg.per_round, 1),
            components=fq.COMPONENTS,
            env={SETTINGS_ENV: str(settings)},
        )
    wall = time.time() - t0
    status_path = out / fq.STATUS_FILE
    doc = json.loads(status_path.read_text()) if status_path.exists() else {}
    if doc.get("status") != "finished":
        raise RuntimeError(f"the Flower quickstart run did not finish; see {out / 'flower' / 'flower.log'}")
    return quickstart_figures(doc, wall, mem.peak_mb, np.load(out / fq.PARAMS_FILE))


def quickstart_figures(
    status: dict[str, Any], wall: float, peak_mb: float, params: np.ndarray
) -> dict[str, Any]:
    """What the bench reads from the quickstart's status file (replies and seconds per round)."""
    return {
        "wall_s": wall,
        "peak_mem_mb": peak_mb,
        **_throughput(status["replies"], status["round_seconds"]),
        "params": params,
    }


def _federated_runs(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """The runs on the same devices, rounds and engine; kept in `ctx` for the quality section."""
    if "runs" in ctx:
        return dict(ctx["runs"])
    from fedchurn.shared.run_config import SIMULATION_NODES

    work = Path(ctx.get("work_dir", "results/bench")).resolve()
    base = RunConfig(
        devices=sizes.sim_devices,
        num_server_rounds=sizes.sim_rounds,
        per_round=sizes.sim_per_round,
        eval_per_round=0,
        sampling_source="seeded",  # what `fedchurn simulate` runs: reproducible from the seed
    )
    runs: dict[str, Any] = {"config": base, "nodes": SIMULATION_NODES}
    steps = 3 + (1 if sizes.sim_per_round_large else 0)
    console.print(
        f"[bold]federated runs[/]: {base.devices:,} devices, {base.num_server_rounds} rounds, Flower "
        f"simulation engine, {SIMULATION_NODES} fedchurn simulation nodes, results in {work}"
    )
    console.print(f"1/{steps} fedchurn, default protection, {base.per_round} per round")
    runs["default"] = _fedchurn_run(base, work / "fedchurn_default", console, SIMULATION_NODES)
    if sizes.sim_per_round_large:
        large = replace(base, per_round=sizes.sim_per_round_large)
        console.print(f"2/{steps} fedchurn, default protection, {large.per_round} per round")
        runs["large"] = _fedchurn_run(large, work / "fedchurn_default_large", console, SIMULATION_NODES)
    console.print(
        f"{steps - 1}/{steps} fedchurn, plaintext (the labelled baseline), {base.per_round} per round"
    )
    plain = replace(base, protection="plaintext")
    runs["plain"] = _fedchurn_run(plain, work / "fedchurn_plaintext", console, SIMULATION_NODES)
    console.print(f"{steps}/{steps} Flower quickstart FedAvg, same model, devices, rounds, cohort and engine")
    runs["quickstart"] = _quickstart_run(base, work / "flower_quickstart", console)
    ctx["runs"] = runs
    return dict(runs)


def _simulation(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    runs = _federated_runs(sizes, console, ctx)
    cfg, d, p, q = runs["config"], runs["default"], runs["plain"], runs["quickstart"]
    out: dict[str, Any] = {
        "devices": cfg.devices,
        "rounds": cfg.num_server_rounds,
        "per_round": cfg.per_round,
        "supernodes": runs["nodes"],
        "wall_s": d["wall_s"],
        "updates_per_s": d["updates_per_s"],
        "updates_per_s_vs_quickstart": d["updates_per_s"] / max(q["updates_per_s"], 1e-9),
        "updates_per_s_wall": d["updates"] / d["wall_s"],
        "updates_per_s_all_rounds": d["updates_per_s_all_rounds"],
        "first_round_s": d["first_round_s"],
        "peak_mem_mb": d["peak_mem_mb"],
        "bytes_per_device": d["bytes_per_device"],
        "flower_quickstart_supernodes": max(cfg.per_round, 1),
        "flower_quickstart_updates_per_s": q["updates_per_s"],
        "flower_quickstart_wall_s": q["wall_s"],
        "flower_quickstart_updates_per_s_wall": q["updates"] / q["wall_s"],
        "flower_quickstart_updates_per_s_all_rounds": q["updates_per_s_all_rounds"],
        "flower_quickstart_first_round_s": q["first_round_s"],
        "flower_quickstart_peak_mem_mb": q["peak_mem_mb"],
        "plaintext_updates_per_s": p["updates_per_s"],
        "plaintext_wall_s": p["wall_s"],
        "plaintext_peak_mem_mb": p["peak_mem_mb"],
        "plaintext_bytes_per_device": p["bytes_per_device"],
        "updates_per_s_how": (
            "client updates received per second of server time in rounds 2..R (round 1 holds the "
            "engine's start-up); *_all_rounds: every round; *_wall: the whole run including "
            "Flower's start-up and, for fedchurn only, its final evaluation"
        ),
        "peak_mem_mb_how": "peak of the summed PSS of every process the run started (SuperLink, "
        "ServerApp, simulation engine, ClientApps), sampled every 0.5 s or, when a sample costs "
        "more than 2 % of a core, less often (~2.5 s apart in a 4-node simulation)",
        "comparison": (
            f"the same devices, rounds, cohort of {cfg.per_round}, net, initial weights and local SGD "
            f"on Flower's simulation engine; fedchurn: {runs['nodes']} simulation nodes, each a shard "
            "answering for its sampled devices in one message, FedAdam over protected uploads; "
            f"quickstart: {max(cfg.per_round, 1)} SuperNodes, one device and one message each, "
            "Flower's FedAvg over ArrayRecords"
        ),
    }
    if "large" in runs:
        big = runs["large"]
        out.update(
            {
                "per_round_large": big["summary"]["config"]["per_round"],
                "updates_per_s_large": big["updates_per_s"],
                "updates_per_s_large_vs_quickstart": big["updates_per_s"] / max(q["updates_per_s"], 1e-9),
                "wall_s_large": big["wall_s"],
                "peak_mem_mb_large": big["peak_mem_mb"],
                "large_how": "the same run with larger cohorts; its ratio is to the quickstart's rate "
                "at the smaller cohort (the quickstart's rate is set by one message per device)",
            }
        )
    return out


PFL_DIR = Path(__file__).resolve().parent / "pfl_bench"


def pfl_python() -> Path | None:
    """The pfl benchmark's own interpreter (`make pfl-venv`), if it was created."""
    py = PFL_DIR / ".venv" / "bin" / "python"
    return py if py.exists() else None


def export_workload(cfg: RunConfig, per_round: list[int], out: Path) -> Path:
    """The simulation's training devices, prepared by the devices' own code, for another simulator:
    `devices.npz` (rows, per-device offsets, the net's input scale and initial weights) and
    `config.json` (rounds, cohorts, local SGD)."""
    from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
    from fedchurn.shared.run_config import is_eval_device
    from fedchurn.simulations.flower_client import SimulatedShard

    out.mkdir(parents=True, exist_ok=True)
    pool = [d for d in range(cfg.devices) if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    xs, ts, es, offsets = [], [], [], [0]
    for a in range(0, len(pool), 1000):
        for data in SimulatedShard._prepare(cfg, pool[a : a + 1000]):
            xs.append(data.x)
            ts.append(data.time)
            es.append(data.event)
            offsets.append(offsets[-1] + len(data.x))
    np.savez(
        out / "devices.npz",
        x=np.concatenate(xs).astype(np.float32),
        time=np.concatenate(ts).astype(np.int64),
        event=np.concatenate(es).astype(bool),
        offsets=np.asarray(offsets, dtype=np.int64),
        input_scale=np.asarray(DEFAULT_SPEC.input_scale, dtype=np.float32),
        init_params=init_params(cfg.seed, DEFAULT_SPEC).astype(np.float32),
    )
    (out / "config.json").write_text(
        json.dumps(
            {
                "rounds": cfg.num_server_rounds,
                "per_round": per_round,
                "local_epochs": cfg.local_epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "seed": cfg.seed,
            }
        )
    )
    return out


def _pfl(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """Apple's pfl 0.6 on the same devices, rounds, cohorts and local SGD, in its own venv."""
    py = pfl_python()
    if py is None:
        return {"skipped": f"pfl's venv is not there: `make pfl-venv` creates it ({PFL_DIR / 'README.md'})"}
    work = Path(ctx.get("work_dir", "results/bench")).resolve() / "pfl"
    cfg = replace(RunConfig(), devices=sizes.sim_devices, num_server_rounds=sizes.sim_rounds)
    cohorts = [c for c in (sizes.sim_per_round, sizes.sim_per_round_large) if c]
    with console.status("pfl: the same training devices, prepared by the devices' code…"):
        data = export_workload(cfg, cohorts, work / "data")
    console.print(f"pfl 0.6 (its own venv): {cfg.num_server_rounds} rounds × {', '.join(map(str, cohorts))}")
    result = work / "pfl.json"
    subprocess.run(
        [str(py), str(PFL_DIR / "run_pfl.py"), str(data), str(result)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=3600,
    )
    doc = json.loads(result.read_text())
    out: dict[str, Any] = {
        "pfl_version": doc.get("pfl_version"),
        "settings": doc.get("settings"),
        "workers": doc.get("workers"),
        "how": "pfl's own FedAvg simulation (its multi-worker mode, `workers` processes on this machine) "
        "on the same training devices, rounds, cohorts and local SGD (no protection, no Flower): "
        "client updates per second in rounds 2..R",
    }
    for run in doc["runs"]:
        suffix = "" if run["per_round"] == sizes.sim_per_round else "_large"
        out[f"updates_per_s{suffix}"] = run["updates_per_s"]
        out[f"wall_s{suffix}"] = run["wall_s"]
        out[f"per_round{suffix}"] = run["per_round"]
    sim = ctx.get("figures", {}).get("simulation", {})
    if "updates_per_s" in out and "updates_per_s" in sim:
        out["fedchurn_vs_pfl"] = sim["updates_per_s"] / max(out["updates_per_s"], 1e-9)
    return out


def _memory(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of a short run on a large population: every shard prepares its devices."""
    if not sizes.memory_devices:
        return {"skipped": f"{sizes.name} sizes: the large-population memory run is part of the full bench"}
    from fedchurn.shared.run_config import SIMULATION_NODES

    work = Path(ctx.get("work_dir", "results/bench")).resolve() / "memory"
    cfg = RunConfig(
        devices=sizes.memory_devices,
        num_server_rounds=3,
        per_round=1000,
        eval_per_round=0,
        sampling_source="seeded",
    )
    console.print(
        f"[bold]memory[/]: {cfg.devices:,} devices, {cfg.num_server_rounds} rounds × {cfg.per_round}"
    )
    run = _fedchurn_run(cfg, work, console, SIMULATION_NODES)
    store = sum(f.stat().st_blocks * 512 for f in (work / "devices").rglob("*") if f.is_file())
    return {
        "devices": cfg.devices,
        "peak_mem_mb": run["peak_mem_mb"],
        "device_store_mb_on_disk": store / 2**20,
        "wall_s": run["wall_s"],
        "how": "peak of the summed PSS of every process of the run; the shards' prepared devices "
        "live in files read per round (device_store_mb_on_disk: in the OS page cache as memory "
        "allows, not process memory)",
    }


def _quality(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """ROC-AUCs of the federated runs' models and of central baselines on the same held-out devices."""
    from fedchurn.server.run_output import load_model
    from fedchurn.shared.model_format import churn_probability
    from fedchurn.simulations.baselines import evaluate_scores, run_baselines
    from fedchurn.simulations.simulate import population_dataset

    runs = _federated_runs(sizes, console, ctx)
    cfg = runs["config"]
    fed_d = runs["default"]["summary"]["federated"]
    fed_p = runs["plain"]["summary"]["federated"]
    with console.status("quality: the same devices' examples, built centrally…"):
        data = population_dataset(cfg)
    spec = cfg.model_spec()
    base = run_baselines(
        data, cfg.seed, spec, cfg.activity_categories(), lambda m: console.print(f"  quality: training {m}")
    )
    base.pop("_central_net_params", None)
    test = data.test

    def central_auc(params: np.ndarray) -> Any:
        return evaluate_scores(churn_probability(params, test.x, spec), test, spec.outputs).get("roc_auc")

    default_params, _ = load_model(Path(runs["default"]["summary"]["out_dir"]))
    out: dict[str, Any] = {
        "federated_default": fed_d.get("final_evaluation", {}).get("roc_auc"),
        "federated_plain": fed_p.get("final_evaluation", {}).get("roc_auc"),
        **{m: base.get(m, {}).get("roc_auc") for m in ("central_net", "xgboost", "logreg")},
        "flower_quickstart_fedavg": central_auc(runs["quickstart"]["params"]),
        "federated_default_checked_centrally": central_auc(default_params),
        "test_devices": len(test.x),
        "test_churners": int(test.churn.sum()),
        "metric": (
            f"ROC-AUC of churn within {cfg.horizon} days on the held-out devices' evaluation day, "
            "from the score histogram (federated: summed across devices under protection)"
        ),
        "scenario": cfg.scenario,
    }
    if sizes is not FULL:
        out["auc_note"] = (
            f"{sizes.name} sizes: {len(test.x)} held-out devices, {int(test.churn.sum())} churners, "
            f"{cfg.num_server_rounds} rounds; wide error bars, not the product's quality"
        )
    if "skipped" in base:
        out["baselines_note"] = base["skipped"]
    out.update(epsilon_of_run(cfg, fed_d.get("rounds", [])))
    return out


def epsilon_of_run(cfg: RunConfig, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """ε of the default run as the run records it; a run without DP has no bound (ε = ∞)."""
    last = rounds[-1].get("epsilon") if rounds else None
    if isinstance(last, int | float) and math.isfinite(last):
        return {
            "epsilon": float(last),
            "epsilon_bounded": True,
            "epsilon_note": f"ε spent after {len(rounds)} rounds at δ = {cfg.delta:g} (RDP accountant)",
        }
    return {
        "epsilon": NO_DP_EPSILON,
        "epsilon_bounded": False,
        "target_epsilon": cfg.target_epsilon,
        "epsilon_note": (
            f"the default run has no differential privacy (target_epsilon = {cfg.target_epsilon:g}: "
            "no noise, no accountant; the run records ε = null), so ε is unbounded (∞). JSON has no "
            "infinity: `epsilon` holds the largest finite double instead, never a small number"
        ),
    }


def _real_log(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """CDNOW under the standard churn protocol: federated (default protection) beside central."""
    if sizes.real_log is None:
        return {"note": f"{sizes.name} sizes: the CDNOW benchmark runs at quick and full sizes only"}
    work = Path(ctx["work_dir"])
    return run_cdnow(sizes.real_log, console, work, work / "cache")


def _whatif(sizes: Sizes, console: Console, ctx: dict[str, Any]) -> dict[str, Any]:
    """The what-if lab as `fedchurn whatif --policy default --policy random --policy none` runs it."""
    from fedchurn.simulations.whatif import load_arm, run_whatif

    devices = sizes.population_devices
    arms = [load_arm(a) for a in ("default", "random", "none")]
    with console.status(f"what-if lab: {devices:,} devices × 120 days, 3 policies…"):
        t = time.perf_counter()
        r = run_whatif(arms, devices, 120, seed=0, workers=2)
        seconds = time.perf_counter() - t
    policy_rates = [a["device_days_per_s"] for a in r["arms"].values() if a["device_days_per_s"]]
    up = r["arms"]["default"]["uplift_vs_random"]["90"]
    out: dict[str, Any] = {
        "devices": devices,
        "seconds": seconds,
        "policy_device_days_per_s_slowest_arm": min(policy_rates),
        "model_vs_random_success": r["model_vs_random_success"],
        "uplift_vs_random_90d": up["value"],
        "uplift_vs_random_90d_ci95_low": up["ci95_low"],
        "uplift_vs_random_90d_ci95_high": up["ci95_high"],
    }
    return {**out, **_per_100k("devices_100k_days_120_s", seconds, devices)}


SECTIONS: dict[str, Section] = {
    "features": _features,
    "population": _population,
    "protection": _protection,
    "api": _api,
    "scoring": _scoring,
    "simulation": _simulation,
    "pfl": _pfl,
    "memory": _memory,
    "quality": _quality,
    "real_log": _real_log,
    "whatif": _whatif,
}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_bench(
    quick: bool = False,
    console: Console | None = None,
    only: list[str] | None = None,
    sizes: Sizes | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Every section in one process; `sizes` overrides `quick` (the test suite's TEST sizes)."""
    # Idle OpenMP threads must sleep, not spin: on a shared 2-core machine spinning made XGBoost
    # and torch 7-8x slower (42 s against 6.6 s). The CLI sets it for every command (decision
    # 131); this covers callers of `run_bench` that do not go through it (the tests).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    console = console or Console()
    sizes = sizes or (QUICK if quick else FULL)
    if sizes is not FULL:
        console.print(
            f"[yellow]{sizes.name} sizes[/] — smaller than the full benchmark: "
            f"features {sizes.feature_devices:,} devices, population {sizes.population_devices:,}, "
            f"protection {sizes.protection_updates:,} updates, scoring {sizes.scoring_devices:,} devices, "
            f"simulation {sizes.sim_devices:,} devices × {sizes.sim_rounds} rounds × {sizes.sim_per_round}"
            + (f" and × {sizes.sim_per_round_large}" if sizes.sim_per_round_large else "")
            + "; "
            "figures scaled to the full size say so (*_note)"
        )
    figures: dict[str, Any] = {
        "quick": sizes is not FULL,
        "sizes": asdict(sizes),
        "machine": machine(),
        "started_at": time.time(),
    }
    ctx: dict[str, Any] = {"work_dir": work_dir or Path("results/bench")}
    t_all = time.perf_counter()
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        console.rule(f"[bold]{name}")
        t = time.perf_counter()
        figures[name] = fn(sizes, console, ctx)
        ctx["figures"] = figures
        figures[name]["section_seconds"] = time.perf_counter() - t
        console.print(f"{name}: {figures[name]['section_seconds']:.1f} s")
    if "protection" in figures:  # the comparison the issue asks for, at the top level
        prot = figures["protection"]
        for key in HEADLINE:
            figures[key] = dict(prot[key])
        figures["headline_notes"] = headline_notes(prot)
    figures["total_seconds"] = time.perf_counter() - t_all
    console.print(f"[bold]fedchurn bench[/] ({sizes.name} sizes): {figures['total_seconds']:.0f} s in all")
    return figures


def headline_notes(prot: dict[str, Any]) -> dict[str, str]:
    """How each top-level figure was obtained, in terms of the 1,000 updates it is reported for."""
    from fedchurn.simulations.protection_bench import SECAGGPLUS_CLIENTS

    n, details = prot["n_updates"], prot["details"]
    notes = {
        "aggregate_1000_s": f"measured on {n:,} updates, scaled linearly to 1,000"
        if n != 1000
        else "measured on 1,000 updates",
        "upload_bytes": "bytes the device sends per round, every protocol message counted; "
        "Flower rows: serialised bodies of Flower 1.41 Message replies",
    }
    ckks = details.get("fedchurn_ckks", {}).get("aggregate_measured_updates")
    if ckks is not None and ckks != 1000:
        notes["fedchurn_ckks"] = f"aggregation measured on {ckks:,} updates, scaled linearly to 1,000"
    if "flower_secaggplus" in details:
        notes["flower_secaggplus"] = (
            f"Flower's secaggplus_mod driven through its 4 stages for {SECAGGPLUS_CLIENTS} clients; "
            f"server unmasking measured per client, × 1,000; excludes SecAggPlusWorkflow's routing "
            "and the four message round trips"
        )
    if "flower_plain_fedavg" in details:
        notes["flower_plain_fedavg"] = "no protection: protect_update_ms is 0 by definition"
    return notes


def print_table(figures: dict[str, Any], console: Console) -> None:
    title = "fedchurn bench" + (f" ({figures['sizes']['name']} sizes)" if figures.get("quick") else "")
    if all(k in figures for k in HEADLINE):
        head = Table(title=f"{title}: protecting one update of the default model")
        head.add_column("mode")
        for key in HEADLINE:
            head.add_column(key, justify="right")
        for row in figures["upload_bytes"]:
            head.add_row(row, *(_fmt(figures[k].get(row)) for k in HEADLINE))
        console.print(head)
        for key, note in figures.get("headline_notes", {}).items():
            console.print(f"[dim]{key}: {note}[/]")
    table = Table(title=title)
    table.add_column("section")
    table.add_column("figure")
    table.add_column("value", justify="right")
    notes: list[str] = []
    for section, values in figures.items():
        if not isinstance(values, dict) or section in ("machine", "sizes", "headline_notes", *HEADLINE):
            continue
        for k, v in values.items():
            if section == "protection" and (k in HEADLINE or k == "details"):
                continue
            if isinstance(v, str):
                notes.append(f"{section}.{k}: {v}")
            elif isinstance(v, dict):
                for k2, v2 in v.items():
                    if isinstance(v2, int | float):
                        table.add_row(section, f"{k}.{k2}", _fmt(v2))
            elif isinstance(v, int | float) and not isinstance(v, bool):
                table.add_row(section, k, _fmt(v))
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/]")


def to_json(figures: dict[str, Any]) -> tuple[str, list[str]]:
    """Strict JSON (numpy values as plain numbers; NaN and infinities as null, and which ones were)."""
    replaced: list[str] = []

    def clean(v: Any, path: str) -> Any:
        if isinstance(v, np.generic | np.ndarray):
            v = v.tolist()
        if isinstance(v, dict):
            return {k: clean(x, f"{path}.{k}" if path else str(k)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, float) and not math.isfinite(v):
            replaced.append(path)
            return None
        return v

    return json.dumps(clean(figures, ""), indent=2, allow_nan=False) + "\n", replaced


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v >= NO_DP_EPSILON:
            return "∞ (unbounded)"
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)
