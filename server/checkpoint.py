"""The aggregator's crash-recovery state: a checkpoint per finished round, and every round attempt.

Two tables in the aggregator's database (SQLAlchemy; SQLite by default, may be the audit database):

* `fedchurn_checkpoints`: per run identity, the last finished round, the global model, the server
  optimiser's state, the sampling RNG, the audit run id and the rounds' records. Written in one
  transaction at the end of every round, so a restart resumes at `round + 1` with nothing lost or
  counted twice.
* `fedchurn_round_attempts`: every attempt at a round gets a fresh id from an autoincrement column
  and is committed *before* any message leaves. That id plus a random per-database base is the
  round id on the wire and at the key holder, so an answer the key holder gave to a crashed
  attempt is never asked for again (it would refuse anyway) and never reused. An attempt is
  marked `contacted` before the first key-holder request: a training attempt that reached the key
  holder but never finished may have released a noisy sum, so it is charged to the privacy
  accountant on resume (conservative), one round each.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from fedchurn.server.audit import make_engine

metadata = MetaData()

checkpoints = Table(
    "fedchurn_checkpoints",
    metadata,
    Column("run_name", String(128), primary_key=True),
    Column("round", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # running | finished
    Column("model", LargeBinary, nullable=False),  # float32 little-endian
    Column("optimizer", LargeBinary, nullable=True),  # npz of the server optimiser's moments
    Column("rng_state", JSON, nullable=False),
    Column("audit_run_id", String(64), nullable=False),
    Column("records", JSON, nullable=False),
    Column("initial_evaluation", JSON, nullable=True),
    Column("roster", JSON, nullable=True),  # stores sampling: (node, device) pairs the run samples from
    Column("input_offset", JSON, nullable=True),  # centre-features: the measured feature mean
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=False,
)

attempts = Table(
    "fedchurn_round_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_name", String(128), nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("kind", String(8), nullable=False),  # train | eval | stats (the feature-mean round)
    Column("status", String(16), nullable=False),  # started | contacted | finished
    Column("started_at", Float, nullable=False),
    sqlite_autoincrement=True,  # ids are never reused, even after rows are deleted
)

state_meta = Table(
    "fedchurn_state_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

MAX_ROUND_ID = 2**32 - 1  # the wire's round id is a u32
ROUND_ID_BASE_RANGE = 2**31  # a database's round ids start at a random base below this


@dataclass
class Checkpoint:
    """Everything a restarted aggregator needs to continue a run exactly where it stopped."""

    run_name: str
    round: int
    model: np.ndarray
    audit_run_id: str
    rng_state: Any
    optimizer: dict[str, dict[str, np.ndarray]] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    initial_evaluation: dict[str, Any] | None = None
    roster: list[tuple[int, int]] | None = None
    status: str = "running"
    input_offset: list[float] | None = None  # centre-features: the model is kept centred by this


def _pack_optimizer(opt: dict[str, dict[str, np.ndarray]] | None) -> bytes | None:
    if not opt:
        return None
    buf = io.BytesIO()
    arrays: dict[str, Any] = {f"{name}/{k}": v for name, d in opt.items() for k, v in d.items()}
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack_optimizer(blob: bytes | None) -> dict[str, dict[str, np.ndarray]] | None:
    if not blob:
        return None
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(io.BytesIO(blob)) as z:
        for key in z.files:
            name, k = key.split("/", 1)
            out.setdefault(name, {})[k] = z[key]
    return out


def _json_state(state: Any) -> Any:
    """random.Random.getstate() as JSON (tuples become lists; `rng_from_json` turns them back)."""
    return json.loads(json.dumps(state))


def rng_from_json(state: Any) -> Any:
    if state is None:  # a secret sampler keeps no state
        return None
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class CheckpointStore:
    """Checkpoints and round attempts in a SQL database (tables created if missing)."""

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(database_url)
        metadata.create_all(self.engine)
        self.round_id_base = self._base()

    def _base(self) -> int:
        """A random offset chosen once per database: two aggregator databases that share a key
        holder (a test federation, a re-created database) do not reuse each other's round ids,
        which the key holder would refuse as already answered."""
        with self.engine.begin() as conn:
            got = conn.scalar(select(state_meta.c.value).where(state_meta.c.key == "round_id_base"))
            if got is None:
                got = str(secrets.randbelow(ROUND_ID_BASE_RANGE))
                conn.execute(insert(state_meta).values(key="round_id_base", value=got))
        return int(got)

    def close(self) -> None:
        self.engine.dispose()

    # -- attempts
    def begin_attempt(self, run_name: str, server_round: int, kind: str) -> int:
        """A fresh round id, committed before the round's messages leave."""
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(attempts).values(
                    run_name=run_name, round=server_round, kind=kind, status="started", started_at=time.time()
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            attempt = int(pk[0])
        if self.round_id_base + attempt > MAX_ROUND_ID:
            raise RuntimeError("round ids exhausted (u32): start a new aggregator database")
        return self.round_id_base + attempt

    def mark(self, round_id: int, status: str) -> None:
        """Set the status of the attempt `round_id` (as `begin_attempt` returned it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(attempts).where(attempts.c.id == round_id - self.round_id_base).values(status=status)
            )

    def charged_rounds(self, run_name: str) -> int:
        """Attempts that reached the key holder and cost privacy (training rounds and the feature-mean
        round): finished ones plus crashed ones."""
        with self.engine.connect() as conn:
            n = conn.scalar(
                select(func.count())
                .select_from(attempts)
                .where(
                    and_(
                        attempts.c.run_name == run_name,
                        attempts.c.kind.in_(("train", "stats")),
                        attempts.c.status.in_(("contacted", "finished")),
                    )
                )
            )
        return int(n or 0)

    def aborted_attempts(self, run_name: str) -> list[dict[str, Any]]:
        """Attempts that started and never finished (what a crash interrupted)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(attempts).where(
                    and_(attempts.c.run_name == run_name, attempts.c.status.in_(("started", "contacted")))
                )
            ).mappings()
            return [dict(r) for r in rows]

    # -- checkpoints
    def load(self, run_name: str) -> Checkpoint | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(checkpoints).where(checkpoints.c.run_name == run_name)).mappings().first()
            )
        if row is None:
            return None
        return Checkpoint(
            run_name=row["run_name"],
            round=int(row["round"]),
            model=np.frombuffer(row["model"], dtype="<f4").copy(),
            audit_run_id=row["audit_run_id"],
            rng_state=rng_from_json(row["rng_state"]),
            optimizer=_unpack_optimizer(row["optimizer"]),
            records=list(row["records"]),
            initial_evaluation=row["initial_evaluation"],
            roster=[(int(n), int(d)) for n, d in row["roster"]] if row["roster"] is not None else None,
            status=row["status"],
            input_offset=row["input_offset"],
        )

    def save(self, ck: Checkpoint, finished_attempt: int | None = None) -> None:
        """Write the checkpoint and close the round's attempt (a round id) in one transaction."""
        values = {
            "round": ck.round,
            "status": ck.status,
            "model": np.asarray(ck.model, dtype="<f4").tobytes(),
            "optimizer": _pack_optimizer(ck.optimizer),
            "rng_state": _json_state(ck.rng_state),
            "audit_run_id": ck.audit_run_id,
            "records": json.loads(json.dumps(ck.records, default=float)),
            "initial_evaluation": json.loads(json.dumps(ck.initial_evaluation, default=float)),
            "roster": [[str(n), d] for n, d in ck.roster] if ck.roster is not None else None,
            "input_offset": ck.input_offset,
            "updated_at": time.time(),
        }
        with self.engine.begin() as conn:
            exists = conn.scalar(select(checkpoints.c.run_name).where(checkpoints.c.run_name == ck.run_name))
            if exists is None:
                conn.execute(insert(checkpoints).values(run_name=ck.run_name, **values))
            else:
                conn.execute(
                    update(checkpoints).where(checkpoints.c.run_name == ck.run_name).values(**values)
                )
            if finished_attempt is not None:
                conn.execute(
                    update(attempts)
                    .where(attempts.c.id == finished_attempt - self.round_id_base)
                    .values(status="finished")
                )
