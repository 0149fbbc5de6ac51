"""A device uploads at most once per round, and a held-out device at most one evaluation per run;
the ledger remembers which devices did.

Why, in both cases the aggregator is not trusted to keep the promise:

* **Once per round.** The key holder unmasks a cohort's sum only over at least k seals, but it
  cannot tell whose seals they are: the device names are the aggregator's. A device that answered
  the same round's task k times would give k seals bound to the same round and cohort, and the
  key holder would open them together: the "sum" would be k copies of that one device's update.
  So a device answers each (key holder, round id) once, whatever the purpose (the key holder's
  once-only rule is per round and cohort, whatever the purpose). The round id is not tied to a
  run, because seals carry the round id, not the run: two runs that reused a round id could
  otherwise pool one device's seals in one cohort. It is tied to the key holder the seals are for
  (its pinned public key): seals for two key holders can never be summed together.
* **One evaluation per run.** An evaluation upload holds the device's outcome and score bin; two
  releases whose members differ by one device would give that outcome away by subtraction. A
  held-out device that answers one evaluation per run appears in one released sum per run.

* **At most N uploads in all**, when the device's configuration pins an upload budget
  (`max-uploads`, `client.device_config.upload_budget`). Once-per-round does not stop an aggregator
  that repeats rounds: k + 1 rounds of one model, each leaving a different device out, give every
  device's update by subtraction. Only noise bounds that, and only if the number of noisy releases
  a device joins is bounded by the device itself: each upload counts, whatever its purpose.

A claim is a (scope, device) pair recorded before any work and kept even if the work then fails.
A phone or a SuperNode keeps the ledger in a file beside its stores (it survives restarts); a
simulation keeps it in the run's private folder, or in memory when nothing is provisioned.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["ContributionLedger", "FileLedger", "MemoryLedger", "scopes_of"]

_ROUND = " round "  # in every round scope and no other: each upload claims exactly one


def scopes_of(round_id: int, run_id: int, keyholder_key: bytes | None, evaluation: bool) -> tuple[str, ...]:
    """The claims one upload makes: its round for this key holder (None: the plaintext baseline,
    which protects nothing, so its rounds are only told apart per run), and for an evaluation also
    its run."""
    holder = keyholder_key[:16].hex() if keyholder_key is not None else f"plaintext run {run_id}"
    round_scope = f"{holder}{_ROUND}{round_id}"
    return (round_scope, f"evaluate run {run_id}") if evaluation else (round_scope,)


def _unique(devices: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(d) for d in devices))


def _is_upload(scope: str) -> bool:
    return _ROUND in scope


class ContributionLedger(Protocol):
    def claim(self, scopes: Sequence[str], devices: Sequence[int], limit: int | None = None) -> list[int]:
        """The devices (in order) that had claimed none of `scopes` (and, with a `limit`, had made
        fewer uploads than it), now claimed in all of them; any other device is left out and
        nothing is recorded for it."""


class MemoryLedger:
    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()
        self._uploads: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __getstate__(self) -> set[tuple[str, int]]:  # Flower's simulation engine pickles the app
        with self._lock:
            return set(self._seen)

    def __setstate__(self, seen: set[tuple[str, int]]) -> None:
        self._seen = set(seen)
        self._uploads = Counter(d for s, d in seen if _is_upload(s))
        self._lock = threading.Lock()

    def claim(self, scopes: Sequence[str], devices: Sequence[int], limit: int | None = None) -> list[int]:
        with self._lock:
            granted = [
                d
                for d in _unique(devices)
                if not any((s, d) in self._seen for s in scopes)
                and (limit is None or self._uploads[d] < limit)
            ]
            self._seen.update((s, d) for s in scopes for d in granted)
            self._uploads.update(d for s in scopes if _is_upload(s) for d in granted)
        return granted


class FileLedger:
    """SQLite file (stdlib); the claims are committed before anything is computed. One immediate
    transaction per call, so two processes answering for the same device cannot both claim it.
    Write-ahead log with `synchronous=NORMAL`: a commit survives the process crashing at once,
    and only a power cut right after it could lose it (then the device could answer that round
    once more). A simulation claims every device of every node message; with a full sync per
    commit a claim of 250 devices took 7-17 ms on this project's machines, against ~3 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS claims (scope TEXT, device INTEGER, PRIMARY KEY (scope, device))"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS claims_by_device ON claims (device)")
            # A ledger written before per-round claims held only evaluations, one per run: each
            # stays claimed, and counts as an upload ("legacy round" scopes count, see below).
            old = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evaluated'")
            if old.fetchone() is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO claims SELECT 'evaluate run ' || run_id, device FROM evaluated"
                )
                conn.execute(
                    "INSERT OR IGNORE INTO claims "
                    f"SELECT 'legacy{_ROUND}of run ' || run_id, device FROM evaluated"
                )
                conn.execute("DROP TABLE evaluated")
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def claim(self, scopes: Sequence[str], devices: Sequence[int], limit: int | None = None) -> list[int]:
        wanted = _unique(devices)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            taken: set[int] = set()
            for lo in range(0, len(wanted), 500):  # under SQLite's limit of bound variables
                chunk = wanted[lo : lo + 500]
                marks = ",".join("?" * len(chunk))
                for scope in scopes:
                    rows = conn.execute(
                        f"SELECT device FROM claims WHERE scope = ? AND device IN ({marks})", (scope, *chunk)
                    )
                    taken.update(int(r[0]) for r in rows)
                if limit is not None:
                    rows = conn.execute(
                        f"SELECT device FROM claims WHERE scope LIKE ? AND device IN ({marks}) "
                        "GROUP BY device HAVING COUNT(*) >= ?",
                        (f"%{_ROUND}%", *chunk, limit),
                    )
                    taken.update(int(r[0]) for r in rows)
            granted = [d for d in wanted if d not in taken]
            conn.executemany("INSERT INTO claims VALUES (?, ?)", [(s, d) for s in scopes for d in granted])
            conn.execute("COMMIT")
        finally:
            conn.close()
        return granted
