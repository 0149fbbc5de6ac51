"""`fedchurn deploy ...`: secrets and the processes of a deployment on Flower's deployment engine.

Each command runs one part in the foreground (for a process supervisor, one machine each), except
`local`, which starts a whole federation on loopback like the integration tests. Every party reads
only its own folder of the secrets (`certs` writes one per party), and no secret is ever put on a
command line. See docs/deploy.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from fedchurn.client.device_config import (
    MAX_LOCAL_STEPS_KEY,
    MAX_MIN_NOISE,
    MAX_REPLY_AFTER,
    MAX_UPLOADS_KEY,
    MIN_NOISE_KEY,
    REPLY_AFTER_KEY,
    REPLY_AFTER_PER_DEVICE_KEY,
)
from fedchurn.shared.run_config import OPTION_HELP, RunConfig, parse_target_epsilon

if TYPE_CHECKING:
    from fedchurn.server.deploy_secrets import Secrets

app = typer.Typer(
    help="Deploy on Flower's deployment engine (TLS, SuperNode authentication).", no_args_is_help=True
)
console = Console(stderr=True)

MAX_PORT = 65535
# The most SuperNode key pairs one `certs` writes. The deployment's scale plan is ~10^3 SuperNodes of
# ~10^3 stores each for 10^6 devices (docs/deploy.md, "Scale on paper"): 10^4 leaves ten times that.
# A key pair takes ~0.5 ms (10^4: ~5 s, under a progress bar); each is also one `flwr supernode
# register` at the SuperLink. 10^5 took 54 s before registering any.
MAX_NODES = 10_000
PROGRESS_FROM_NODES = 1_000  # a progress bar from ~0.5 s of key generation on
# `deploy local` starts every SuperNode as a Flower process on this machine (~2 s of CPU each to
# start, and one more per task): more than a few dozen only makes the demo crawl.
MAX_LOCAL_NODES = 32

CertsOpt = Annotated[
    Path,
    typer.Option(
        help="Folder written by `fedchurn deploy certs` (refused unless it holds what the command needs)."
    ),
]
MaxUploadsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Most uploads any one device of the node makes, ever (pinned in its --node-config; default: "
        "no cap). With the key holder's noise floor z it bounds epsilon against the aggregator "
        "(docs/privacy.md).",
    ),
]


ReplyAfterOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=MAX_REPLY_AFTER,
        help="Seconds the node waits from a task's arrival before it answers (pinned in its "
        "--node-config), so that its reply time does not show how much data its devices hold; set "
        "it above the node's longest task (0: answer at once).",
    ),
]
DEFAULT_REPLY_AFTER = 2.0
ReplyAfterPerDeviceOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=MAX_REPLY_AFTER,
        help="Seconds added to --reply-after for each device a task lists (pinned in its "
        "--node-config): a node serving many stores works in proportion to them. Set it above one "
        "device's load and training at --max-local-steps.",
    ),
]
DEFAULT_REPLY_AFTER_PER_DEVICE = 0.25  # one device at the step cap: 35-75 ms measured (decision 146)
MaxLocalStepsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Most local SGD steps (epochs x minibatches) a training task may ask of the node's "
        "devices (pinned in its --node-config): the aggregator picks epochs and batch size, and "
        "work without a bound outlasts any --reply-after.",
    ),
]
DEFAULT_MAX_LOCAL_STEPS = 64  # the shipped recipe asks 1 (one full-batch epoch)
MinNoiseOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=MAX_MIN_NOISE,
        help="Least noise multiplier the node's devices let any upload be released with (pinned in "
        "its --node-config): training rounds need DP at least this strong, evaluations --eval-noise "
        "at least this (0: not pinned; exact evaluations are answered). docs/privacy.md.",
    ),
]


def _fail(message: str) -> NoReturn:
    """Refuse a user's input, naming the option: the deploy commands' one error style (stderr, exit
    2), always before any work starts."""
    console.print(f"[red]error:[/] {escape(message)}")  # [policy], a path: text, not Rich markup
    raise typer.Exit(2)


def _host(option: str, name: str) -> str:
    """A host name or IP address (for a certificate, or to listen on), or refused."""
    from fedchurn.server.deploy_secrets import check_host

    try:
        return check_host(name)
    except ValueError as e:
        _fail(f"{option}: {e}")


def _address(option: str, text: str) -> str:
    """host:port of a server (an IPv6 address in brackets), or refused."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        _fail(f"{option} must be host:port with a port from 1 to {MAX_PORT}, got {text!r}")
    _host(option, host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    return text


def _writable_dir(option: str, path: Path, given: Path | None = None) -> None:
    """A folder a command creates or writes into (for the option's value `given`, a file in it),
    refused as `output_paths.check_out_dir` refuses one."""
    from fedchurn.output_paths import check_out_dir

    try:
        check_out_dir(path, option, named=given)
    except ValueError as e:
        _fail(str(e))


def _finite(option: str, value: float) -> None:
    if not math.isfinite(value):
        _fail(f"{option} must be a finite number, got {value}")


def _secrets(certs: Path, *needed: str, option: str = "--certs") -> Secrets:
    """The secrets of a folder `certs` wrote, refused (naming the first missing file) unless it
    holds everything in `needed`."""
    from fedchurn.server.deploy_secrets import SecretsFolderError, load_secrets, require_files

    try:
        require_files(certs, needed)
    except SecretsFolderError as e:
        _fail(f"{option}: {e}")
    return load_secrets(certs)


def _party_dir(directory: Path, party: str, *needed: str) -> None:
    """--dir of `deploy keyholder` or `deploy api`: the party's own folder of the secrets, refused
    (naming the first missing file) unless it holds `needed`; the whole secrets folder is refused
    with the sub-folder to give instead."""
    from fedchurn.server.deploy_secrets import SecretsFolderError, require_files

    try:
        require_files(directory, needed)
    except SecretsFolderError as e:
        if all((directory / party / name).is_file() for name in needed):
            _fail(
                f"--dir {directory} is the whole secrets folder `fedchurn deploy certs` wrote; this "
                f"command needs only its {party}/ sub-folder: --dir {directory / party}"
            )
        _fail(f"--dir: {e}")


def _checked_run(cfg: RunConfig) -> RunConfig:
    """A run's settings, checked as `fedchurn simulate` checks its own (RunConfig's rules, each
    refusal naming its option) before anything starts: a bad value used to reach the SuperLink and
    surface in its log only."""
    if cfg.k_min > cfg.max_cohort:  # RunConfig names --max-cohort, which no deploy command has
        _fail(
            f"--k-min {cfg.k_min} is above the largest cohort, {cfg.max_cohort}: no cohort could ever "
            f"reach it (give 2 to {cfg.max_cohort})"
        )
    try:
        cfg.check()
        cfg.train_protection()  # settings no upload could meet
        cfg.check_ckks()  # settings the CKKS key holder refuses
    except ValueError as e:
        _fail(str(e))
    return cfg


def _check_node_settings(reply_after: float, per_device: float, min_noise: float = 0.0) -> None:
    """Typer's min/max let NaN through (no comparison with it is true)."""
    _finite("--reply-after", reply_after)
    _finite("--reply-after-per-device", per_device)
    _finite("--min-noise", min_noise)


def _node_extra(
    today: int | None,
    max_uploads: int | None,
    reply_after: float = 0.0,
    max_local_steps: int | None = None,
    per_device: float = 0.0,
    min_noise: float = 0.0,
) -> str:
    """The SuperNode's own settings beside the store folder and the key holder's pin."""
    parts = ([f"today={today}"] if today is not None else []) + (
        [f"{MAX_UPLOADS_KEY}={max_uploads}"] if max_uploads is not None else []
    )
    parts += [f"{REPLY_AFTER_KEY}={float(reply_after)!r}"] if reply_after > 0 else []
    parts += [f"{REPLY_AFTER_PER_DEVICE_KEY}={float(per_device)!r}"] if per_device > 0 else []
    parts += [f"{MAX_LOCAL_STEPS_KEY}={max_local_steps}"] if max_local_steps is not None else []
    parts += [f"{MIN_NOISE_KEY}={float(min_noise)!r}"] if min_noise > 0 else []
    return " ".join(parts)


@app.command()
def certs(
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="New folder for every party's secrets (one sub-folder each); one that already holds "
            "secrets is refused.",
        ),
    ],
    nodes: Annotated[
        int, typer.Option(min=1, max=MAX_NODES, help=f"SuperNode key pairs to create (1-{MAX_NODES:,}).")
    ] = 3,
    host: Annotated[list[str] | None, typer.Option(help="SuperLink name or IP (repeat).")] = None,
    keyholder_host: Annotated[
        list[str] | None, typer.Option(help="Key holder name or IP (repeat; default: --host).")
    ] = None,
    api_host: Annotated[
        list[str] | None, typer.Option(help="API name or IP (repeat; default: --host).")
    ] = None,
    ckks: Annotated[bool, typer.Option(help="Also create the key holder's CKKS context.")] = True,
) -> None:
    """Create a CA, one TLS certificate per service, SuperNode keys (EC P-384), the key holder's keys
    and the pin every SuperNode carries, and bearer tokens (private files 0600)."""
    from rich.progress import Progress

    from fedchurn.server.deploy_secrets import SecretsFolderError, existing_secrets, make_secrets

    hosts = tuple(host or ("127.0.0.1", "localhost"))
    for option, names in (("--host", hosts), ("--keyholder-host", keyholder_host), ("--api-host", api_host)):
        for name in names or ():
            _host(option, name)
    _writable_dir("--out", out)
    if found := existing_secrets(out):
        _fail(
            f"--out {out} already holds a deployment's secrets ({found[0]}, {len(found)} files in all): "
            "writing again would replace every key. Give a new folder (to rotate them, then hand out "
            "the new one), or move this one away; nothing was changed"
        )
    if out.is_dir() and (first := min(out.iterdir(), default=None)) is not None:
        _fail(
            f"--out {out} is not empty ({first.name} is in it; a folder of an earlier deployment?): "
            "give a new or empty folder; nothing was changed"
        )
    with Progress(console=console, transient=True, disable=nodes < PROGRESS_FROM_NODES) as progress:
        task = progress.add_task("SuperNode keys", total=nodes)
        try:
            sec = make_secrets(
                out,
                nodes,
                hosts,
                tuple(keyholder_host or hosts),
                tuple(api_host or hosts),
                ckks,
                on_node_key=lambda: progress.advance(task),
            )
        except SecretsFolderError as e:  # written in between by someone else
            _fail(f"--out: {e}")
    console.print(
        f"wrote {out}/: ca/, superlink/, keyholder/, api/, aggregator/, nodes/ ({len(sec.node_keys)}), pins/"
    )
    console.print(
        "give keyholder/ to the key holder's operator only; aggregator/ and superlink/ to the aggregator's; "
        "pins/keyholder.toml and ca/ca.pem to every device operator"
    )


