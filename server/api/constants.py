"""Constants of the transparency API shared by its modules."""

from __future__ import annotations

PREFIX = "/v1"
STATIC_CACHE = "public, max-age=3600"  # the catalogue changes only with a deployment; ETag revalidates
DYNAMIC_CACHE = "no-cache"  # the audit log grows during a run: always revalidate
# Biggest legitimate write: a round record whose `refused` list is at RoundIn's limit of 100,000
# refusals, each as an older writer sends it (one per device: an ignored node id, "<reason>:
# <detail>" of under 100 characters) about 160 bytes of JSON: 16 MB. Run starts and model cards
# are a few KB. Twice that.
MAX_WRITE_BODY_BYTES = 32 * 1024 * 1024
DATABASE_UNAVAILABLE = "the audit database is unavailable; the operator's log has the cause"
