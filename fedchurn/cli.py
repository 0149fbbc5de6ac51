"""The `fedchurn` command: thin shells over library functions (Typer + Rich)."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedchurn.output_paths import check_out_dir, check_out_file
from fedchurn.server.database_url import DATABASE_URL_ENV
from fedchurn.shared.run_config import (
    OPTION_HELP,
    SIMULATE_DEFAULTS,
    SIMULATION_NODES,
    RunConfig,
    option_name,
    parse_target_epsilon,
)

if TYPE_CHECKING:
    pass

_SIM = SIMULATE_DEFAULTS  # ... and `simulate`'s, a study-sized run

app = typer.Typer(
    help="fedchurn: privacy-preserving, federated, on-device churn scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from fedchurn.shared.wire import WIRE_VERSION

        console.print(f"fedchurn {version('fedchurn')} (wire format {WIRE_VERSION}, flwr {version('flwr')})")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """fedchurn: privacy-preserving, federated, on-device churn scoring."""
    # Idle OpenMP threads sleep instead of spinning, in every command and the Flower processes it
    # starts (set before torch, scikit-learn or XGBoost load): beside another job on 2 cores,
    # spinning made `simulate`'s baselines 1.5-1.8x slower; alone it changes nothing (decisions 61, 131).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}")  # [policy], a path: text, not Rich markup
    raise typer.Exit(code)


@contextmanager
def _bar(what: str) -> Iterator[tuple[Progress, TaskID]]:
    """A progress bar on stderr (stdout may carry JSON), gone when the work is done."""
    with Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        yield bar, bar.add_task(what, total=None)


def _out_dir(path: Path, option: str) -> None:
    """Refuse, before any work, a folder the command could not write (`output_paths`)."""
    try:
        check_out_dir(path, option)
    except ValueError as e:
        _fail(str(e))


def _out_file(path: Path, option: str) -> None:
    """Refuse, before any work, a file the command could not write (`output_paths`)."""
    try:
        check_out_file(path, option)
    except ValueError as e:
        _fail(str(e))


@app.command()
def categories(
    as_json: Annotated[bool, typer.Option("--json", help="Print the full catalogue as JSON.")] = False,
    lang: Annotated[str, typer.Option(help="Table language: en or zh.")] = "en",
) -> None:
    """List the 17 categories of behaviour data a device records, and why."""
    from fedchurn.server.catalogue_zh import catalogue_text
    from fedchurn.server.i18n import LANGS, t
    from fedchurn.shared.catalogue import CATALOGUE_VERSION, CATEGORIES, as_dict

    if lang not in LANGS:
        _fail(f"--lang must be one of {', '.join(LANGS)}, got {lang!r}")
    if as_json:
        doc = {"catalogue_version": CATALOGUE_VERSION, "categories": [as_dict(c) for c in CATEGORIES]}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return
    lg = lang  # narrowed to a Lang by the check above
    # Five narrow columns fit 80 terminal columns; everything else is in --json and the reviewer page.
    table = Table(title=t(lg, "cli.categories.title", version=CATALOGUE_VERSION))
    table.add_column(t(lg, "cat.col.number"), justify="right")
    table.add_column(t(lg, "cat.col.name"), max_width=18)
    table.add_column(t(lg, "cli.categories.why"))
    table.add_column(t(lg, "cat.col.retention"), justify="right", no_wrap=True)
    table.add_column(t(lg, "cli.categories.features"), justify="right")
    for c in CATEGORIES:
        table.add_row(
            str(c.number),
            c.name_zh if lg == "zh" else c.name_en,
            catalogue_text(lg, c.description),
            t(lg, "cat.day" if c.retention_days == 1 else "cat.days", n=c.retention_days),
            str(len(as_dict(c)["features_fed"])),
        )
    console.print(table)
    purposes = sorted({p for c in CATEGORIES for p in c.purposes})
    console.print(
        t(lg, "cli.categories.purposes", purposes=", ".join(t(lg, f"purpose_short.{p}") for p in purposes))
    )
    console.print(t(lg, "cli.categories.footer"))


@app.command()
def features(
    events: Annotated[
        Path, typer.Option("--events", exists=True, dir_okay=False, help="CSV or Parquet log.")
    ],
    user: Annotated[str | None, typer.Option(help="Which user's device, when the log holds several.")] = None,
    mapping: Annotated[
        str | None, typer.Option("--map", help="Column mapping, e.g. user=uid,timestamp=t.")
    ] = None,
    tz: Annotated[int | None, typer.Option(help="UTC offset (minutes) for times without one.")] = None,
    today: Annotated[str | None, typer.Option(help="Last day (YYYY-MM-DD); default: last event day.")] = None,
    with_signals: Annotated[
        bool, typer.Option("--signals", help="Add the on-device signals per day.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every day's vector as JSON.")] = False,
) -> None:
    """Print the feature vectors of one device's event log (one vector per local day)."""
    from fedchurn.client.importer import ColumnMapping, read_log
    from fedchurn.client.pipeline import device_features
    from fedchurn.client.signals import signals
    from fedchurn.shared.events import local_day
    from fedchurn.shared.feature_spec import FEATURE_NAMES, FEATURES
    from fedchurn.shared.protocol import day_number, day_text

    try:
        last_day = day_number(today, "--today") if today else None
        per_user = read_log(events, ColumnMapping.parse(mapping, tz))
    except ValueError as e:
        _fail(str(e))
    if not per_user:
        _fail(f"{events.name}: the log holds no events")
    if user is None:
        if len(per_user) > 1:
            _fail(
                f"{events.name} holds {len(per_user)} users; choose one with --user "
                f"(e.g. {', '.join(list(per_user)[:3])})"
            )
        user = next(iter(per_user))
    if user not in per_user:
        _fail(f"user {user!r} is not in {events.name}")
    first = int(local_day(per_user[user]["ts"], per_user[user]["tz_min"]).min())
    if last_day is not None and last_day < first:
        _fail(f"--today {today}: before {user}'s first event ({day_text(first)}); no day to describe")
    res = device_features(per_user[user], today=last_day)
    sig = signals(res.features) if with_signals else {}
    if as_json:
        rows: list[dict[str, Any]] = []
        for i, d in enumerate(res.days):
            row: dict[str, Any] = {
                "date": day_text(d),
                "features": [round(float(v), 6) for v in res.features[i]],
            }
            if with_signals:
                row["signals"] = {k: bool(v[i]) for k, v in sig.items()}
            rows.append(row)
        doc = {
            "user": user,
            "first_day": day_text(res.first_day),
            "feature_names": list(FEATURE_NAMES),
            "days": rows,
        }
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    title = f"{user}: features on {day_text(res.days[-1])} ({_days(len(res.days))} of history)"
    table = Table(title=title)
    table.add_column("feature")
    table.add_column("model input", justify="right")
    table.add_column("transform")
    table.add_column("natural value", justify="right")
    for spec, v in zip(FEATURES, res.features[-1], strict=True):
        table.add_row(spec.name, f"{v:.4g}", spec.transform or "none", f"{spec.natural(float(v)):.4g}")
    console.print(table)
    for k, v in sig.items():
        console.print(f"signal {k}: {'[bold red]ON[/]' if v[-1] else 'off'}")