@app.command()
def keyholder(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir", exists=True, file_okay=False, help="The key holder's folder (certs' keyholder/)."
        ),
    ],
    state: Annotated[
        Path,
        typer.Option(dir_okay=False, help="Once-only state (SQLite file); back it up with the key."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (host name or IP).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="TCP port to listen on (1-65535).")] = 8443,
    k_min: Annotated[int, typer.Option(help=OPTION_HELP["k_min"])] = RunConfig().k_min,
    min_noise_multiplier: Annotated[
        float, typer.Option(min=0.0, help="DP floor it enforces (a noise multiplier; 0: none).")
    ] = 0.0,
    horizon: Annotated[
        int, typer.Option(help="The runs' horizon: their evaluation histograms are exempt from the floor.")
    ] = RunConfig().horizon,
    eval_noise: Annotated[
        float,
        typer.Option(min=0.0, help="The runs' --eval-noise: evaluation histograms noised so are exempt."),
    ] = RunConfig().eval_noise,
) -> None:
    """Run the key holder service over HTTPS (operated by the other, non-colluding party)."""
    from fedchurn.server.deploy_services import check_keyholder_state, serve_keyholder

    _host("--host", host)
    _finite("--min-noise-multiplier", min_noise_multiplier)
    # The runs' settings it must agree with, under RunConfig's own rules (they name the options).
    _checked_run(RunConfig(k_min=k_min, horizon=horizon, eval_noise=eval_noise))
    _party_dir(directory, "keyholder", "keyholder.key", "aggregator-token.sha256", "tls.pem", "tls.key")
    _writable_dir("--state", state.parent, state)
    try:
        check_keyholder_state(state)
    except ValueError as e:
        _fail(f"--state: {e}")
    state.parent.mkdir(parents=True, exist_ok=True)
    serve_keyholder(host, port, directory, state, k_min, min_noise_multiplier, horizon, eval_noise)


