"""`fedchurn serve`: the transparency API under uvicorn.

Read-only unless `writable` is asked for; then a bearer token must come from configuration (the
environment variable named by `write_token_env`, or a token file), else the server refuses to
start: an audit log anyone can write to would be worse than none. Also runnable without the CLI:
`python -m fedchurn.server.serve_cli --help`.
"""

from __future__ import annotations

import argparse
import os
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
    from sqlalchemy.engine import make_url

    from fedchurn.server.api import PREFIX, create_app

    token = resolve_write_token(writable, write_token_env, token_file=token_file)
    try:
        app = create_app(database_url, token)
    except AuditDatabaseError as e:
        raise ServeError(str(e)) from None
    shown = make_url(database_url).render_as_string(hide_password=True)
    mode = "writable (bearer token required)" if token else "read-only"
    print(
        f"fedchurn transparency API: http://{host}:{port}{PREFIX}/reviewer ({mode}); audit database {shown}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, loop=loop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedchurn.server.serve_cli", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    p.add_argument("--writable", action="store_true", help="accept authenticated writes")
    p.add_argument("--write-token-env", default=DEFAULT_TOKEN_ENV)
    p.add_argument("--write-token-file", type=Path, default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "auto"), default="asyncio")
    a = p.parse_args(argv)
    try:
        serve(
            a.host,
            a.port,
            a.database_url,
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