@app.command("import")
def import_(
    events: Annotated[
        Path, typer.Option("--events", exists=True, dir_okay=False, help="CSV or Parquet log.")
    ],
    stores: Annotated[Path, typer.Option(help="Folder of per-device SQLite stores (one per user).")],
    mapping: Annotated[
        str | None, typer.Option("--map", help="Column mapping, e.g. user=uid,timestamp=t.")
    ] = None,
    tz: Annotated[int | None, typer.Option(help="UTC offset (minutes) for times without one.")] = None,
) -> None:
    """Replay a real event log onto per-device stores; a bad row rejects the whole import."""
    from fedchurn.client.importer import ColumnMapping, import_log

    _out_dir(stores, "--stores")
    try:
        with _bar("reading and checking the log, then writing stores") as (bar, task):
            rep = import_log(
                events,
                stores,
                ColumnMapping.parse(mapping, tz),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except ValueError as e:
        _fail(f"{e}\nnothing was written")
    console.print(
        f"imported {rep.rows} rows for {rep.users} devices into {stores} "
        f"({rep.inserted} new, {rep.duplicates} duplicates ignored)"
    )


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller sizes; finishes in under 5 minutes.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
    work_dir: Annotated[Path, typer.Option(help="Where the federated runs write their results.")] = Path(
        "results/bench"
    ),
    test_sizes: Annotated[
        bool, typer.Option("--test-sizes", hidden=True, help="Tiny sizes, for the test suite only.")
    ] = False,
    only: Annotated[
        str, typer.Option(help="Comma-separated sections to run (default: all), e.g. simulation,memory.")
    ] = "",
) -> None:
    """Measure fedchurn beside Flower and TenSEAL in one run: speed, size, memory and model quality."""
    from fedchurn.simulations.bench import SECTIONS, TEST, print_table, run_bench, to_json

    sections = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        _fail(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    _out_dir(work_dir, "--work-dir")
    if json_out is not None:
        _out_file(json_out, "--json")
    figures = run_bench(
        quick=quick,
        console=console,
        only=sections or None,
        sizes=TEST if test_sizes else None,
        work_dir=work_dir,
    )
    print_table(figures, console)
    if json_out:
        text, replaced = to_json(figures)
        if replaced:  # e.g. the plaintext mode's clip norm, which is infinite (no clipping)
            console.print(f"[dim]not finite, written as null: {', '.join(replaced)}[/]")
        json_out.write_text(text)
        console.print(f"figures written to {json_out}")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/demo")) -> None:
    """A small end-to-end run on a simulated population; prints where the results are."""
    from fedchurn.simulations.demo import run_demo

    run_demo(out, console)


# The run settings `simulate` takes as options. Each option is built from its RunConfig field: the
# name (`option_name`), the default (`SIMULATE_DEFAULTS`) and the help (`OPTION_HELP`); nothing about
# a setting is written here. The options that are not plain settings (a path that must exist, an
# optional offset, ε as a word or a number, and the command's own) are declared below by hand.
SIMULATE_SETTINGS = (
    "devices",
    "num_server_rounds",
    "per_round",
    "seed",
    "scenario",
    "days",
    "events_map",
    "cutoff",
    "population",
    "features",
    "activity",
    "horizon",
    "silence_days",
    "strategy",
    "server_lr",
    "server_beta2",
    "server_tau",
    "server_lr_schedule",
    "local_epochs",
    "batch_size",
    "lr",
    "eval_per_round",
    "eval_fraction",
    "eval_noise",
    "protection",
    "delta",
    "clip_norm",
    "coord_clip_factor",
    "coords_per_round",
    "quant_bits",
    "ring_bits",
    "centre_features",
)


def _setting_option(name: str) -> inspect.Parameter:
    """The command-line option of one run setting, from its declaration in RunConfig."""
    default = getattr(_SIM, name)
    flag = option_name(name)
    if isinstance(default, bool):
        flag = f"{flag}/--no-{flag[2:]}"
    option = typer.Option(flag, help=OPTION_HELP[name])
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[type(default), option]
    )


