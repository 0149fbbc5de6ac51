"""The transparency API: what a privacy reviewer needs, derived from the catalogue and the audit log.

`create_app(database_url, write_token)` builds the FastAPI app. Everything under `/v1` is public
and read-only except the three POST routes, which need `Authorization: Bearer <token>`; an app
created without a token answers them with 403 (problem+json) so the schema is the same for every
deployment. Static parts (catalogue, features, policy rules, the page) carry an ETag and answer
If-None-Match with 304; the rest says `no-cache` because the audit log grows during a run.

Layout: `app` (create_app), `routers/` (meta, catalogue, audit, reviewer, writes), `views` (what
is shown, built from its owners), `problems` (RFC 9457 bodies and handlers), `caching` (ETags),
`deps` (parameters, the store, the write check), `constants`.
"""

from fedchurn.server.api.app import create_app
from fedchurn.server.api.constants import MAX_WRITE_BODY_BYTES, PREFIX

__all__ = ["MAX_WRITE_BODY_BYTES", "PREFIX", "create_app"]
