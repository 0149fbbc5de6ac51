"""Each held-out device uploads at most one evaluation per run; the ledger remembers which did.

Why: an evaluation upload holds a device's outcome (churned or not) and its score bin. Summed over
a cohort of at least k devices that is k-anonymous, but two releases whose members differ by one
device (an evaluation before and after training, or per-round samples) would give that device's
outcome away by subtraction. A device that answers at most one evaluation per run appears in at
most one released sum, so no two releases can be differenced. The device keeps this promise
itself: the aggregator is not trusted to.

A phone or a SuperNode keeps the ledger in a file beside its stores (it survives restarts); a
simulation keeps it in memory for the life of its ClientApp process.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

__all__ = ["AlreadyEvaluatedError", "EvaluationLedger", "FileLedger", "MemoryLedger"]


class AlreadyEvaluatedError(RuntimeError):
    """The device already uploaded an evaluation in this run and refuses a second one."""


class EvaluationLedger(Protocol):
    def claim(self, run_id: int, device: int) -> None:
        """Record the device's one evaluation of this run, or raise `AlreadyEvaluatedError`."""


def _refuse(run_id: int, device: int) -> AlreadyEvaluatedError:
    return AlreadyEvaluatedError(
        f"device {device} already uploaded its evaluation for run {run_id}; a held-out device answers "
        "one evaluation per run so that no two released sums can be differenced"
    )


class MemoryLedger:
    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> set[tuple[int, int]]:  # Flower's simulation engine pickles the app
        with self._lock:
            return set(self._seen)

    def __setstate__(self, seen: set[tuple[int, int]]) -> None:
        self._seen = set(seen)
        self._lock = threading.Lock()

    def claim(self, run_id: int, device: int) -> None:
        with self._lock:
            if (run_id, device) in self._seen:
                raise _refuse(run_id, device)
            self._seen.add((run_id, device))


class FileLedger:
    """SQLite file (stdlib); the claim is committed before the evaluation is computed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS evaluated "
                "(run_id TEXT, device INTEGER, PRIMARY KEY (run_id, device))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=30)

    def claim(self, run_id: int, device: int) -> None:
        conn = self._connect()
        try:
            conn.execute("INSERT INTO evaluated VALUES (?, ?)", (str(run_id), device))
        except sqlite3.IntegrityError:
            raise _refuse(run_id, device) from None
        finally:
            conn.close()