def _simulate_only(
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/simulate"),
    events_file: Annotated[
        Path | None,
        typer.Option(
            option_name("events_file"), exists=True, dir_okay=False, help=OPTION_HELP["events_file"]
        ),
    ] = None,
    events_tz: Annotated[
        int | None, typer.Option(option_name("events_tz"), help=OPTION_HELP["events_tz"])
    ] = None,
    target_epsilon: Annotated[
        str, typer.Option(option_name("target_epsilon"), help=OPTION_HELP["target_epsilon"])
    ] = "none",
    audit_db: Annotated[str, typer.Option("--audit-db", help="SQLAlchemy URL of the audit database.")] = "",
    baselines: Annotated[bool, typer.Option(help="Train the centralised baselines too.")] = True,
    nodes: Annotated[
        int, typer.Option(min=1, help="Flower simulation nodes; each serves a shard of the devices.")
    ] = SIMULATION_NODES,
) -> None:
    """The options of `simulate` that are not plain run settings (their signature is read below)."""


def simulate(**options: Any) -> None:
    """Train the churn model with Flower's simulation engine and report it beside baselines."""
    events, tz, cutoff = options["events_file"], options["events_tz"], options["cutoff"]
    out = options["out"]
    if events is None and (cutoff or tz is not None or options["events_map"]):
        _fail("--cutoff, --tz and --map apply to a real log: give --events too")
    if events is not None:
        # A log brings its own devices and days: these would be ignored without a word.
        ignored = [option_name(k) for k in ("devices", "scenario", "days") if options[k] != getattr(_SIM, k)]
        if ignored:
            _fail(f"{', '.join(ignored)} describe a simulated population; the log (--events) has its own")
    if options["audit_db"]:
        from fedchurn.server.database_url import carries_password, parse

        try:
            secret = carries_password(parse(options["audit_db"], "--audit-db"))
        except ValueError as e:
            _fail(str(e))
        if secret:  # every local user reads a command line (ps, /proc)
            _fail(
                "--audit-db: a password on the command line is refused; give the URL without it and "
                "let the driver read it (PostgreSQL: PGPASSWORD or ~/.pgpass)"
            )
    _out_dir(out, "--out")
    cfg = RunConfig(
        **{name: options[name] for name in SIMULATE_SETTINGS},
        events_file=str(events.resolve()) if events else "",
        events_tz="" if tz is None else str(tz),
        target_epsilon=_epsilon_option(options["target_epsilon"]),
        sampling_source=_SIM.sampling_source,  # reproducible from --seed; a deployment uses `secrets`
    )
    from fedchurn.simulations.preflight import preflight

    try:  # refuse a bad value before torch, scikit-learn and Flower load (seconds of imports)
        preflight(cfg, out.resolve())
    except ValueError as e:
        _fail(str(e))
    from fedchurn.simulations.simulate import simulate as run

    try:
        summary = run(
            cfg,
            console,
            out,
            audit_db=options["audit_db"],
            baselines=options["baselines"],
            nodes=options["nodes"],
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        _fail(str(e))
    _print_summary(summary, console)
    console.print(f"results in [bold]{out}[/]: metrics.json, rounds.jsonl, model/, *.png")


_OWN_OPTIONS = inspect.signature(_simulate_only, eval_str=True).parameters.values()
simulate.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        *map(_setting_option, SIMULATE_SETTINGS),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _OWN_OPTIONS),
    ]
)
app.command()(simulate)


