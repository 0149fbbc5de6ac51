"""`fedchurn simulate`: a federated run on Flower's simulation engine, baselines, and a report."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedchurn.client.importer import ColumnMapping, read_log
from fedchurn.server.run_output import load_model
from fedchurn.shared.events import local_day
from fedchurn.shared.model_format import DEFAULT_SPEC, churn_probability, init_params
from fedchurn.shared.run_config import SIMULATION_NODES, RunConfig, is_final_eval_device
from fedchurn.simulations.baselines import evaluate_scores, run_baselines
from fedchurn.simulations.dataset import Dataset, Examples, build_dataset
from fedchurn.simulations.flower_runner import run_flower
from fedchurn.simulations.population import generate_population
from fedchurn.simulations.process_memory import ProcessTreeMemory
from fedchurn.simulations.provision import provision_simulation
from fedchurn.simulations.report import write_report
from fedchurn.simulations.scenario import load_scenario


def population_dataset(cfg: RunConfig) -> Dataset:
    pop = generate_population(cfg.devices, cfg.seed, load_scenario(cfg.scenario), cfg.days)
    ev = pop.event_array()
    return build_dataset(
        ev,
        np.asarray(pop.events["device"]),
        np.asarray(pop.truth["start_day"]),
        np.asarray(pop.truth["today"]),
        cfg,
    )


@lru_cache(maxsize=1)
def _read_log(path: str, mapping: str) -> tuple[np.ndarray, ...]:
    """The log's users' events, users sorted by id (the order the ClientApp indexes them in)."""
    per_user = read_log(Path(path), ColumnMapping.parse(mapping))
    return tuple(per_user[u] for u in sorted(per_user))


def log_dataset(cfg: RunConfig) -> Dataset:
    arrays = _read_log(cfg.events_file, cfg.events_map)
    today = max(int(local_day(a["ts"], a["tz_min"]).max()) for a in arrays)
    ev = np.concatenate(arrays)
    dev = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    start = np.array([int(local_day(a["ts"], a["tz_min"]).min()) for a in arrays])
    return build_dataset(ev, dev, start, np.full(len(arrays), today), cfg)


def final_evaluation_examples(test: Examples, cfg: RunConfig) -> Examples:
    """The held-out rows of the devices in the run's final evaluation (`is_final_eval_device`)."""
    keep = np.array(
        [
            is_final_eval_device(cfg.seed, int(d), cfg.eval_fraction, cfg.eval_per_round > 0)
            for d in test.device
        ],
        dtype=bool,
    )
    return Examples(test.x[keep], test.time[keep], test.event[keep], test.device[keep])


def simulate(
    cfg: RunConfig,
    console: Console,
    out: Path,
    audit_db: str = "",
    baselines: bool = True,
    nodes: int = SIMULATION_NODES,
) -> dict[str, Any]:
    """One federated run on Flower's simulation engine: `nodes` simulation nodes, each a shard of
    the population (device d on node d mod nodes), then the central baselines and the report."""
    cfg.train_protection()  # refuse settings no upload could meet before anything is written
    # A bad log is named before anything is written.
    n_devices = len(_read_log(cfg.events_file, cfg.events_map)) if cfg.events_file else cfg.devices
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, devices=n_devices)
    (out / "rounds.jsonl").unlink(missing_ok=True)
    provisioned = provision_simulation(cfg, out, audit_db)
    (out / "config.json").write_text(
        json.dumps({"run": asdict(cfg), "model": DEFAULT_SPEC.to_dict()}, indent=2)
    )
    if cfg.protection == "plaintext":
        console.print(
            "[bold yellow]PLAINTEXT MODE[/]: updates travel unprotected; a baseline, not for devices."
        )
    t0 = time.time()
    seen = 0
    with Progress(
        TextColumn("[bold]federated rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    ) as bar:
        task = bar.add_task("starting Flower (SuperLink, Ray)…", total=cfg.num_server_rounds)

        def poll() -> None:
            nonlocal seen
            path = out / "rounds.jsonl"
            if not path.exists():
                return
            lines = path.read_text().splitlines()
            for line in lines[seen:]:
                r = json.loads(line)
                ev = r.get("evaluation") or {}
                auc = f" AUC {ev['roc_auc']:.3f}" if "roc_auc" in ev else ""
                bar.update(
                    task,
                    completed=r["round"],
                    description=(
                        f"round {r['round']}: {r['trained']}/{r['sampled']} trained, "
                        f"{r['bytes_per_device']:.0f} B/device{auc}"
                    ),
                )
            seen = len(lines)

        with ProcessTreeMemory() as memory:
            run_flower(
                cfg,
                out / "flower",
                num_supernodes=max(1, min(nodes, n_devices)),
                on_poll=poll,
                env=provisioned.env,
            )
    wall = time.time() - t0
    fed_path = out / "federated.json"
    fed = json.loads(fed_path.read_text()) if fed_path.exists() else {}
    if fed.get("status") != "finished":
        raise RuntimeError(f"the federated run did not finish; see {out / 'flower' / 'flower.log'}")
    params, _meta = load_model(out)
    summary: dict[str, Any] = {
        "config": asdict(cfg),
        "out_dir": str(out),
        "wall_seconds": wall,
        "updates_per_second": cfg.num_server_rounds * cfg.per_round / max(wall, 1e-9),
        "peak_rss_mb_runner": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # every process of the run (SuperLink, ServerApp, engine, ClientApps), summed PSS
        "peak_memory_mb": memory.peak_mb,
        "federated": fed,
    }
    data: Dataset | None = None
    if baselines:
        console.print("building the same examples centrally for the baselines…")
        data = log_dataset(cfg) if cfg.events_file else population_dataset(cfg)
        base = run_baselines(data, cfg.seed, cfg.horizon, progress=lambda m: console.print(f"  training {m}"))
        central_params = base.pop("_central_net_params", None)
        if len(data.test.x):
            base["untrained"] = evaluate_scores(
                churn_probability(init_params(cfg.seed, DEFAULT_SPEC), data.test.x), data.test, cfg.horizon
            )
            final = final_evaluation_examples(data.test, cfg)
            if len(final.x):  # the devices the federated evaluation summed: the same figures, centrally
                base["federated_checked_centrally"] = evaluate_scores(
                    churn_probability(params, final.x), final, cfg.horizon
                )
        summary["baselines"] = base
        if central_params is not None:
            np.save(out / "central_net_params.npy", central_params)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_report(out, summary, data.test.x if data is not None and len(data.test.x) else None)
    return summary
