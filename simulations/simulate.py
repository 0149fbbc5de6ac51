"""`fedchurn simulate`: a federated run on Flower's simulation engine, baselines, and a report."""

from __future__ import annotations

import json
import re
import resource
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedchurn.client.importer import read_log_devices
from fedchurn.server.run_output import load_model
from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.events import local_day
from fedchurn.shared.model_format import churn_probability, init_params
from fedchurn.shared.protocol import day_text
from fedchurn.shared.run_config import SIMULATION_NODES, RunConfig, is_final_eval_device
from fedchurn.simulations.dataset import Dataset, Examples, build_dataset
from fedchurn.simulations.flower_runner import run_flower
from fedchurn.simulations.population import PARALLEL_FROM, generate_population
from fedchurn.simulations.preflight import PREVIOUS_RUN, preflight
from fedchurn.simulations.process_memory import ProcessTreeMemory
from fedchurn.simulations.provision import provision_simulation
from fedchurn.simulations.report import write_report
from fedchurn.simulations.scenario import load_scenario

_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def clear_previous_run(out: Path) -> None:
    """Remove what an earlier run left in `out` (`PREVIOUS_RUN`; `check_out_folder` has made sure
    it is a run's folder); other files stay."""
    for name in PREVIOUS_RUN:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def last_error(log: Path) -> str:
    """The last exception line ("SomeError: message") Flower wrote to the run's log, or ""."""
    if not log.is_file():
        return ""
    found = ""
    with log.open(errors="replace") as f:
        for line in f:
            m = _ERROR_LINE.match(line.strip())
            if m:
                found = f"{m.group(1)}: {m.group(2)}"
    return found


def check_audit_db(url: str) -> None:
    """Open (and create or migrate) the audit database before anything starts: a bad URL or a
    file that is no database is named here, not in the aggregator's log after Flower started."""
    from sqlalchemy.exc import SQLAlchemyError

    from fedchurn.server.audit import AuditError, AuditStore
    from fedchurn.server.database_url import parse, shown

    where = shown(parse(url, "--audit-db"))
    try:
        AuditStore(url).close()
    except (AuditError, SQLAlchemyError, OSError) as e:
        raise ValueError(f"--audit-db {where}: {type(e).__name__}: {e}") from None


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


T = TypeVar("T")


def in_background(fn: Callable[[], T], name: str) -> Future[T]:
    """`fn()` in a daemon thread; its result or its exception comes out of `.result()`. A run that
    fails or is interrupted exits without waiting for it; an in-process caller whose run failed
    leaves the thread to finish on its own (its result, or error, is then never read)."""
    fut: Future[T] = Future()

    def work() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed to the caller by fut.result(), not swallowed
            fut.set_exception(e)

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut


def _read_log(cfg: RunConfig) -> tuple[np.ndarray, ...]:
    """The log's users' events, users sorted by id (the order the ClientApp indexes them in)."""
    return read_log_devices(cfg.events_file, cfg.events_map, cfg.events_tz)[0]


def log_dataset(cfg: RunConfig) -> Dataset:
    arrays, today = read_log_devices(cfg.events_file, cfg.events_map, cfg.events_tz)
    ev = np.concatenate(arrays)
    dev = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    start = np.array([int(local_day(a["ts"], a["tz_min"]).min()) for a in arrays])
    return build_dataset(ev, dev, start, np.full(len(arrays), today), cfg)


MIN_CLASS = 20  # fewest churners or stayers in a test set whose AUC means anything


