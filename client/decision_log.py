"""The on-device decision log: every policy decision with its reason, and the engine that resumes
the policy from it.

`client.policy.step` decides; this module keeps what was decided. The log is a table in the
device's store file (the standard library's sqlite3), append-only, erased only by the user.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any

from fedchurn.client.policy import Decision, PolicyConfig, PolicyInput, PolicyState, step

__all__ = ["DecisionLog", "PolicyEngine"]
_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_decisions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    day         INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    reason_code TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    state       TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS policy_decisions_append_only BEFORE UPDATE ON policy_decisions
BEGIN SELECT RAISE(ABORT, 'policy decisions are append-only'); END;
"""


class DecisionLog:
    """Append-only log of policy decisions, a table in the device's store file.

    Each row keeps the decision (with its reason) and the policy state after it, so the device
    resumes the policy from its last row. Rows leave only through the user's erase.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_LOG_SCHEMA)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def append(self, decision: Decision, state: PolicyState) -> None:
        self._db.execute(
            "INSERT INTO policy_decisions (day, action, reason_code, decision, state) VALUES (?, ?, ?, ?, ?)",
            (
                decision.day,
                decision.action,
                decision.reason_code,
                json.dumps(decision.to_dict(), sort_keys=True),
                json.dumps(state.to_dict(), sort_keys=True),
            ),
        )

    def decisions(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT decision FROM policy_decisions ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM policy_decisions").fetchone()[0])

    def last_state(self) -> PolicyState:
        row = self._db.execute("SELECT state FROM policy_decisions ORDER BY seq DESC LIMIT 1").fetchone()
        return PolicyState() if row is None else PolicyState.from_dict(json.loads(row[0]))

    def erase(self) -> int:
        """The user's erase: every decision (and so the remembered policy state) goes."""
        return int(self._db.execute("DELETE FROM policy_decisions").rowcount)


class PolicyEngine:
    """The policy as a device runs it: resume from the log, decide, log the decision with its reason."""

    def __init__(self, log: DecisionLog, config: PolicyConfig | None = None) -> None:
        self.log = log
        self.config = config or PolicyConfig()

    def decide(self, inp: PolicyInput) -> Decision:
        state, decision = step(self.log.last_state(), inp, self.config)
        self.log.append(decision, state)
        return decision
