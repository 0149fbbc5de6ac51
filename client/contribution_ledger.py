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

* **One role per key holder.** Which devices are held out for evaluation is a hash of the run's
  seed and evaluation fraction, both chosen by the aggregator. A device that trains under
  differential privacy could be declared held out in another run, and its evaluation (which the
  key holder releases without the noise floor: counts must stay exact) read without noise beside
  Sybil seals. So a device keeps the role of its first task for a key holder: one that has
  trained (or given feature statistics) never evaluates for it, and one that has evaluated never
  trains (`role_of`). Runs that keep the seed and fraction lose no device.

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

__all__ = ["ContributionLedger", "FileLedger", "MemoryLedger", "Role", "role_of", "scopes_of"]

_ROUND = " round "  # in every round scope and no other: each upload claims exactly one


Role = tuple[str, str]  # (the role a task asks of a device, the role that excludes it)
_ANY_HOLDER = "any key holder"


def _holder(run_id: int, keyholder_key: bytes | None) -> str:
    """Claims are per key holder (None: the plaintext baseline, which protects nothing, so its
    claims are only told apart per run)."""
    return keyholder_key[:16].hex() if keyholder_key is not None else f"plaintext run {run_id}"


def scopes_of(round_id: int, run_id: int, keyholder_key: bytes | None, evaluation: bool) -> tuple[str, ...]:
    """The claims one upload makes: its round for this key holder, and for an evaluation also its
    run."""
    round_scope = f"{_holder(run_id, keyholder_key)}{_ROUND}{round_id}"
    return (round_scope, f"evaluate run {run_id}") if evaluation else (round_scope,)


def role_of(run_id: int, keyholder_key: bytes | None, evaluation: bool) -> Role:
    """The role claim a task makes (kept once made) and the one that rules a device out of it."""
    holder = _holder(run_id, keyholder_key)
    evaluates, trains = f"{holder} evaluates", f"{holder} trains"
    return (evaluates, trains) if evaluation else (trains, evaluates)


def _excluding(role: Role) -> tuple[str, str]:
    """The claims that rule a device out of `role`: the other role for this key holder, or for any
    key holder (what the oldest ledgers' devices get: their evaluations name no key holder)."""
    return role[1], f"{_ANY_HOLDER} {role[1].rsplit(' ', 1)[1]}"


def _unique(devices: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(d) for d in devices))


def _is_upload(scope: str) -> bool:
    return _ROUND in scope


class ContributionLedger(Protocol):
    def claim(
        self,
        scopes: Sequence[str],
        devices: Sequence[int],
        limit: int | None = None,
        role: Role | None = None,
    ) -> list[int]:
        """The devices (in order) that had claimed none of `scopes` (with a `limit`, had made fewer
        uploads than it; with a `role`, had not claimed its excluding role), now claimed in all of
        them and in the role; any other device is left out and nothing is recorded for it."""


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

    def claim(
        self,
        scopes: Sequence[str],
        devices: Sequence[int],
        limit: int | None = None,
        role: Role | None = None,
    ) -> list[int]:
        with self._lock:
            granted = [
                d
                for d in _unique(devices)
                if not any((s, d) in self._seen for s in scopes)
                and (limit is None or self._uploads[d] < limit)
                and (role is None or not any((r, d) in self._seen for r in _excluding(role)))
            ]
            made = (*scopes, role[0]) if role else tuple(scopes)
            self._seen.update((s, d) for s in made for d in granted)
            self._uploads.update(d for s in scopes if _is_upload(s) for d in granted)
        return granted


_WITH_ROLES = 1  # the file's `user_version` once claims made before role claims have roles
_WITH_OLDEST_ROLES = 2  # ... and once the oldest ledgers' evaluators are evaluators for any key holder


def _give_legacy_claims_roles(conn: sqlite3.Connection) -> None:
    """Claims made before role claims existed name no role, so a device that had trained could be
    declared held out and evaluate (review 4). Evaluation claims name the run, not the key holder,
    so a legacy device gets, for every key holder it uploaded for, "evaluates" if it ever
    evaluated, and "trains" if it made more uploads in all than evaluations (counting per key
    holder let a device that evaluated for one key holder and trained for the next pass as an
    evaluator: review 5): both where its history cannot tell, which leaves it out of those key
    holders' tasks. The key holder is a scope's first 32 hex digits: ledgers of 92f169a..c4ddcf9
    named the purpose after them ("<key> train round N"; review 6)."""
    conn.execute(
        f"""
        WITH uploads AS (
            SELECT DISTINCT CASE
                WHEN substr(scope, 33, 1) = ' ' AND substr(scope, 1, 32) NOT GLOB '*[^0-9a-f]*'
                THEN substr(scope, 1, 32)  -- a key holder's 16 bytes, whatever followed them
                ELSE substr(scope, 1, instr(scope, '{_ROUND}') - 1)
            END AS holder, device
            FROM claims WHERE instr(scope, '{_ROUND}') > 0
        ), totals AS (
            SELECT device, COUNT(*) AS n FROM claims WHERE instr(scope, '{_ROUND}') > 0 GROUP BY device
        ), evaluations AS (
            SELECT device, COUNT(*) AS n FROM claims WHERE scope LIKE 'evaluate run %' GROUP BY device
        )
        INSERT OR IGNORE INTO claims
        SELECT u.holder || ' evaluates', u.device FROM uploads u JOIN evaluations e USING (device)
        UNION ALL
        SELECT u.holder || ' trains', u.device FROM uploads u JOIN totals t USING (device)
        LEFT JOIN evaluations e USING (device) WHERE t.n > COALESCE(e.n, 0)
        """
    )


def _give_oldest_claims_a_role(conn: sqlite3.Connection) -> None:
    """The oldest ledgers held evaluations only, naming a run but no key holder ("legacy round of
    run N"); the role migration could not tell for which key holder those devices evaluated, so
    they had no role anyone's check read, and one could train after it had evaluated. Each is
    now an evaluator for any key holder: it may evaluate again, and never trains."""
    conn.execute(
        f"INSERT OR IGNORE INTO claims SELECT DISTINCT '{_ANY_HOLDER} evaluates', device FROM claims "
        f"WHERE scope LIKE 'legacy{_ROUND}of run %'"
    )


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
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < _WITH_ROLES:
                _give_legacy_claims_roles(conn)
            if version < _WITH_OLDEST_ROLES:
                _give_oldest_claims_a_role(conn)
                conn.execute(f"PRAGMA user_version = {_WITH_OLDEST_ROLES}")
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def claim(
        self,
        scopes: Sequence[str],
        devices: Sequence[int],
        limit: int | None = None,
        role: Role | None = None,
    ) -> list[int]:
        wanted = _unique(devices)
        refusing = (*scopes, *_excluding(role)) if role else tuple(scopes)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            taken: set[int] = set()
            for lo in range(0, len(wanted), 500):  # under SQLite's limit of bound variables
                chunk = wanted[lo : lo + 500]
                marks = ",".join("?" * len(chunk))
                for scope in refusing:
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
            if role:
                conn.executemany(
                    "INSERT OR IGNORE INTO claims VALUES (?, ?)", [(role[0], d) for d in granted]
                )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return granted
