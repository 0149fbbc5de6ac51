"""The services fedchurn adds to a Flower deployment, each over HTTPS from its own folder: the key
holder and the transparency API. `python -m fedchurn.server.deploy_services keyholder|api` is
what `Federation` (and an operator, by hand) starts; no secret is taken on its command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedchurn.server.database_url import DATABASE_URL_ENV, carries_password, parse, shown
from fedchurn.server.keyholder import KeyHolder
from fedchurn.shared.protection import ProtectionParams
from fedchurn.shared.run_config import RunConfig

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


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


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
KEYHOLDER_TABLES = frozenset({"answered", "used_seals", "owner"})  # `keyholder._SCHEMA`


def check_sqlite_file(path: Path, what: str) -> None:
    """Refuse (ValueError naming `path` and `what` it is for) an existing file that is not a SQLite
    database: a missing or empty file is a new database, anything else would only fail (or be
    overwritten) once the service runs."""
    if not path.exists():
        return
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not {what} (a SQLite file)")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e}), so it cannot be {what}") from None
    if head and head != SQLITE_HEADER:
        raise ValueError(f"{path} is not a SQLite database, so it cannot be {what}; give another file")


def check_keyholder_state(path: Path) -> None:
    """Refuse (ValueError) a --state that is not the key holder's own SQLite database: a file of
    another kind would fail at start-up, and another database (an audit log, say) would get the key
    holder's tables written into it."""
    what = "the key holder's once-only state"
    check_sqlite_file(path, what)
    if not path.exists() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ValueError(
            f"{path} cannot be opened as a SQLite database ({e}), so it cannot be {what}"
        ) from None
    if other := sorted(t for t in tables if t not in KEYHOLDER_TABLES and not t.startswith("sqlite_")):
        raise ValueError(
            f"{path} is another SQLite database (tables {', '.join(other[:3])}), not {what}: give the key "
            "holder a file of its own"
        )


def _scrubbed(text: str, url: URL) -> str:
    """`text` without any of the URL's passwords (a driver's message may quote the URL)."""
    secrets = [str(url.password)] if url.password is not None else []
    for key, value in url.query.items():
        if carries_password(url.set(password=None, query={key: value})):
            secrets += [value] if isinstance(value, str) else list(value)
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


def database_url_from(argument: str | None, where: str = "--database-url", create: bool = False) -> str:
    """The audit database's URL from the command line (no password allowed there: every local user
    can read a command line) or else from $FEDCHURN_DATABASE_URL, checked and opened (its schema
    brought up to date) before anything is served; ValueError naming where it came from, the URL
    never echoed with a password. A SQLite file that does not exist is refused unless `create`:
    a typo would otherwise serve an empty log as if no run had ever happened."""
    from sqlalchemy.exc import SQLAlchemyError

    from fedchurn.server.audit import AuditError, AuditStore

    if argument:
        url = parse(argument, where)
        if carries_password(url):
            raise ValueError(
                f"{where} holds a password (in its user part or its query string), which any local "
                f"user could read on the command line: pass the URL in ${DATABASE_URL_ENV} instead"
            )
        text = argument
    else:
        text = os.environ.get(DATABASE_URL_ENV, "")
        if not text:
            raise ValueError(f"no database: give {where} or set ${DATABASE_URL_ENV}")
        where = f"${DATABASE_URL_ENV}"
        url = parse(text, where)
    path = url.database if url.get_backend_name() == "sqlite" else None
    if path not in (None, "", ":memory:") and not str(path).startswith("file:"):
        db = Path(str(path))
        if not db.exists() and not create:
            raise ValueError(
                f"{where} names {db}, which does not exist; a run writes it (`deploy aggregator-settings "
                "--audit-db`), or pass --create to start an empty audit database there"
            )
        try:
            check_sqlite_file(db, "an audit database")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    try:
        AuditStore(text).close()
    except (AuditError, SQLAlchemyError, OSError, ValueError) as e:
        raise ValueError(f"{where} {shown(url)}: {type(e).__name__}: {_scrubbed(str(e), url)}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fedchurn.server.serve_cli import port_argument

    p = argparse.ArgumentParser(prog="python -m fedchurn.server.deploy_services", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("keyholder", help="the key holder service (HTTPS)")
    k.add_argument("--host", default="127.0.0.1")
    k.add_argument("--port", type=port_argument, default=8443)
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
    a.add_argument("--port", type=port_argument, default=8444)
    a.add_argument("--database-url", default=None, help=f"no password here; else ${DATABASE_URL_ENV}")
    a.add_argument("--dir", type=Path, required=True, help="the API's folder from `fedchurn deploy certs`")
    a.add_argument("--writable", action="store_true", help="accept the aggregator's writes (write.token)")
    a.add_argument("--create", action="store_true", help="start an empty SQLite audit database if missing")
    args = p.parse_args(argv)
    try:  # every input checked before anything starts: `error: ...`, exit 2
        if args.what == "keyholder":
            check_keyholder_state(args.state)
        else:
            database_url = database_url_from(args.database_url, create=args.create)
    except ValueError as e:
        p.error(f"--state: {e}" if args.what == "keyholder" else str(e))
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
            database_url,
            args.dir / "tls.pem",
            args.dir / "tls.key",
            args.dir / "write.token" if args.writable else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
