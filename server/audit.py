"""The persistent audit log of federated runs: one record per run, one per training round.

The aggregator writes here (directly, or through the API's authenticated POST routes) and the
transparency API reads here, so a reviewer sees exactly what the server recorded. The schema is
owned by Alembic (`server/migrations/`); constructing an `AuditStore` upgrades the database to
the newest revision in-process, so no `alembic.ini` is needed.

Rules the store enforces, because crash recovery and reviewers rely on them:
- a round is recorded at most once per run (a second write raises `RoundAlreadyRecordedError`);
- refused devices are kept only as counts per reason: no device id is ever stored or returned;
- a finished run takes no more rounds and cannot be finished twice;
- every input passes the same pydantic models as the HTTP API (`api_models`), so the Python
  path and the HTTP path accept exactly the same records.
- a round whose fields contradict each other (more received than sampled, finished before it
  started, a skip reason on a round not skipped, another protection mode than its run's) is
  refused whole (`InvalidRecordError` naming the field; docs/api.md lists the rules).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    Session,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool

from fedchurn.server.api_models import (
    RUN_END_STATES,
    DpIn,
    ModelIn,
    ProtectionIn,
    RoundIn,
    RunFinishIn,
    to_utc,
)
from fedchurn.shared.wire import Reason

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

DEFAULT_DATABASE_URL = "sqlite:///fedchurn-audit.sqlite"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "fedchurn_audit_alembic_version"  # not `alembic_version`: the database may be shared
MAX_PAGE = 500
# What a concurrent upgrade by another process looks like (0001 creates tables, 0002 adds a column).
UPGRADE_RACES = ("already exists", "duplicate column", "locked")

T = TypeVar("T")


# --- errors ----------------------------------------------------------------------------------


class AuditError(Exception):
    """Base class: anything the audit store refuses."""


class InvalidRecordError(AuditError, ValueError):
    """A record does not match the contract (the message names the field; `field`, when set, is
    the field of the record that breaks it)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownRunError(AuditError, LookupError):
    """No run with this id."""


class RoundAlreadyRecordedError(AuditError):
    """The (run, round) pair exists: a round is never counted twice."""


class RunFinishedError(AuditError):
    """The run has ended; it accepts no more rounds and no second finish."""


class AuditDatabaseError(AuditError):
    """The database cannot be reached, or its driver is missing."""


# --- schema ----------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; returns aware datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None) if dialect.name == "sqlite" else to_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON(none_as_null=True),
        list[dict[str, Any]]: JSON(none_as_null=True),
    }