def _days(n: int) -> str:
    """ "1 day", "N days"."""
    return f"{n:,} day" if n == 1 else f"{n:,} days"


def _epsilon_option(value: str) -> float:
    """--target-epsilon: `none` (or 0) for no DP, else a positive number (`parse_target_epsilon`)."""
    try:
        return parse_target_epsilon(value)
    except ValueError as e:
        _fail(str(e))


def _print_privacy(summary: dict[str, Any], con: Console) -> None:
    """One line on what the run spent, as the report records it."""
    p = summary["federated"].get("privacy") or {}
    mem, wall = summary.get("peak_memory_mb"), summary.get("wall_seconds")
    tail = ", ".join(
        ([f"wall {wall:.0f} s"] if wall is not None else []) + ([f"peak memory {mem:,.0f} MB"] if mem else [])
    )
    rel = p.get("release", {})
    ev = p.get("evaluation") or {}
    if ev.get("epsilon_per_run") is not None:
        con.print(
            f"evaluation: noise z = {ev['noise_multiplier']:g} on every cell ({ev['score_bins']} score bins, "
            f"churned within the horizon or not), ε = {ev['epsilon_per_run']:.2f} per held-out device per run"
        )
    if not p.get("dp"):
        con.print("[bold yellow]no differential privacy[/]" + (f"; {tail}" if tail else ""))
        return
    pld = p.get("epsilon_pld")
    con.print(
        f"ε = {p['epsilon_outsiders']:.3f} against outsiders (PLD {pld:.3f}), "
        f"{p['epsilon_aggregator']:.1f} against the aggregator, δ = {p['delta']:g}; "
        f"z = {p['noise_multiplier']:.3f}, {rel.get('expected_devices_per_round', 0):,.0f} devices "
        f"per round (one cohort, noise once), {p['rounds_charged']} rounds charged"
        + (f"; {tail}" if tail else "")
    )


MODEL_LABELS = {
    "federated": "federated",
    "recency": "recency only (days since last activity)",
    "logreg": "logistic regression (central)",
    "xgboost": "XGBoost (central)",
    "central_net": "same net (central)",
    "untrained": "untrained net",
    "federated_checked_centrally": "federated, scored centrally",
}