def check_log_setup(cfg: RunConfig, data: Dataset) -> None:
    """Refuse a log run whose protocol cannot give a meaningful result, before any training."""
    arrays, today = read_log_devices(cfg.events_file, cfg.events_map, cfg.events_tz)
    proto = cfg.protocol()
    first = min(int(local_day(a["ts"], a["tz_min"]).min()) for a in arrays)
    cats = {int(c) for a in arrays for c in np.unique(a["cat"])}
    known = [CATEGORY_IDS[c] for c in sorted(cats)]
    if not any(CATEGORY_IDS.index(c) in cats for c in proto.activity):
        raise ValueError(
            f"--activity {','.join(proto.activity)}: the log has no such events, so no day is active; "
            f"its categories: {', '.join(known)}"
        )
    cut = proto.cutoff_day
    if cut is not None and (cut < first or cut + proto.horizon > today):
        raise ValueError(
            f"--cutoff {cfg.cutoff}: the log runs {day_text(first)}..{day_text(today)}; the cutoff must be "
            f"in it with its {proto.horizon}-day outcome window (so by {day_text(today - proto.horizon)})"
        )
    test, train = data.test, data.train
    churned = int(test.churn.sum())
    stayed = len(test.churn) - churned
    if min(churned, stayed) < MIN_CLASS:
        raise ValueError(
            f"the held-out devices hold {churned} churners and {stayed} others under {proto.describe()}; "
            f"at least {MIN_CLASS} of each are needed for a meaningful ROC-AUC (change --cutoff, "
            "--population, --horizon, --silence-days or --eval-fraction)"
        )
    if len(train.churn) == 0 or train.churn.min() == train.churn.max():
        raise ValueError(
            f"the training devices have {len(train.churn)} labelled rows, all of one class, under "
            f"{proto.describe()}: nothing to learn"
        )


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
    preflight(cfg, out.resolve())  # every value, with its option named, before anything starts
    spec = cfg.model_spec()
    # A bad log, or a protocol it cannot answer, is named before anything is written.
    n_devices = len(_read_log(cfg)) if cfg.events_file else cfg.devices
    cfg.check_pool(n_devices)
    data: Dataset | None = None
    if cfg.events_file:
        data = log_dataset(cfg)  # the log fixes its own device count
        check_log_setup(cfg, data)
    if audit_db:
        check_audit_db(audit_db)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, devices=n_devices)
    clear_previous_run(out)
    provisioned = provision_simulation(cfg, out, audit_db)
    (out / "config.json").write_text(
        json.dumps({"run": asdict(cfg), "model": cfg.model_spec().to_dict()}, indent=2)
    )
    if not cfg.scheme.private:
        console.print(
            "[bold yellow]PLAINTEXT MODE[/]: updates travel unprotected; a baseline, not for devices."
        )
    # The baselines' examples are built while Flower runs: this process only waits for it, and
    # Flower's start-up (SuperLink, Ray, ClientApps importing torch) leaves a core mostly idle for
    # ~15 s, about what the build takes of one core (~10 s at 10,000 devices). A population large
    # enough to be generated in worker processes is built afterwards, as before: it would take
    # both cores from the run, and forking from a thread beside Flower's runner is not worth it.
    pending = (
        in_background(lambda: population_dataset(cfg), "baseline-examples")
        if baselines and data is None and cfg.devices < PARALLEL_FROM
        else None
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
        log = out / "flower" / "flower.log"
        reason = last_error(log)
        raise RuntimeError(f"the federated run did not finish{f': {reason}' if reason else ''}; see {log}")
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
    if baselines:
        # Imported here: scikit-learn, XGBoost and torch take seconds to import, and a run without
        # baselines (or a refused one) never needs them.
        from fedchurn.simulations.baselines import evaluate_scores, run_baselines

        if data is None:
            console.print("the same examples, centrally, for the baselines…")
            data = pending.result() if pending is not None else population_dataset(cfg)
        base = run_baselines(
            data,
            cfg.seed,
            spec,
            cfg.activity_categories(),
            progress=lambda m: console.print(f"  training {m}"),
        )
        central_params = base.pop("_central_net_params", None)
        if len(data.test.x):
            base["untrained"] = evaluate_scores(
                churn_probability(init_params(cfg.seed, spec), data.test.x, spec), data.test, spec.outputs
            )
            final = final_evaluation_examples(data.test, cfg)
            if len(final.x):  # the devices the federated evaluation summed: the same figures, centrally
                base["federated_checked_centrally"] = evaluate_scores(
                    churn_probability(params, final.x, spec), final, spec.outputs
                )
        summary["baselines"] = base
        if central_params is not None:
            np.save(out / "central_net_params.npy", central_params)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_report(out, summary, data.test.x if data is not None and len(data.test.x) else None)
    return summary
