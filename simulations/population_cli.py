"""`fedchurn population`: generate a simulated population, and `fedchurn population report DIR`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedchurn.output_paths import check_out_dir
from fedchurn.simulations.scenario import MAX_DAYS, MIN_DAYS, ScenarioError, known_scenarios, load_scenario

app = typer.Typer(
    help="Simulated device populations: behaviour histories in the event schema, ground truth kept apart.",
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    """An error on stderr, exit code 2 (a usage error: nothing was done)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.callback(invoke_without_command=True)
def population(
    ctx: typer.Context,
    devices: int = typer.Option(10_000, "--devices", "-n", min=1, help="Number of devices (0..N-1)."),
    days: int | None = typer.Option(
        None, "--days", "-d", min=MIN_DAYS, max=MAX_DAYS, help="Days of history (default: the scenario's)."
    ),
    out: Path = typer.Option(Path("results/population"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed", min=0, help="Population seed."),
    scenario: str = typer.Option(
        "default", "--scenario", "-s", help="Scenario name or path to a .toml file."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Processes (default: one per core when large)."
    ),
    report: bool = typer.Option(False, "--report", help="Also write the calibration report to OUT/report."),
) -> None:
    """Generate N devices x D days of events (Parquet) plus ground truth, reproducible by seed."""
    if ctx.invoked_subcommand is not None:
        # These options generate a population; a subcommand would ignore them (review 21).
        given = [
            "/".join(p.opts)
            for p in ctx.command.params
            if p.name and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)
        ]
        if given:
            sub = ctx.invoked_subcommand
            raise _fail(
                f"{', '.join(given)} given before `{sub}`: they generate a population and `{sub}` "
                f"would ignore them; give `{sub}`'s own options after it (see `population {sub} --help`)"
            )
        return
    from fedchurn.simulations.population import generate_population, write_population

    try:
        sc = load_scenario(scenario).with_days(days)  # the override's volume, checked before the bar
    except ScenarioError as err:
        raise _fail(str(err)) from None
    try:
        check_out_dir(out, "--out")
        if report:
            check_out_dir(out / "report", "--report")
    except ValueError as err:
        raise _fail(str(err)) from None
    n_days = days or sc.days
    console.print(f"scenario [bold]{sc.name}[/bold], seed {seed}: {devices:,} devices x {n_days} days")
    t0 = time.perf_counter()
    with Progress(
        TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("devices", total=devices)
        pop = generate_population(
            devices,
            seed,
            sc,
            days=n_days,
            workers=workers,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    gen_s = time.perf_counter() - t0
    with console.status("writing Parquet"):
        t1 = time.perf_counter()
        paths = write_population(pop, out)
        write_s = time.perf_counter() - t1
    console.print(f"{pop.n_events:,} events generated in {gen_s:.1f} s, written in {write_s:.1f} s")
    for kind, path in paths.items():
        console.print(f"  {kind:9s} {path}")
    if report:
        _print_report(out, None)


@app.command("report")
def report_cmd(
    pop_dir: Path = typer.Argument(..., help="A folder written by `fedchurn population`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default: POP_DIR/report)."),
) -> None:
    """Calibration report: each pre-churn signal against the brief's target, churn, segments, silences."""
    from fedchurn.simulations.population_report import check_population

    try:  # both before any work: the report takes a while on a large population
        check_population(pop_dir)
        if out is not None:
            check_out_dir(out, "--out")
        else:
            check_out_dir(pop_dir / "report", "--out (default POP_DIR/report)")
    except ValueError as err:  # PopulationInputError names the file and what is wrong
        raise _fail(str(err)) from None
    _print_report(pop_dir, out)


def _print_report(pop_dir: Path, out: Path | None) -> None:
    from fedchurn.simulations.population_report import FAIL_MEANS, PopulationInputError, write_report

    try:
        with console.status("computing calibration report"):
            rep = write_report(pop_dir, out)
    except PopulationInputError as err:  # data that read wrong past the checks (a damaged page)
        raise _fail(str(err)) from None
    table = Table(title="calibration against the brief")
    for col in ("check", "target", "measured", ""):
        table.add_column(col, overflow="fold")  # a check's name is read whole, even at 80 columns
    for c in rep["checks"]:
        m = c["measured"]
        table.add_row(
            c["name"],
            c["target"],
            "-" if m is None else f"{m:.3f}",
            "[green]pass[/green]" if c["pass"] else "[red]FAIL[/red]",
        )
    console.print(table)
    failed = [c for c in rep["checks"] if not c["pass"]]
    for c in failed:
        console.print(f"[red]FAIL[/red] {c['name']}: the check asks that {c['meaning']}.")
    if failed:
        console.print(FAIL_MEANS)
    out_dir = Path(rep["out_dir"])
    console.print(
        f"report written to {out_dir / 'calibration.json'} and {len(rep['plots'])} plots in {out_dir}"
    )


def scenarios_help() -> str:
    return ", ".join(known_scenarios())