@app.command()
def api(
    directory: Annotated[Path, typer.Option("--dir", help="The API's folder (certs' api/).")],
    database_url: Annotated[
        str | None, typer.Option(help="Audit database (no password here; else $FEDCHURN_DATABASE_URL).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (host name or IP).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="TCP port to listen on (1-65535).")] = 8444,
    create: Annotated[
        bool, typer.Option("--create", help="Start an empty SQLite audit database if the file is missing.")
    ] = False,
) -> None:
    """Run the transparency API over HTTPS, read-only."""
    from fedchurn.server.deploy_services import database_url_from, serve_api

    _host("--host", host)
    _party_dir(directory, "api", "tls.pem", "tls.key")
    try:  # parsed, no password on the command line, opened (the last check: --create writes it)
        url = database_url_from(database_url, create=create)
    except ValueError as e:
        _fail(str(e))
    serve_api(host, port, url, directory / "tls.pem", directory / "tls.key")


@app.command("aggregator-settings")
def aggregator_settings(
    certs: CertsOpt,
    keyholder_url: Annotated[str, typer.Option(help="https://host:port of the key holder.")],
    results: Annotated[
        Path, typer.Option(file_okay=False, help="Each run's results go to <results>/<run name>/.")
    ],
    state_db: Annotated[str, typer.Option(help="Checkpoints (SQLAlchemy URL, no password here).")],
    audit_db: Annotated[str, typer.Option(help="Audit database (SQLAlchemy URL, no password here).")],
) -> None:
    """Write the aggregator's private settings (`<certs>/aggregator/aggregator.toml`, 0600); start the
    SuperLink with them (`deploy superlink`). Passwords: PGPASSWORD or ~/.pgpass, or edit the file."""
    from fedchurn.server.settings import AggregatorSettings

    _keyholder_url(keyholder_url)
    state_url = _settings_database("--state-db", state_db, "the run checkpoints' database")
    audit_url = _settings_database("--audit-db", audit_db, "an audit database")
    _writable_dir("--results", results)
    sec = _secrets(certs, "ca/ca.pem", "aggregator/keyholder.token")
    path = AggregatorSettings(
        out_root=str(results.resolve()),
        audit_db=audit_url,
        state_db=state_url,
        keyholder_url=keyholder_url,
        keyholder_ca=str(sec.ca_cert.resolve()),
        keyholder_token_file=str(sec.aggregator_token.resolve()),
    ).write(sec.dir / "aggregator" / "aggregator.toml")
    console.print(f"wrote {path}")


def _settings_database(option: str, text: str, what: str) -> str:
    """A database URL for the aggregator's settings: parsed, without a password (user part or query
    string: a command line is readable by every local user), a SQLite file that exists must be a
    SQLite database, and a relative SQLite path made absolute (a SuperLink started from another
    folder would open another file). Nothing is connected to: the password may come later."""
    from fedchurn.server.database_url import carries_password, parse
    from fedchurn.server.deploy_services import check_sqlite_file

    try:
        url = parse(text, option)  # the value is not echoed: a malformed URL may still hold a password
    except ValueError as e:
        _fail(str(e))
    if carries_password(url):
        _fail(
            f"{option} holds a password (in its user part or its query string); a command line is "
            "readable by every local user: use PGPASSWORD or ~/.pgpass, or add it to aggregator.toml"
        )
    db = url.database if url.get_backend_name() == "sqlite" else None
    if db in (None, "", ":memory:") or str(db).startswith("file:"):
        return text
    path = Path(str(db))
    try:
        check_sqlite_file(path, what)
    except ValueError as e:
        _fail(f"{option}: {e}")
    if path.is_absolute():
        return text
    return url.set(database=str(path.resolve())).render_as_string(hide_password=False)


def _keyholder_url(url: str) -> None:
    """--keyholder-url: https://host[:port] (no path, query, fragment or credentials)."""
    from urllib.parse import urlsplit

    shape = "must be https://host[:port] (the key holder's address"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if it is not a port number
    except ValueError:
        _fail(f"--keyholder-url {shape}), got {url!r}")
    if parts.scheme != "https":
        _fail(
            f"--keyholder-url {shape}; http:// would send the aggregator's token and the cohorts' "
            f"seals in the clear), got {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        _fail("--keyholder-url holds a user name or password; the aggregator's token is read from its file")
    if not parts.hostname or port == 0:
        _fail(f"--keyholder-url {shape}), got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        # Not echoed: a query string may carry a credential. The address alone is safe by now.
        _fail(f"--keyholder-url {shape}, without a path, query or fragment): give https://{parts.netloc}")
    _host("--keyholder-url", parts.hostname)


@app.command()
def superlink(
    certs: CertsOpt,
    host: Annotated[str, typer.Option(help="Address to listen on (host name or IP).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="TCP port to listen on (1-65535).")] = 9093,
    database: Annotated[
        Path | None, typer.Option(dir_okay=False, help="SuperLink state file (default: in memory).")
    ] = None,
) -> None:
    """Exec `flower-superlink` with TLS and SuperNode authentication; its ServerApps read the
    aggregator settings (`deploy aggregator-settings`) named in their environment."""
    from fedchurn.server.deploy import superlink_cmd
    from fedchurn.server.settings import SETTINGS_ENV

    _host("--host", host)
    if database is not None:
        _writable_dir("--database", database.parent, database)
    sec = _secrets(certs, "ca/ca.pem", "superlink/tls.pem", "superlink/tls.key")
    settings = sec.dir / "aggregator" / "aggregator.toml"
    if not settings.exists():
        _fail(f"{settings} is missing: run `fedchurn deploy aggregator-settings` first")
    cmd = superlink_cmd(sec, host, port, database)
    env = {
        **os.environ,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        SETTINGS_ENV: str(settings.resolve()),
    }
    os.execvpe(cmd[0], cmd, env)


@app.command()
def register(
    certs: CertsOpt,
    superlink: Annotated[str, typer.Option(help="host:port of the SuperLink.")],
    home: Annotated[
        Path, typer.Option(file_okay=False, help="FLWR_HOME for the flwr CLI connection.")
    ] = Path(".flwr"),
) -> None:
    """Write the `flwr` CLI connection (TLS with the CA) and register every SuperNode public key."""
    from fedchurn.server.deploy import register_node, write_flwr_config

    _address("--superlink", superlink)
    _writable_dir("--home", home)
    sec = _secrets(certs, "ca/ca.pem")
    if not sec.node_keys:
        _fail(f"--certs: {certs / 'nodes'} holds no SuperNode public key (node-<i>.pub): nothing to register")
    write_flwr_config(home, superlink, sec.ca_cert)
    env = {**os.environ, "FLWR_HOME": str(home.resolve())}
    for i, (_, pub) in enumerate(sec.node_keys):
        console.print(f"node {i}: Flower node id {register_node(pub, env)}")


@app.command()
def supernode(
    certs: CertsOpt,
    node: Annotated[int, typer.Option(min=0, help="Which SuperNode key (nodes/node-<i>).")],
    superlink: Annotated[str, typer.Option(help="host:port of the SuperLink.")],
    stores: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="Folder of the device stores this node serves (`fedchurn import --stores` writes "
            "it); a missing one is refused unless --create-stores.",
        ),
    ],
    today: Annotated[
        int | None,
        typer.Option(help="Day number: days since 1970-01-01, UTC (default: the current UTC day)."),
    ] = None,
    runtime_port: Annotated[
        int, typer.Option(min=1, max=MAX_PORT, help="Local port of the node's runtime API (1-65535).")
    ] = 9094,
    max_uploads: MaxUploadsOpt = None,
    reply_after: ReplyAfterOpt = DEFAULT_REPLY_AFTER,
    max_local_steps: MaxLocalStepsOpt = DEFAULT_MAX_LOCAL_STEPS,
    reply_after_per_device: ReplyAfterPerDeviceOpt = DEFAULT_REPLY_AFTER_PER_DEVICE,
    min_noise: MinNoiseOpt = 0.0,
    create_stores: Annotated[
        bool,
        typer.Option(
            "--create-stores", help="Create a missing --stores folder (a node that serves no device yet)."
        ),
    ] = False,
) -> None:
    """Exec `flower-supernode` serving one folder of device stores, pinned to the key holder of
    `<certs>/pins/keyholder.toml`, running fedchurn's own ClientApp only (whatever app the
    aggregator sends: `client.pinned_app`)."""
    from fedchurn.server.deploy import supernode_cmd, supernode_env

    _address("--superlink", superlink)
    if today is not None and today < 0:
        from fedchurn.shared.events import SECONDS_PER_DAY

        _fail(
            f"--today {today}: a day number counts days since 1970-01-01 (UTC), so it cannot be "
            f"negative (today is {int(time.time() // SECONDS_PER_DAY)})"
        )
    _check_node_settings(reply_after, reply_after_per_device, min_noise)
    sec = _secrets(certs, "ca/ca.pem", "pins/keyholder.toml")
    if node >= len(sec.node_keys):
        _fail(
            f"--node {node}: {certs / 'nodes'} holds the keys of {len(sec.node_keys)} SuperNodes "
            f"(0-{len(sec.node_keys) - 1})"
            if sec.node_keys
            else f"--node {node}: {certs / 'nodes'} holds no SuperNode key"
        )
    try:
        sec.keyholder_pin()
    except (ValueError, KeyError, OSError) as e:
        _fail(f"--certs: {sec.pin} is not a key holder's pin: {e}")
    if not stores.exists() and not create_stores:
        _fail(
            f"--stores {stores} does not exist: give the folder of device stores this node serves "
            "(`fedchurn import --stores` writes it), or add --create-stores to start a node that serves "
            "no device yet"
        )
    _writable_dir("--stores", stores)
    extra = _node_extra(today, max_uploads, reply_after, max_local_steps, reply_after_per_device, min_noise)
    cmd = supernode_cmd(sec, node, superlink, stores.resolve(), extra, runtime_port)
    os.execvpe(cmd[0], cmd, supernode_env(stores.resolve(), dict(os.environ)))


@app.command()
def run(
    home: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="FLWR_HOME of `deploy register`.")
    ] = Path(".flwr"),
    rounds: Annotated[
        int, typer.Option(help=OPTION_HELP["num_server_rounds"])
    ] = RunConfig().num_server_rounds,
    per_round: Annotated[int, typer.Option(help=OPTION_HELP["per_round"])] = RunConfig().per_round,
    k_min: Annotated[int, typer.Option(help=OPTION_HELP["k_min"])] = RunConfig().k_min,
    target_epsilon: Annotated[
        str, typer.Option(help="DP target ε: a positive number, or none (as `fedchurn simulate` takes it).")
    ] = "none",
    eval_noise: Annotated[float, typer.Option(help=OPTION_HELP["eval_noise"])] = RunConfig().eval_noise,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for replies.")] = 600.0,
    run_name: Annotated[str, typer.Option(help="Identity a restarted run resumes under.")] = "",
    work: Annotated[
        Path, typer.Option(file_okay=False, help="Where the app folder and run config are written.")
    ] = Path("results/deploy"),
) -> None:
    """`flwr run` the fedchurn app on the SuperLink; re-run the same to resume."""
    import subprocess

    from fedchurn.server.app_package import write_run_config
    from fedchurn.server.deploy import app_pyproject

    try:
        epsilon = parse_target_epsilon(target_epsilon)
    except ValueError as e:
        _fail(str(e))
    cfg = _checked_run(
        replace(
            RunConfig(),
            num_server_rounds=rounds,
            per_round=per_round,
            k_min=k_min,
            target_epsilon=epsilon,
            eval_noise=eval_noise,
            round_timeout=round_timeout,
            run_name=run_name,
        )
    )
    if run_name in (".", "..") or "/" in run_name or "\\" in run_name:
        _fail(f"--run-name {run_name!r} names the run's results folder: no '/', '\\', '.' or '..'")
    if not (home / "config.toml").is_file():
        _fail(f"--home {home} holds no config.toml: run `fedchurn deploy register --home {home}` first")
    _writable_dir("--work", work)
    app_dir = work.resolve() / "flower-app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject())
    run_config = write_run_config(cfg, work.resolve() / "run-config.toml")
    env = {**os.environ, "FLWR_HOME": str(home.resolve())}
    cmd = ["flwr", "run", str(app_dir), "fedchurn", "--stream", "--run-config", str(run_config)]
    sys.exit(subprocess.call(cmd, env=env))


@app.command()
def local(
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="New working folder (secrets, stores, logs, results); one that is not empty is refused.",
        ),
    ] = Path("results/deploy-local"),
    nodes: Annotated[
        int, typer.Option(min=1, max=MAX_LOCAL_NODES, help=f"SuperNodes (1-{MAX_LOCAL_NODES}).")
    ] = 3,
    devices_per_node: Annotated[int, typer.Option(min=1, help="Device stores per SuperNode.")] = 4,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 2,
    k_min: Annotated[int, typer.Option(help="Smallest cohort.")] = 3,
    max_uploads: MaxUploadsOpt = None,
    reply_after: ReplyAfterOpt = DEFAULT_REPLY_AFTER,
    max_local_steps: MaxLocalStepsOpt = DEFAULT_MAX_LOCAL_STEPS,
    reply_after_per_device: ReplyAfterPerDeviceOpt = DEFAULT_REPLY_AFTER_PER_DEVICE,
    keep_api: Annotated[
        bool,
        typer.Option("--keep-api", help="Keep the federation and its API up after the run, until Ctrl-C."),
    ] = False,
) -> None:
    """A whole deployment on loopback (TLS, node auth, key holder, API) with synthetic device stores."""
    from fedchurn.server.deploy import local_federation, population_stores

    _check_node_settings(reply_after, reply_after_per_device)
    n_train = max(1, round(nodes * devices_per_node * (1 - RunConfig().eval_fraction)) - 1)
    name = f"local-{os.getpid()}"
    cfg = _checked_run(
        replace(
            RunConfig(),
            num_server_rounds=rounds,
            per_round=n_train,
            k_min=k_min,
            days=60,
            eval_per_round=0,
            run_name=name,
        )
    )
    if k_min > n_train:  # without DP a round samples exactly n_train: no cohort could reach k-min
        _fail(
            f"--k-min {k_min} is above the {n_train} devices a round trains ({nodes} nodes x "
            f"{devices_per_node} stores, some held out): lower --k-min or add --devices-per-node"
        )
    _writable_dir("--out", out)
    if out.is_dir() and any(out.iterdir()):
        _fail(f"--out {out} is not empty (an earlier deployment's secrets and stores?): give a new folder")
    out = out.resolve()
    dirs, today = population_stores(out / "stores", nodes, devices_per_node, days=60)
    audit = f"sqlite:///{out / 'audit.sqlite'}"
    extra = _node_extra(today, max_uploads, reply_after, max_local_steps, reply_after_per_device)
    with local_federation(out / "fed", dirs, audit, k_min=k_min, extra_config=extra) as fed:
        console.print(f"SuperLink {fed.superlink_address}, key holder {fed.keyholder_url}, API {fed.api_url}")
        fed.start_run(cfg)
        code = fed.wait("run", 3600)
        console.print(
            f"flwr run exited {code}; results in {fed.run_dir(name)}, logs in {out / 'fed' / 'logs'}"
        )
        console.print(run_status_line(fed.run_dir(name)))
        if keep_api:
            console.print(
                f"the API stays up at {fed.api_url} (reviewer page: {fed.api_url}/v1/reviewer); Ctrl-C stops"
            )
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    console.print(
        "the federation is stopped (SuperLink, SuperNodes, key holder, API); read its audit log again with "
        f"[bold]fedchurn serve --database-url {audit}[/]"
    )


def run_status_line(run_dir: Path) -> str:
    """How the run ended, from the ServerApp's own record (federated.json)."""
    path = run_dir / "federated.json"
    if not path.exists():
        return f"[red]the run wrote no result[/] ({path} is missing): see the logs"
    doc = json.loads(path.read_text())
    final = doc.get("final_evaluation") or {}
    auc = (
        f", ROC-AUC {final['roc_auc']:.3f} on {int(final.get('devices', 0))} held-out devices"
        if "roc_auc" in final
        else ""
    )
    return f"run status: [bold]{doc.get('status', 'unknown')}[/], {len(doc.get('rounds', []))} rounds{auc}"
