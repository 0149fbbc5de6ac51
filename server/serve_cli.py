"""`fedchurn serve`: the transparency API under uvicorn.

Read-only unless `writable` is asked for; then a bearer token must come from configuration (the
environment variable named by `write_token_env`, or a token file), else the server refuses to
start: an audit log anyone can write to would be worse than none. Also runnable without the CLI:
`python -m fedchurn.server.serve_cli --help`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from fedchurn.server.audit import DEFAULT_DATABASE_URL, AuditDatabaseError

DEFAULT_TOKEN_ENV = "FEDCHURN_WRITE_TOKEN"
MIN_TOKEN_LENGTH = 16


class ServeError(Exception):
    """The server cannot start as asked; the message says how to fix it."""


def resolve_write_token(
    writable: bool,
    write_token_env: str = DEFAULT_TOKEN_ENV,
    *,
    token_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The write token, or None for a read-only server; raises ServeError when writable has none."""
    if not writable:
        return None
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ServeError(f"cannot read the write token file {token_file}: {e.strerror}") from None
        source = f"the file {token_file}"
    else:
        token = env.get(write_token_env, "").strip()
        source = f"${write_token_env}"
    if not token:
        raise ServeError(
            f"refusing to start writable without a write token: {source} is empty or unset. "
            f"Set it, e.g. `export {write_token_env}="
            "$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
            "or start without --writable for a read-only server."
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ServeError(f"the write token from {source} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def check_database(database_url: str, *, on_command_line: bool, create: bool = False) -> str:
    """Refuse (ServeError naming --database-url), before the server starts, a URL that does not
    parse, carries a password while it came on a command line (every local user reads one; it
    belongs in `$FEDCHURN_DATABASE_URL`), names a SQLite file that does not exist (a typo would
    serve an empty log as if no run had ever happened) unless `create`, or does not open as an
    audit database. Opening it brings its schema up to date. Returns the URL as it may be shown."""
    from sqlalchemy.exc import SQLAlchemyError

    from fedchurn.server.audit import AuditError, AuditStore
    from fedchurn.server.database_url import DATABASE_URL_ENV, carries_password, parse, shown

    try:
        url = parse(database_url, "--database-url")
    except ValueError as e:
        raise ServeError(str(e)) from None
    text = shown(url)
    if on_command_line and carries_password(url):
        raise ServeError(
            f"--database-url {text}: a password on the command line is refused; set ${DATABASE_URL_ENV}"
        )
    path = url.database if url.get_backend_name() == "sqlite" else None
    if path not in (None, "", ":memory:") and not Path(str(path)).exists() and not create:
        raise ServeError(
            f"--database-url names {path}, which does not exist; a run writes it with --audit-db, "
            "or pass --create to start an empty audit database there"
        )
    try:
        AuditStore(database_url).close()
    except (AuditError, SQLAlchemyError, OSError, ValueError) as e:
        raise ServeError(f"--database-url {text}: {type(e).__name__}: {e}") from None
    return text


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    database_url: str = DEFAULT_DATABASE_URL,
    write_token_env: str = DEFAULT_TOKEN_ENV,
    *,
    writable: bool = False,
    token_file: Path | None = None,
    log_level: str = "info",
    access_log: bool = True,
    loop: str = "asyncio",
) -> None:
    """Create the app (upgrading the audit schema) and run it under uvicorn until interrupted.

    The stdlib asyncio loop, not uvloop: at 100 concurrent connections uvloop served the same
    throughput with a ~1 s p99 (some connections starve), asyncio ~50 ms (docs/benchmarks.md).
    """
    import uvicorn

    from fedchurn.server.api import PREFIX, create_app
    from fedchurn.server.database_url import parse, shown

    token = resolve_write_token(writable, write_token_env, token_file=token_file)
    try:
        app = create_app(database_url, token)
    except AuditDatabaseError as e:
        raise ServeError(str(e)) from None
    try:  # announce only an address this server can have (it named another server's before)
        socket.create_server((host, port)).close()
    except OSError as e:
        raise ServeError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    mode = "writable (bearer token required)" if token else "read-only"
    where = shown(parse(database_url, "--database-url"))
    print(
        f"fedchurn transparency API: http://{host}:{port}{PREFIX}/reviewer ({mode}); audit database {where}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, loop=loop)


def port_argument(text: str) -> int:
    """An argparse `--port`: a TCP port to listen on, 1..65535 (a larger one would wrap round)."""
    port = int(text) if text.isdigit() else 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a whole number from 1 to 65535, got {text!r}")
    return port


def main(argv: list[str] | None = None) -> int:
    """`fedchurn serve` without the CLI's dependencies, with the same checks (a bench starts it)."""
    from fedchurn.server.database_url import DATABASE_URL_ENV

    p = argparse.ArgumentParser(prog="python -m fedchurn.server.serve_cli", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_argument, default=8000)
    p.add_argument("--database-url", default=None, help=f"no password here; else ${DATABASE_URL_ENV}")
    p.add_argument("--create", action="store_true", help="start an empty SQLite audit database if missing")
    p.add_argument("--writable", action="store_true", help="accept authenticated writes")
    p.add_argument("--write-token-env", default=DEFAULT_TOKEN_ENV)
    p.add_argument("--write-token-file", type=Path, default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "auto"), default="asyncio")
    a = p.parse_args(argv)
    url = a.database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    try:
        resolve_write_token(a.writable, a.write_token_env, token_file=a.write_token_file)
        check_database(url, on_command_line=a.database_url is not None, create=a.create)
        serve(
            a.host,
            a.port,
            url,
            a.write_token_env,
            writable=a.writable,
            token_file=a.write_token_file,
            log_level=a.log_level,
            access_log=not a.no_access_log,
            loop=a.loop,
        )
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
