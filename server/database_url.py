"""A database URL's secrets: where a password can hide in one, and how to show one without it.

A password on a command line is readable by every user of the machine (`ps`, /proc); the
commands that take a database URL refuse one that carries a password and take such a URL from
`$FEDCHURN_DATABASE_URL` instead. SQLAlchemy's own `hide_password` masks only the password of
`user:password@host`; a driver also reads `?password=` from the query string (libpq does), which
it leaves in the clear (review 21).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DATABASE_URL_ENV", "carries_password", "parse", "shown"]

# The environment variable that carries the audit database's URL to `fedchurn serve` and `fedchurn
# deploy api`.
DATABASE_URL_ENV = "FEDCHURN_DATABASE_URL"
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})


def parse(url: str, option: str) -> URL:
    """The URL, or ValueError naming `option` (the text is not echoed: it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise ValueError(f"{option} is not a database URL (e.g. sqlite:///audit.sqlite)") from None


def carries_password(url: URL) -> bool:
    """Whether the URL holds a password, in its user part or in its query string."""
    return url.password is not None or any(k.lower() in _SECRET_KEYS for k in url.query)


def shown(url: URL) -> str:
    """The URL with every password masked, for messages and logs."""
    query = {k: ("***" if k.lower() in _SECRET_KEYS else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
