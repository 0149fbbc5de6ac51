"""The services fedchurn adds to a Flower deployment, each over HTTPS from its own folder: the key
holder and the transparency API. `python -m fedchurn.server.deploy_services keyholder|api` is
what `Federation` (and an operator, by hand) starts; no secret is taken on its command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fedchurn.server import DATABASE_URL_ENV
from fedchurn.server.keyholder import KeyHolder
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig


def _serve_tls(app: Any, host: str, port: int, certfile: Path, keyfile: Path) -> None:
    """uvicorn over TLS, quiet: no access log, so no request line (or token) reaches a log."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        access_log=False,
    )


EXEMPT_CUTOFF = "2000-01-01"  # any date: only whether a run has a cutoff shapes its evaluation


def evaluation_exemptions(
    horizon: int, k_min: int, eval_noise: float = 0.0
) -> list[tuple[ProtectionParams, int]]:
    """The evaluation uploads of runs with this horizon and `eval-noise` (both schemes), as the key
    holder's noise floor exempts them: (protection, histogram length). Only the noise its operator
    names is exempt: an aggregator cannot pick a weaker one under the floor. The histogram has one
    row per hazard bin of the run's model (`RunConfig.outputs`), not per day: from a 15-day horizon
    on, bins are wider than a day, and pairing the day count with the parameters matched no
    evaluation, so a key holder with a floor refused every one."""
    # Both protocols: a `cutoff` run's model has one output, so its histogram is shorter (the
    # cutoff's date changes nothing else); missing it refused every such evaluation under a floor.
    runs = [
        RunConfig(horizon=horizon, k_min=k_min, protection=m, cutoff=cutoff, eval_noise=eval_noise)
        for m in ("secagg", "ckks")
        for cutoff in ("", EXEMPT_CUTOFF)
    ]
    return list(dict.fromkeys((cfg.eval_protection(), cfg.eval_length) for cfg in runs))


def serve_keyholder(
    host: str,
    port: int,
    directory: Path,
    state_path: Path,
    k_min: int = 10,
    min_noise_multiplier: float = 0.0,
    horizon: int = 14,
    eval_noise: float = 0.0,
) -> None:
    """Run the key holder service over HTTPS from its own folder (`Secrets.keyholder`'s: TLS key
    and certificate, provisioned X25519 key and CKKS contexts, the SHA-256 of the aggregator's
    token); its once-only state persists across restarts in `state_path`.

    Evaluation histograms of runs with this `horizon` and `eval_noise` are answered below the noise
    floor (they are not model updates; see docs/privacy.md)."""

    from fedchurn.server.keyholder_service import create_app

    exempt = evaluation_exemptions(horizon, k_min, eval_noise)
    kh = KeyHolder.open(
        directory / "keyholder.key",
        state_path,
        k_min=k_min,
        min_noise_multiplier=min_noise_multiplier,
        noise_exempt=exempt,
    )
    token_sha256 = bytes.fromhex((directory / "aggregator-token.sha256").read_text().strip())
    app = create_app(kh, token_sha256=token_sha256)
    floor = f"k-min {k_min}, noise floor {min_noise_multiplier:g}"
    announce(f"key holder listening on {https_url(host, port)} ({floor})")
    _serve_tls(app, host, port, directory / "tls.pem", directory / "tls.key")


def https_url(host: str, port: int) -> str:
    """https://host:port, an IPv6 address in brackets."""
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def announce(line: str) -> None:
    """Say where a service listens, on stderr (uvicorn's own start-up lines are below its log
    level); never a secret, a database URL or a secret file's path."""
    print(line, file=sys.stderr, flush=True)


def serve_api(
    host: str, port: int, database_url: str, certfile: Path, keyfile: Path, token_file: Path | None = None
) -> None:
    """Run the transparency API over HTTPS (read-only unless a write-token file is given)."""

    from fedchurn.server.api import create_app
    from fedchurn.server.serve_cli import resolve_write_token

    token = resolve_write_token(token_file is not None, token_file=token_file)
    app = create_app(database_url, token)
    announce(f"transparency API listening on {https_url(host, port)}" + (" (writable)" if token else ""))
    _serve_tls(app, host, port, certfile, keyfile)




def database_url_from(argument: str | None, where: str = "--database-url") -> str:
    """A database URL from the command line (no password allowed there: every local user can read
    a command line) or else from $FEDCHURN_DATABASE_URL."""
    if argument:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(argument).password
        except ArgumentError:  # not echoed: a malformed URL may still hold a password
            raise SystemExit(
                f"{where} is not a SQLAlchemy database URL (e.g. sqlite:///audit.sqlite)"
            ) from None
        if password:
            raise SystemExit(
                f"{where} holds a password, which any local user could read on the command line: "
                f"pass the URL in ${DATABASE_URL_ENV} instead"
            )
        return argument
    url = os.environ.get(DATABASE_URL_ENV, "")
    if not url:
        raise SystemExit(f"no database: give {where} or set ${DATABASE_URL_ENV}")
    return url


MAX_PORT = 65535


def _port(text: str) -> int:
    """A TCP port to listen on, 1..65535 (a larger number would wrap round to another port)."""
    import argparse

    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a TCP port is a whole number from 1 to {MAX_PORT}, got {text!r}")
    return port


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fedchurn.server.deploy_services", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("keyholder", help="the key holder service (HTTPS)")
    k.add_argument("--host", default="127.0.0.1")
    k.add_argument("--port", type=_port, default=8443)
    k.add_argument(
        "--dir", type=Path, required=True, help="the key holder's folder from `fedchurn deploy certs`"
    )
    k.add_argument("--state", type=Path, required=True, help="once-only state (SQLite)")
    k.add_argument("--k-min", type=int, default=10)
    k.add_argument("--min-noise-multiplier", type=float, default=0.0)
    k.add_argument("--horizon", type=int, default=14, help="runs' horizon (evaluation histograms)")
    k.add_argument("--eval-noise", type=float, default=0.0, help="runs' eval-noise (evaluation histograms)")
    a = sub.add_parser("api", help="the transparency API (HTTPS, read-only)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=_port, default=8444)
    a.add_argument("--database-url", default=None, help=f"no password here; else ${DATABASE_URL_ENV}")
    a.add_argument("--dir", type=Path, required=True, help="the API's folder from `fedchurn deploy certs`")
    a.add_argument("--writable", action="store_true", help="accept the aggregator's writes (write.token)")
    args = p.parse_args(argv)
    if args.what == "keyholder":
        serve_keyholder(
            args.host,
            args.port,
            args.dir,
            args.state,
            args.k_min,
            args.min_noise_multiplier,
            args.horizon,
            args.eval_noise,
        )
    else:
        serve_api(
            args.host,
            args.port,
            database_url_from(args.database_url),
            args.dir / "tls.pem",
            args.dir / "tls.key",
            args.dir / "write.token" if args.writable else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
