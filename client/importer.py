"""Replay a real event log (CSV or Parquet) onto per-device stores: one user = one device.

The whole file is parsed and validated before anything is written, so a bad row rejects the
import with its row number and reason and every store is left as it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedchurn.client.store import EventStore
from fedchurn.shared.events import (
    EVENT_DTYPE,
    EventError,
    action_code,
    check_timestamp,
    check_tz_offset,
    check_value,
)


class ImportRowError(ValueError):
    """A row of the log is unusable. `row` is 1-based over data rows (the CSV header is not a row)."""

    def __init__(self, path: Path, row: int, column: str, reason: str) -> None:
        where = f"row {row}" + (f" (line {row + 1})" if path.suffix.lower() == ".csv" else "")
        super().__init__(f"{path.name}: {where}, column {column!r}: {reason}")
        self.path, self.row, self.column, self.reason = path, row, column, reason


@dataclass(frozen=True)
class ColumnMapping:
    """Which column of the log holds each field. `value` and `tz_offset` columns are optional."""

    user: str = "user_id"
    timestamp: str = "timestamp"
    category: str = "category"
    action: str = "action"
    value: str | None = "value"
    tz_offset: str | None = None
    default_tz_min: int | None = None  # used for epoch timestamps and naive ISO times
    renames: dict[str, str] = field(default_factory=dict)  # category renames: log name -> catalogue id

    @classmethod
    def parse(cls, spec: str | None, default_tz_min: int | None = None) -> ColumnMapping:
        """From `field=column,...` (e.g. `user=uid,timestamp=time`); unknown fields are an error."""
        kwargs: dict[str, Any] = {"default_tz_min": default_tz_min}
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            key, sep, col = part.partition("=")
            if not sep or key not in {"user", "timestamp", "category", "action", "value", "tz_offset"}:
                raise ValueError(
                    f"bad mapping {part!r}: expected field=column with field one of "
                    "user, timestamp, category, action, value, tz_offset"
                )
            kwargs[key] = col or None
        return cls(**kwargs)


_INT_RE = re.compile(r"^[+-]?\d+$")


def _parse_ts(raw: Any, default_tz: int | None) -> tuple[int, int | None]:
    """Epoch seconds or ISO 8601; returns (UTC seconds, offset in minutes if the value carries one)."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        raise EventError("timestamp", "missing")
    if isinstance(raw, datetime):
        dt = raw
    elif isinstance(raw, bool):
        raise EventError("timestamp", f"expected a time, got {raw!r}")
    elif isinstance(raw, int):
        return raw, None
    elif isinstance(raw, float):
        if not raw.is_integer():
            raise EventError("timestamp", f"{raw!r} is not whole seconds")
        return int(raw), None
    else:
        text = str(raw).strip()
        if _INT_RE.match(text):
            return int(text), None
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise EventError("timestamp", f"{text!r} is neither epoch seconds nor ISO 8601") from None
    off = dt.utcoffset()
    if off is None:
        if default_tz is None:
            raise EventError("timestamp", f"{dt.isoformat()} has no UTC offset (give --tz or a tz column)")
        # Naive local time: interpret it in the default offset.
        naive_utc = int((dt.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds())
        return naive_utc - default_tz * 60, default_tz
    return int(dt.timestamp()), int(off.total_seconds() // 60)


def _as_int(raw: Any, name: str) -> int:
    if isinstance(raw, bool) or raw is None:
        raise EventError(name, f"expected a whole number, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    text = str(raw).strip()
    if _INT_RE.match(text):
        return int(text)
    raise EventError(name, f"expected a whole number, got {raw!r}")


def _as_float(raw: Any) -> float:
    if raw is None or raw == "":
        raise EventError("value", "missing")
    if isinstance(raw, bool):
        raise EventError("value", f"expected a number, got {raw!r}")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise EventError("value", f"expected a number, got {raw!r}") from None


def read_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (expected a header row and events)")
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".csv":
        bad: list[str] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append(
                f"row {row.number - 1} (line {row.number}): expected {row.expected_columns} "
                f"columns, got {row.actual_columns}"
            )
            return "skip"

        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                strings_can_be_null=False, column_types=None, auto_dict_encode=False
            ),
        )
        if bad:
            raise ValueError(f"{path.name}: {bad[0]}")
        # Re-read as text so every cell is validated by the same rules whatever pyarrow inferred.
        names = table.column_names
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    raise ValueError(f"{path.name}: unsupported format {suffix!r} (use .csv or .parquet)")


def read_log(path: str | Path, mapping: ColumnMapping | None = None) -> dict[str, np.ndarray]:
    """Parse and validate a whole log; returns user id -> `EVENT_DTYPE` array in file order."""
    path = Path(path)
    m = mapping or ColumnMapping()
    table = read_table(path)
    needed = {"user": m.user, "timestamp": m.timestamp, "category": m.category, "action": m.action}
    if m.value:
        needed["value"] = m.value
    if m.tz_offset:
        needed["tz_offset"] = m.tz_offset
    missing = [f"{k} (column {c!r})" for k, c in needed.items() if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{path.name}: missing columns: {', '.join(missing)}; "
            f"the file has: {', '.join(table.column_names)}"
        )
    cols = {k: table.column(c).to_pylist() for k, c in needed.items()}
    rows: dict[str, list[tuple[int, int, int, int, float]]] = {}
    for i in range(table.num_rows):
        column = "user"
        try:
            user = cols["user"][i]
            if user is None or str(user).strip() == "":
                raise EventError("user", "missing user id")
            column = "timestamp"
            ts, carried_tz = _parse_ts(cols["timestamp"][i], m.default_tz_min)
            check_timestamp(ts)
            column = "tz_offset"
            if m.tz_offset:
                tz = _as_int(cols["tz_offset"][i], "tz_offset")
            elif carried_tz is not None:
                tz = carried_tz
            else:
                tz = m.default_tz_min or 0
            check_tz_offset(tz)
            column = "category"
            cat = str(cols["category"][i] or "").strip()
            cat = m.renames.get(cat, cat)
            column = "action"
            cat_idx, act_idx = action_code(cat, str(cols["action"][i] or "").strip())
            column = "value"
            value = _as_float(cols["value"][i]) if m.value else 1.0
            check_value(value)
        except EventError as err:
            col_name = needed.get(err.field, needed.get(column, column))
            raise ImportRowError(path, i + 1, col_name, str(err).split(": ", 1)[-1]) from None
        rows.setdefault(str(user).strip(), []).append((ts, tz, cat_idx, act_idx, value))
    return {u: np.array(r, dtype=EVENT_DTYPE) for u, r in rows.items()}


def store_path(store_dir: Path, user: str) -> Path:
    """One SQLite file per user; the name is made file-system safe and stays readable."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
    return store_dir / f"{safe}.sqlite"


@dataclass(frozen=True)
class ImportReport:
    users: int
    rows: int
    inserted: int
    duplicates: int


def import_log(path: str | Path, store_dir: str | Path, mapping: ColumnMapping | None = None) -> ImportReport:
    """Validate the whole log, then append each user's events to that user's store."""
    per_user = read_log(path, mapping)
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    names = {store_path(store_dir, u) for u in per_user}
    if len(names) != len(per_user):
        raise ValueError("two user ids map to the same store file name; rename users to plain ASCII")
    inserted = duplicates = rows = 0
    for user, events in per_user.items():
        with EventStore(store_path(store_dir, user)) as store:
            res = store.append(events)
        inserted += res.inserted
        duplicates += res.duplicates
        rows += len(events)
    return ImportReport(users=len(per_user), rows=rows, inserted=inserted, duplicates=duplicates)