class RunRow(Base):
    __tablename__ = "audit_runs"
    __table_args__ = (UniqueConstraint("run_id", name="uq_audit_runs_run_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    protection_mode: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    protection: Mapped[dict[str, Any]]
    dp: Mapped[dict[str, Any]]
    model: Mapped[dict[str, Any]]
    final_metrics: Mapped[dict[str, Any] | None]
    model_card: Mapped[dict[str, Any] | None]


class RoundRow(Base):
    __tablename__ = "audit_rounds"
    __table_args__ = (
        UniqueConstraint("run_id", "round", name="uq_audit_rounds_run_round"),
        Index("ix_audit_rounds_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("audit_runs.run_id", ondelete="CASCADE", name="fk_audit_rounds_run_id")
    )
    round: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    sampled: Mapped[int] = mapped_column(Integer)
    received: Mapped[int] = mapped_column(Integer)
    refused_count: Mapped[int] = mapped_column(BigInteger)  # a sum of counts (each up to 10^9)
    refused: Mapped[list[dict[str, Any]]]  # [{"reason": str, "count": int}], sorted by reason
    bytes_received: Mapped[int] = mapped_column(BigInteger)
    protection_mode: Mapped[str] = mapped_column(String(16))
    dp_noise_std: Mapped[float | None] = mapped_column(Float)
    epsilon_spent: Mapped[float | None] = mapped_column(Float)  # against outsiders (amplified)
    epsilon_aggregator: Mapped[float | None] = mapped_column(Float)  # against the aggregator (0002)
    metrics: Mapped[dict[str, Any]]
    skipped: Mapped[bool] = mapped_column(Boolean)
    skip_reason: Mapped[str | None] = mapped_column(Text)


# --- records returned to readers ---------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    config: dict[str, Any]
    protection: dict[str, Any]
    dp: dict[str, Any]
    model: dict[str, Any]
    final_metrics: dict[str, Any] | None
    model_card: dict[str, Any] | None
    rounds_recorded: int = 0
    epsilon_spent: float | None = None  # against outsiders, the last round that reported one
    epsilon_aggregator: float | None = None  # against the aggregator, likewise


@dataclass(frozen=True)
class RoundRecord:
    run_id: str
    round: int
    started_at: datetime
    finished_at: datetime
    recorded_at: datetime
    sampled: int
    received: int
    refused: list[dict[str, Any]]  # [{"reason": str, "count": int}], sorted by reason
    bytes_received: int
    protection_mode: str
    dp_noise_std: float | None
    epsilon_spent: float | None
    epsilon_aggregator: float | None
    metrics: dict[str, Any]
    skipped: bool
    skip_reason: str | None


@dataclass(frozen=True)
class Page(Generic[T]):
    total: int
    offset: int
    limit: int
    items: list[T] = field(default_factory=list)


@dataclass(frozen=True)
class RoundFilters:
    """Filters of `list_rounds`; every field None means "do not filter on it"."""

    run_id: str | None = None
    protection_mode: str | None = None
    skipped: bool | None = None
    with_refusals: bool | None = None
    min_round: int | None = None
    max_round: int | None = None
    since: datetime | None = None  # finished at or after
    until: datetime | None = None  # finished before


# --- helpers ---------------------------------------------------------------------------------


def _refusal(r: Any) -> Any:
    """A refusal without its device id: the audit log keeps reasons and counts, never devices."""
    if isinstance(r, Mapping):
        return {k: v for k, v in r.items() if k != "device"}
    return r


# What the aggregator writes as a refusal's reason besides `wire.Reason` codes (`server.strategy`).
MALFORMED_REPLY = "malformed reply"
UNEXPECTED_DEVICE = "unexpected or repeated device in reply"
NO_UPLOAD = "no upload (failed, refused or timed out)"
REFUSED = "refused"  # what any other reason is published as
_LEGACY = "no upload (failed or timed out)"  # NO_UPLOAD as older aggregators wrote it
_PUBLIC_CODES = frozenset(
    {r.value for r in Reason} | {MALFORMED_REPLY, UNEXPECTED_DEVICE, NO_UPLOAD, REFUSED, _LEGACY}
)
_CLIENT_ERROR = re.compile(r"^client error: (?:<class '(?:[\w.]*\.)?(\w+)'>|(\w+)(?::|$))")


def public_reason(reason: str) -> str:
    """A refusal reason fit for the public audit log: its code only. A device's own error message
    may carry its index, and a key holder's or aggregator's detail may carry figures of a sum
    (a refused cohort's largest coordinate once read out what the noise was to hide), so the
    log keeps a `wire.Reason` code, the class name of a device's error ("client error:
    PinError"), or one of the aggregator's fixed phrases, and nothing after them."""
    if reason.startswith("client error"):
        m = _CLIENT_ERROR.match(reason)
        name = (m.group(1) or m.group(2)) if m else None
        return f"client error: {name}" if name else "client error"
    code = reason.split(":", 1)[0].strip()
    return code if code in _PUBLIC_CODES else REFUSED


def refusal_counts(refused: Any) -> list[dict[str, Any]]:
    """`[{"reason": str, "count": int}]` sorted by reason, same reasons added up, devices dropped.

    Takes counted entries (`{"reason", "count"}`) and per-device ones (`{"device", "reason"}`, one
    device each: what the aggregator builds and what revision 0001 stored) alike.
    """
    counts: dict[str, int] = {}
    for r in refused if isinstance(refused, list | tuple) else ():
        if not isinstance(r, Mapping):
            continue
        n = r.get("count", 1)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        reason = str(r.get("reason", ""))
        counts[reason] = counts.get(reason, 0) + n
    return [{"reason": k, "count": counts[k]} for k in sorted(counts)]


def _as_time(value: Any) -> Any:
    """Unix seconds (what `time.time()` gives the aggregator) to an aware datetime; the rest as is."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return value
    return value


def json_safe(value: Any, *, keep_times: bool = False) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/inf as null, NUL bytes replaced,
    datetimes as RFC 3339 strings (kept as objects with `keep_times`, for validation).

    The aggregator passes numpy metrics; JSON has no NaN and PostgreSQL text refuses NUL.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, datetime):
        return value if keep_times else to_utc(value).isoformat()
    if isinstance(value, Mapping):
        return {str(json_safe(k)): json_safe(v, keep_times=keep_times) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, keep_times=keep_times) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return json_safe(tolist(), keep_times=keep_times)
    return json_safe(str(value))


def _validation_message(what: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or what
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


def alembic_config(database_url: str, connection: Connection | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini): the packaged migrations, this database.

    For a new revision: `command.revision(alembic_config(url), message=..., autogenerate=True)`.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    # Passed as an attribute, not a main option: configparser would choke on '%' in passwords.
    cfg.attributes["database_url"] = database_url
    cfg.attributes["version_table"] = VERSION_TABLE
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def make_engine(database_url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL and a busy timeout so the API reads while a run writes."""
    try:
        url = make_url(database_url)
    except ArgumentError as e:
        raise AuditDatabaseError(f"not a database URL: {database_url!r} ({e})") from None
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database for every thread
        else:
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise AuditDatabaseError(
            f"no driver for {url.drivername!r}: {e}. For PostgreSQL install a driver, e.g. "
            "`pip install psycopg[binary]`, and use a URL such as postgresql+psycopg://user@host/db "
            "(for `fedchurn serve`: in $FEDCHURN_DATABASE_URL); the password goes in PGPASSWORD or "
            "~/.pgpass, never on a command line"
        ) from None
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


# --- the store -------------------------------------------------------------------------------


class AuditStore:
    """Audit log of federated runs in a SQL database (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, database_url: str = DEFAULT_DATABASE_URL, *, upgrade: bool = True) -> None:
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> None:
        """`alembic upgrade head` in-process; retried once if another process created it meanwhile."""
        from alembic import command

        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    command.upgrade(alembic_config(self.database_url, conn), "head")
                return
            except (OperationalError, IntegrityError) as e:
                msg = str(e).lower()
                if attempt == 1 or not any(m in msg for m in UPGRADE_RACES):
                    raise AuditDatabaseError(f"cannot prepare the audit database: {e}") from None
                time.sleep(0.2)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions() as s, s.begin():
                yield s
        except OperationalError as e:
            raise AuditDatabaseError(f"audit database error: {e.orig}") from None

    # -- writers --------------------------------------------------------------------------------

    def start_run(
        self,
        config: Mapping[str, Any],
        protection: Mapping[str, Any],
        dp: Mapping[str, Any],
        model: Mapping[str, Any],
        *,
        run_id: str | None = None,
        started_at: datetime | None = None,
    ) -> str:
        """Open a run; returns its id (32 hex digits unless given)."""
        try:
            prot = ProtectionIn.model_validate(json_safe(protection))
            dpv = DpIn.model_validate(json_safe(dp))
            mdl = ModelIn.model_validate(json_safe(model))
        except ValidationError as e:
            raise InvalidRecordError(_validation_message("run", e)) from None
        if not isinstance(config, Mapping):
            raise InvalidRecordError("invalid run: config must be a mapping")
        rid = run_id or uuid.uuid4().hex
        row = RunRow(
            run_id=rid,
            status="running",
            started_at=to_utc(started_at) if started_at else datetime.now(UTC),
            finished_at=None,
            protection_mode=prot.mode,
            config=json_safe(config),
            protection=prot.model_dump(mode="json"),
            dp=dpv.model_dump(mode="json"),
            model=mdl.model_dump(mode="json"),
            final_metrics=None,
            model_card=None,
        )
        try:
            with self._session() as s:
                s.add(row)
        except IntegrityError:
            raise InvalidRecordError(f"run id {rid!r} already exists") from None
        return rid

    def record_round(
        self,
        run_id: str,
        round: int,
        *,
        started_at: datetime | float | str,
        finished_at: datetime | float | str,
        sampled: int,
        received: int,
        refused: Sequence[Mapping[str, Any]],
        bytes_received: int,
        protection_mode: str,
        dp_noise_std: float | None,
        epsilon_spent: float | None,
        metrics: Mapping[str, Any],
        skipped: bool = False,
        skip_reason: str | None = None,
        epsilon_aggregator: float | None = None,
    ) -> RoundRecord:
        """Append one round; refuses a second write of the same (run, round).

        `refused`: `[{"reason": str, "count": int}]` (a `device` key is dropped unread, and an
        entry without `count` is one device). `epsilon_spent` is ε against outsiders (amplified by
        the secret sampling), `epsilon_aggregator` ε against the aggregator (no amplification)."""
        try:
            rec = RoundIn.model_validate(
                json_safe(
                    {
                        "round": round,
                        "started_at": _as_time(started_at),
                        "finished_at": _as_time(finished_at),
                        "sampled": sampled,
                        "received": received,
                        "refused": [_refusal(r) for r in refused],
                        "bytes_received": bytes_received,
                        "protection_mode": protection_mode,
                        "dp_noise_std": dp_noise_std,
                        "epsilon_spent": epsilon_spent,
                        "epsilon_aggregator": epsilon_aggregator,
                        "metrics": metrics,
                        "skipped": skipped,
                        "skip_reason": skip_reason,
                    },
                    keep_times=True,
                )
            )
        except ValidationError as e:
            raise InvalidRecordError(_validation_message(f"round {round} of run {run_id}", e)) from None
        return self.record_round_in(run_id, rec)

    def record_round_in(self, run_id: str, rec: RoundIn) -> RoundRecord:
        """`record_round` for an already validated record (the HTTP route)."""
        duplicate = RoundAlreadyRecordedError(
            f"round {rec.round} of run {run_id} is already recorded; a round is never counted twice"
        )
        # Reasons and counts only: a `device` an older writer sent is never read, stored or shown.
        refused = refusal_counts([{"reason": r.reason, "count": r.count} for r in rec.refused])
        try:
            with self._session() as s:
                run = self._run_row(s, run_id)
                if rec.protection_mode != run.protection_mode:
                    raise InvalidRecordError(
                        f"invalid round {rec.round} of run {run_id}: protection_mode: "
                        f"{rec.protection_mode!r} is not the run's protection mode {run.protection_mode!r}",
                        field="protection_mode",
                    )
                if run.status != "running":
                    raise RunFinishedError(f"run {run_id} ended ({run.status}); it takes no more rounds")
                exists = s.scalar(
                    select(RoundRow.id).where(RoundRow.run_id == run_id, RoundRow.round == rec.round)
                )
                if exists is not None:
                    raise duplicate
                row = RoundRow(
                    run_id=run_id,
                    round=rec.round,
                    started_at=to_utc(rec.started_at),
                    finished_at=to_utc(rec.finished_at),
                    recorded_at=datetime.now(UTC),
                    sampled=rec.sampled,
                    received=rec.received,
                    refused_count=sum(r["count"] for r in refused),
                    refused=refused,
                    bytes_received=rec.bytes_received,
                    protection_mode=rec.protection_mode,
                    dp_noise_std=rec.dp_noise_std,
                    epsilon_spent=rec.epsilon_spent,
                    epsilon_aggregator=rec.epsilon_aggregator,
                    metrics=json_safe(rec.metrics),
                    skipped=rec.skipped,
                    skip_reason=rec.skip_reason,
                )
                s.add(row)
                s.flush()
                return _round_record(row)
        except IntegrityError:  # a concurrent writer won the race on the unique constraint
            raise duplicate from None

    def finish_run(
        self,
        run_id: str,
        status: str,
        final_metrics: Mapping[str, Any],
        model_card: Mapping[str, Any],
        *,
        finished_at: datetime | None = None,
    ) -> RunRecord:
        """Close a run with its final metrics and model card (see `docs/api.md` for the card's keys)."""
        try:
            fin = RunFinishIn.model_validate(
                json_safe({"status": status, "final_metrics": final_metrics, "model_card": model_card})
            )
        except ValidationError as e:
            raise InvalidRecordError(
                _validation_message(f"finish of run {run_id} (status one of {', '.join(RUN_END_STATES)})", e)
            ) from None
        with self._session() as s:
            run = self._run_row(s, run_id)
            if run.status != "running":
                raise RunFinishedError(f"run {run_id} already ended ({run.status})")
            run.status = fin.status
            run.finished_at = to_utc(finished_at) if finished_at else datetime.now(UTC)
            run.final_metrics = json_safe(fin.final_metrics)
            run.model_card = json_safe(fin.model_card)
        found = self.get_run(run_id)
        assert found is not None
        return found

    # -- readers --------------------------------------------------------------------------------

    @staticmethod
    def _run_row(s: Session, run_id: str) -> RunRow:
        row = s.scalar(select(RunRow).where(RunRow.run_id == run_id))
        if row is None:
            raise UnknownRunError(f"no run {run_id!r}")
        return row

    @staticmethod
    def _latest(s: Session, run_id: str, column: InstrumentedAttribute[float | None]) -> float | None:
        """The value of `column` in the run's last round that recorded one (ε is cumulative)."""
        value: float | None = s.scalar(
            select(column)
            .where(RoundRow.run_id == run_id, column.is_not(None))
            .order_by(RoundRow.round.desc())
            .limit(1)
        )
        return value

    def _run_record(self, s: Session, row: RunRow) -> RunRecord:
        n = s.scalar(select(func.count()).select_from(RoundRow).where(RoundRow.run_id == row.run_id)) or 0
        return RunRecord(
            run_id=row.run_id,
            status=row.status,
            started_at=row.started_at,
            finished_at=row.finished_at,
            config=dict(row.config),
            protection=dict(row.protection),
            dp=dict(row.dp),
            model=dict(row.model),
            final_metrics=None if row.final_metrics is None else dict(row.final_metrics),
            model_card=None if row.model_card is None else dict(row.model_card),
            rounds_recorded=int(n),
            epsilon_spent=self._latest(s, row.run_id, RoundRow.epsilon_spent),
            epsilon_aggregator=self._latest(s, row.run_id, RoundRow.epsilon_aggregator),
        )

    def list_runs(self, offset: int = 0, limit: int = 50) -> Page[RunRecord]:
        """Runs, newest first."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._session() as s:
            total = s.scalar(select(func.count()).select_from(RunRow)) or 0
            rows = s.scalars(select(RunRow).order_by(RunRow.seq.desc()).offset(offset).limit(limit)).all()
            return Page(int(total), offset, limit, [self._run_record(s, r) for r in rows])

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._session() as s:
            row = s.scalar(select(RunRow).where(RunRow.run_id == run_id))
            return None if row is None else self._run_record(s, row)

    def latest_run(self, *, completed: bool = False) -> RunRecord | None:
        """The newest run (or the newest completed one)."""
        with self._session() as s:
            q = select(RunRow).order_by(RunRow.seq.desc()).limit(1)
            if completed:
                q = q.where(RunRow.status == "completed")
            row = s.scalar(q)
            return None if row is None else self._run_record(s, row)

    def list_rounds(
        self, run_id: str | None = None, filters: RoundFilters | None = None, offset: int = 0, limit: int = 50
    ) -> Page[RoundRecord]:
        """Rounds in run order then round order; `run_id` here overrides `filters.run_id`."""
        f = filters or RoundFilters()
        limit = max(1, min(limit, MAX_PAGE))
        q = select(RoundRow)
        rid = run_id if run_id is not None else f.run_id
        if rid is not None:
            q = q.where(RoundRow.run_id == rid)
        if f.protection_mode is not None:
            q = q.filter_by(protection_mode=f.protection_mode)
        if f.skipped is not None:
            q = q.where(RoundRow.skipped.is_(f.skipped))
        if f.with_refusals is not None:
            q = q.where(RoundRow.refused_count > 0 if f.with_refusals else RoundRow.refused_count == 0)
        if f.min_round is not None:
            q = q.where(RoundRow.round >= f.min_round)
        if f.max_round is not None:
            q = q.where(RoundRow.round <= f.max_round)
        if f.since is not None:
            q = q.where(RoundRow.finished_at >= to_utc(f.since))
        if f.until is not None:
            q = q.where(RoundRow.finished_at < to_utc(f.until))
        with self._session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(
                q.join(RunRow, RunRow.run_id == RoundRow.run_id)
                .order_by(RunRow.seq, RoundRow.round)
                .offset(offset)
                .limit(limit)
            ).all()
            return Page(int(total), offset, limit, [_round_record(r) for r in rows])

    def training_uploads(self, run_id: str) -> tuple[int, int]:
        """(uploads received, bytes received) over a run's training rounds: round 1 on, not skipped.
        Round 0 is the feature-mean round of `centre-features`, whose uploads are smaller."""
        with self._session() as s:
            received, got = s.execute(
                select(
                    func.coalesce(func.sum(RoundRow.received), 0),
                    func.coalesce(func.sum(RoundRow.bytes_received), 0),
                ).where(RoundRow.run_id == run_id, RoundRow.round >= 1, RoundRow.skipped.is_(False))
            ).one()
        return int(received), int(got)

    def privacy_budget(self, run_id: str | None = None) -> dict[str, Any] | None:
        """ε spent so far (last recorded round's value; against outsiders and against the
        aggregator), δ and accountant of a run (default: latest)."""
        run = self.get_run(run_id) if run_id is not None else self.latest_run()
        if run is None:
            return None
        with self._session() as s:
            counted = s.scalar(
                select(func.count())
                .select_from(RoundRow)
                .where(RoundRow.run_id == run.run_id, RoundRow.skipped.is_(False))
            )
        target = run.dp.get("target_epsilon")
        spent = run.epsilon_spent
        # δ belongs to an ε: a run without DP (no accountant or no noise in training, exact
        # evaluations, no ε recorded) has none, whatever default its configuration carried.
        noised = str(run.dp.get("accountant") or "none").lower() != "none" and bool(
            run.dp.get("noise_multiplier")
        )
        dp_used = (
            noised
            or bool(run.dp.get("evaluation_noise_multiplier"))
            or spent is not None
            or run.epsilon_aggregator is not None
        )
        return {
            "run_id": run.run_id,
            "run_status": run.status,
            "epsilon_spent": spent,
            "epsilon_aggregator_spent": run.epsilon_aggregator,
            "target_epsilon": target,
            "remaining_epsilon": None if target is None or spent is None else max(0.0, target - spent),
            "delta": run.dp.get("delta") if dp_used else None,
            "accountant": run.dp.get("accountant"),
            "mechanism": run.dp.get("mechanism"),
            "noise_multiplier": run.dp.get("noise_multiplier"),
            "clip_norm": run.dp.get("clip_norm"),
            "rounds_counted": int(counted or 0),
            "evaluation_noise_multiplier": run.dp.get("evaluation_noise_multiplier"),
            "evaluation_epsilon_per_run": run.dp.get("evaluation_epsilon_per_run"),
        }

    def latest_model_card(self) -> tuple[RunRecord, dict[str, Any]] | None:
        """The newest completed run that has a model card, with that card."""
        with self._session() as s:
            row = s.scalar(
                select(RunRow)
                .where(RunRow.status == "completed", RunRow.model_card.is_not(None))
                .order_by(RunRow.seq.desc())
                .limit(1)
            )
            if row is None:
                return None
            rec = self._run_record(s, row)
        return rec, dict(rec.model_card or {})


def _round_record(row: RoundRow) -> RoundRecord:
    return RoundRecord(
        run_id=row.run_id,
        round=row.round,
        started_at=row.started_at,
        finished_at=row.finished_at,
        recorded_at=row.recorded_at,
        sampled=row.sampled,
        received=row.received,
        refused=refusal_counts(row.refused),  # also hides device ids of rows not yet migrated
        bytes_received=row.bytes_received,
        protection_mode=row.protection_mode,
        dp_noise_std=row.dp_noise_std,
        epsilon_spent=row.epsilon_spent,
        epsilon_aggregator=row.epsilon_aggregator,
        metrics=dict(row.metrics),
        skipped=row.skipped,
        skip_reason=row.skip_reason,
    )