def _print_summary(summary: dict[str, Any], con: Console) -> None:
    table = Table(title="Held-out devices (churn within the horizon)")
    for col in ("model", "ROC-AUC", "95% interval", "PR-AUC", "lift@10%", "ECE", "C-index"):
        # fold, never cut: a results row is read whole even at 80 columns
        table.add_column(col, justify="right" if col != "model" else "left", overflow="fold")
    rows = [("federated", summary["federated"].get("final_evaluation", {}))]
    rows += [
        (k, v) for k, v in summary.get("baselines", {}).items() if isinstance(v, dict) and k != "skipped"
    ]
    for name, m in rows:
        interval = m.get("roc_auc_ci95")
        table.add_row(
            MODEL_LABELS.get(name, name),
            f"{m['roc_auc']:.3f}" if "roc_auc" in m else "-",
            f"{interval[0]:.3f}–{interval[1]:.3f}" if interval else "-",
            *(
                f"{m[k]:.3f}" if k in m else "-"
                for k in ("pr_auc", "lift_top_decile", "calibration_error", "concordance")
            ),
        )
    con.print(table)
    _print_privacy(summary, con)
    fed = summary["federated"].get("final_evaluation", {})
    if "devices" in fed:
        n, pos = max(0, round(fed["devices"])), max(0, round(fed.get("positives", 0)))
        cfg = RunConfig(**summary["config"]) if "config" in summary else None
        labels = cfg.protocol().describe() if cfg else ""
        about = "about " if cfg and cfg.eval_noise > 0 else ""  # counts read from a noised release
        share = pos / max(n, 1)
        con.print(
            f"{about}{n:,} held-out devices, {about}{pos:,} churned within the horizon ({share:.1%})"
            + (f"; labels: {labels}" if labels else "")
        )


