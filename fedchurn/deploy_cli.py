"""`fedchurn deploy ...`: secrets and the processes of a deployment on Flower's deployment engine.

Each command runs one part in the foreground (for a process supervisor, one machine each), except
`local`, which starts a whole federation on loopback like the integration tests. See docs/deploy.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedchurn.shared.run_config import RunConfig

app = typer.Typer(
    help="Deploy on Flower's deployment engine (TLS, SuperNode authentication).", no_args_is_help=True
)
console = Console(stderr=True)

CertsOpt = Annotated[Path, typer.Option(help="Folder written by `fedchurn deploy certs`.")]


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder for the CA, certificates, node keys and tokens.")],
    nodes: Annotated[int, typer.Option(help="SuperNode key pairs to create.")] = 3,
    host: Annotated[list[str] | None, typer.Option(help="Server name or IP (repeat).")] = None,
) -> None:
    """Create a CA, a server certificate, SuperNode keys (EC P-384) and bearer tokens (files 0600)."""
    from fedchurn.server.deploy import make_secrets

    sec = make_secrets(out, nodes, tuple(host or ("127.0.0.1", "localhost")))
    console.print(
        f"wrote {sec.ca_cert}, {sec.server_cert}, {len(sec.node_keys)} node keys and tokens in {out}"
    )


@app.command()
def keyholder(
    certs: CertsOpt,
    state_dir: Annotated[Path, typer.Option(help="Where the X25519 key and the once-only state live.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8443,
    k_min: Annotated[int, typer.Option(help="Smallest cohort it will unmask.")] = RunConfig().k_min,
    min_noise_multiplier: Annotated[float, typer.Option(help="DP floor it enforces.")] = 0.0,
    horizon: Annotated[
        int, typer.Option(help="The runs' horizon: their evaluation histograms are exempt from the floor.")
    ] = RunConfig().horizon,
) -> None:
    """Run the key holder service over HTTPS (operated by the other, non-colluding party)."""
    from fedchurn.server.deploy import serve_keyholder

    state_dir.mkdir(parents=True, exist_ok=True)
    serve_keyholder(
        host,
        port,
        state_dir / "keyholder.key",
        state_dir / "keyholder-state.sqlite",
        certs / "keyholder.token",
        certs / "server.pem",
        certs / "server.key",
        k_min,
        min_noise_multiplier,
        horizon,
    )


@app.command()
def api(
    certs: CertsOpt,
    database_url: Annotated[str, typer.Option(help="The audit database the aggregator writes.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8444,
) -> None:
    """Run the transparency API over HTTPS, read-only."""
    from fedchurn.server.deploy import serve_api

    serve_api(host, port, database_url, certs / "server.pem", certs / "server.key")


@app.command()
def superlink(
    certs: CertsOpt,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9093,
    database: Annotated[Path | None, typer.Option(help="SuperLink state file (default: in memory).")] = None,
) -> None:
    """Exec `flower-superlink` with TLS and SuperNode authentication."""
    from fedchurn.server.deploy import load_secrets, superlink_cmd

    cmd = superlink_cmd(load_secrets(certs), host, port, database)
    os.execvpe(cmd[0], cmd, {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})


@app.command()
def register(
    certs: CertsOpt,
    superlink: Annotated[str, typer.Option(help="host:port of the SuperLink.")],
    home: Annotated[Path, typer.Option(help="FLWR_HOME for the flwr CLI connection.")] = Path(".flwr"),
) -> None:
    """Write the `flwr` CLI connection (TLS with the CA) and register every SuperNode public key."""
    from fedchurn.server.deploy import load_secrets, register_node, write_flwr_config

    sec = load_secrets(certs)
    write_flwr_config(home, superlink, sec.ca_cert)
    env = {**os.environ, "FLWR_HOME": str(home.resolve())}
    for i, (_, pub) in enumerate(sec.node_keys):
        console.print(f"node {i}: Flower node id {register_node(pub, env)}")


@app.command()
def supernode(
    certs: CertsOpt,
    node: Annotated[int, typer.Option(help="Which node key (0-based).")],
    superlink: Annotated[str, typer.Option(help="host:port of the SuperLink.")],
    stores: Annotated[Path, typer.Option(help="Folder of the device stores this node serves.")],
    today: Annotated[int | None, typer.Option(help="Day number (default: the current UTC day).")] = None,
    runtime_port: Annotated[int, typer.Option(help="Local port of the node's runtime API.")] = 9094,
) -> None:
    """Exec `flower-supernode` serving one folder of device stores."""
    from fedchurn.server.deploy import load_secrets, supernode_cmd

    extra = f"today={today}" if today is not None else ""
    cmd = supernode_cmd(load_secrets(certs), node, superlink, stores.resolve(), extra, runtime_port)
    os.execvp(cmd[0], cmd)


@app.command()
def run(
    certs: CertsOpt,
    keyholder_url: Annotated[str, typer.Option(help="https://host:port of the key holder.")],
    state_db: Annotated[str, typer.Option(help="SQLAlchemy URL of the aggregator's checkpoints.")],
    audit_db: Annotated[str, typer.Option(help="SQLAlchemy URL of the audit database.")],
    home: Annotated[Path, typer.Option(help="FLWR_HOME of `deploy register`.")] = Path(".flwr"),
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = RunConfig().num_server_rounds,
    per_round: Annotated[int, typer.Option(help="Devices sampled per round.")] = RunConfig().per_round,
    k_min: Annotated[int, typer.Option(help="Smallest cohort.")] = RunConfig().k_min,
    target_epsilon: Annotated[float, typer.Option(help="DP target ε (0: no DP).")] = 0.0,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for replies.")] = 600.0,
    run_name: Annotated[str, typer.Option(help="Identity a restarted run resumes under.")] = "",
    out: Annotated[Path, typer.Option(help="Run folder (SuperLink's machine).")] = Path("results/deploy"),
) -> None:
    """`flwr run` the fedchurn app (stores sampling) on the SuperLink; re-run the same to resume."""
    import subprocess

    from fedchurn.server.app_package import config_overrides
    from fedchurn.server.deploy import app_pyproject

    cfg = replace(
        RunConfig(),
        num_server_rounds=rounds,
        per_round=per_round,
        k_min=k_min,
        target_epsilon=target_epsilon,
        round_timeout=round_timeout,
        run_name=run_name,
        sampling="stores",
        out_dir=str(out.resolve()),
        audit_db=audit_db,
        state_db=state_db,
        keyholder_url=keyholder_url,
        keyholder_ca=str((certs / "ca.pem").resolve()),
        keyholder_token_file=str((certs / "keyholder.token").resolve()),
    )
    app_dir = out.resolve() / "flower-app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject())
    overrides = config_overrides(cfg)
    env = {**os.environ, "FLWR_HOME": str(home.resolve())}
    cmd = ["flwr", "run", str(app_dir), "fedchurn", "--stream", "--run-config", overrides]
    sys.exit(subprocess.call(cmd, env=env))


@app.command()
def local(
    out: Annotated[Path, typer.Option(help="Working folder (secrets, stores, logs, results).")] = Path(
        "results/deploy-local"
    ),
    nodes: Annotated[int, typer.Option(help="SuperNodes.")] = 3,
    devices_per_node: Annotated[int, typer.Option(help="Device stores per SuperNode.")] = 4,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 2,
    k_min: Annotated[int, typer.Option(help="Smallest cohort.")] = 3,
) -> None:
    """A whole deployment on loopback (TLS, node auth, key holder, API) with synthetic device stores."""
    from fedchurn.server.deploy import local_federation, population_stores

    out = out.resolve()
    dirs, today = population_stores(out / "stores", nodes, devices_per_node, days=60)
    audit = f"sqlite:///{out / 'audit.sqlite'}"
    with local_federation(out / "fed", dirs, audit, k_min=k_min, extra_config=f"today={today}") as fed:
        console.print(f"SuperLink {fed.superlink_address}, key holder {fed.keyholder_url}, API {fed.api_url}")
        n_train = max(1, round(nodes * devices_per_node * (1 - RunConfig().eval_fraction)) - 1)
        cfg = fed.run_config(
            replace(
                RunConfig(),
                num_server_rounds=rounds,
                per_round=n_train,
                k_min=k_min,
                sampling="stores",
                days=60,
                eval_per_round=0,
                out_dir=str(out / "run"),
                audit_db=audit,
                state_db=f"sqlite:///{out / 'state.sqlite'}",
                run_name=f"local-{os.getpid()}",
            )
        )
        fed.start_run(cfg)
        code = fed.wait("run", 3600)
        console.print(f"flwr run exited {code}; results in {out / 'run'}, logs in {out / 'fed' / 'logs'}")
