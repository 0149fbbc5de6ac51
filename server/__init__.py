"""Aggregator, key holder, audit store and transparency API. Never imported by `fedchurn.client`."""

# The environment variable that carries the audit database's URL to `fedchurn serve` and `fedchurn
# deploy api`: a URL with a password is refused on a command line, which every local user can read.
DATABASE_URL_ENV = "FEDCHURN_DATABASE_URL"