@app.command()
def score(
    model: Annotated[Path, typer.Option(help="A run folder (or its model/ folder).")],
    events: Annotated[
        Path, typer.Option("--events", exists=True, dir_okay=False, help="CSV or Parquet log.")
    ],
    mapping: Annotated[
        str | None, typer.Option("--map", help="Column mapping, e.g. user=uid,timestamp=t.")
    ] = None,
    tz: Annotated[int | None, typer.Option(help="UTC offset (minutes) for times without one.")] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Score every user as of this day (YYYY-MM-DD); default: the log's last day."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score every user of a log on one day with a trained model (as each device would, numpy
    only): a user silent since their last event is scored on that silence."""
    from fedchurn.client.importer import ColumnMapping, read_log
    from fedchurn.client.scoring import score_device
    from fedchurn.server.run_output import load_model
    from fedchurn.shared.events import local_day
    from fedchurn.shared.model_format import ModelSpec
    from fedchurn.shared.protocol import day_number, day_text

    try:
        day = day_number(as_of, "--as-of") if as_of is not None else None
        params, meta = load_model(model)
        per_user = read_log(events, ColumnMapping.parse(mapping, tz))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if not per_user:
        _fail(f"{events.name}: the log holds no events")
    first = min(int(local_day(a["ts"], a["tz_min"]).min()) for a in per_user.values())
    last = max(int(local_day(a["ts"], a["tz_min"]).max()) for a in per_user.values())
    if day is None:
        day = last
    elif day < first:
        _fail(f"--as-of {as_of}: before the log's first event ({day_text(first)}); no user to score")
    elif day > last:
        err_console.print(
            f"[dim]--as-of {as_of} is {_days(day - last)} after the log's last event: every user is "
            "scored on that silence[/]"
        )
    spec = ModelSpec.from_dict(meta["spec"])
    results = []
    with _bar("scoring users") as (bar, task):
        bar.update(task, total=len(per_user))
        for u, ev in sorted(per_user.items()):
            r = score_device(params, ev, meta["high_risk"], meta["medium_risk"], spec, as_of=day)
            if r is not None:
                results.append({"user": u, **r})
            bar.advance(task)
    if as_json:
        doc = {"model_version": meta["model_version"], "horizon_days": spec.horizon_days, "devices": results}
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    table = Table(
        title=f"churn risk within {_days(spec.horizon_days)} (model v{meta['model_version']}), "
        f"as of {results[0]['date'] if results else as_of}"
    )
    for col in ("user", "date", "probability", "score", "tier"):
        table.add_column(col)
    for r in results:
        table.add_row(r["user"], r["date"], f"{r['probability']:.3f}", str(r["score"]), r["tier"])
    console.print(table)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            envvar=DATABASE_URL_ENV,
            show_envvar=True,
            help="SQLAlchemy URL of the audit database (SQLite file or PostgreSQL); a URL with a "
            f"password goes in ${DATABASE_URL_ENV}, never on the command line.",
        ),
    ] = "sqlite:///fedchurn-audit.sqlite",
    writable: Annotated[
        bool,
        typer.Option(
            "--writable", help="Accept the aggregator's authenticated writes (needs a write token)."
        ),
    ] = False,
    write_token_env: Annotated[
        str, typer.Option(help="Environment variable holding the write token.")
    ] = "FEDCHURN_WRITE_TOKEN",
    write_token_file: Annotated[
        Path | None, typer.Option(help="File holding the write token instead.")
    ] = None,
    create: Annotated[
        bool, typer.Option("--create", help="Start an empty SQLite audit database if the file is missing.")
    ] = False,
) -> None:
    """Serve the transparency API and the reviewer page (read-only unless --writable)."""
    from click.core import ParameterSource

    from fedchurn.server.deploy_secrets import check_host
    from fedchurn.server.serve_cli import DEFAULT_TOKEN_ENV, ServeError, check_database, resolve_write_token
    from fedchurn.server.serve_cli import serve as run_server

    try:
        check_host(host)
    except ValueError as e:
        _fail(f"--host: {e}")
    if not writable and (write_token_file is not None or write_token_env != DEFAULT_TOKEN_ENV):
        _fail("--write-token-file and --write-token-env apply to a writable server: add --writable")
    on_command_line = ctx.get_parameter_source("database_url") is ParameterSource.COMMANDLINE
    try:
        resolve_write_token(writable, write_token_env, token_file=write_token_file)
        check_database(database_url, on_command_line=on_command_line, create=create)
        run_server(host, port, database_url, write_token_env, writable=writable, token_file=write_token_file)
    except ServeError as e:
        _fail(str(e))


@app.command("export-onnx")
def export_onnx_cmd(
    model: Annotated[Path, typer.Option(help="A run folder (or its model/ folder).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the .onnx file.")] = Path("model.onnx"),
) -> None:
    """Write the model as ONNX: input `features` \\[batch, 127]; hazards, survival, churn probability out."""
    from fedchurn.server.onnx_export import export_run_model

    _out_file(out, "--out")
    try:
        path = export_run_model(model, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(f"--model: {e}")
    except OSError as e:  # the model was read; writing the file failed
        _fail(f"--out {out}: {e.strerror or e}")
    console.print(f"wrote {path}")


@app.command("bench-policy")
def bench_policy(
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 100_000,
    days: Annotated[int, typer.Option(help="Days of history.")] = 120,
    seed: Annotated[int, typer.Option(help="Population seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here too.")] = None,
) -> None:
    """Scoring speed and what the retention policy does over a whole simulated population."""
    from fedchurn.simulations.policy_bench import bench_scoring_policy
    from fedchurn.simulations.scenario import MAX_DAYS, MIN_DAYS

    if not MIN_DAYS <= days <= MAX_DAYS:
        _fail(f"--days must be in {MIN_DAYS}..{MAX_DAYS}, got {days}")
    if out is not None:
        _out_file(out, "--out")

    with _bar("generating, scoring and replaying the policy") as (bar, task):
        res = bench_scoring_policy(
            devices, days, seed, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    text = json.dumps(res, indent=2)
    sys.stdout.write(text + "\n")
    if out:
        out.write_text(text + "\n")


@app.command("spec-doc")
def spec_doc(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="The client spec to update.")
    ] = Path("docs/client-spec.md"),
    check: Annotated[bool, typer.Option("--check", help="Fail if the document is out of date.")] = False,
) -> None:
    """Regenerate the tables of docs/client-spec.md from the code's declarations."""
    from fedchurn import spec_doc as sd

    try:
        text = path.read_text()
        rendered = sd.render(text)  # every section's markers, checked before anything is written
    except (ValueError, OSError) as e:
        _fail(f"{path}: {e}")
    if check:
        if rendered != text:
            _fail(f"{path} is out of date: run `fedchurn spec-doc`", code=1)
        console.print(f"{path} is up to date")
        return
    console.print(f"{path} {'updated' if sd.update(path) else 'already up to date'}")


def _mount_optional() -> None:
    try:
        from fedchurn.simulations.population_cli import app as population_app
        from fedchurn.simulations.whatif_cli import whatif
    except ImportError:  # pragma: no cover - the population generator is optional in a client-only install
        return
    app.add_typer(population_app, name="population")
    app.command("whatif")(whatif)


_mount_optional()

from fedchurn.deploy_cli import app as deploy_app  # noqa: E402  (a sub-command group of its own module)

app.add_typer(deploy_app, name="deploy")


def main() -> None:
    app()
