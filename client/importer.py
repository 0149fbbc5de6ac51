"""Replay a real event log (CSV or Parquet) onto per-device stores: one user = one device.

The whole file is parsed and validated before anything is written, so a bad row rejects the
import with its row number and reason and every store is left as it was.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
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
    local_day,
)


class ImportRowError(ValueError):
    """A row of the log is unusable. `row` is 1-based over data rows (the CSV header is not a row)."""

    def __init__(self, path: Path, row: int, column: str, reason: str) -> None:
        where = f"row {row}" + (f" (line {row + 1})" if path.suffix.lower() == ".csv" else "")
        super().__init__(f"{path.name}: {where}, column {column!r}: {reason}")
        self.path, self.row, self.column, self.reason = path, row, column, reason


FIELDS = ("user", "timestamp", "category", "action", "value", "tz_offset")
CONSTANT_FIELDS = ("category", "action", "value", "tz_offset")  # a log may hold one value for all rows
ALIASES = {"tz": "tz_offset", "amount": "value"}


@dataclass(frozen=True)
class Source:
    """Where one field comes from: a column of the log (its cells optionally mapped through
    `values`), or, when the log has no column of that name, a constant for every row."""

    name: str
    values: tuple[tuple[str, str], ...] = ()  # cell text -> field value; other cells are an error
    given: bool = False  # named in --map: may be a constant when the log has no such column

    def lookup(self, cell: Any) -> Any:
        if not self.values:
            return cell
        text = "" if cell is None else str(cell).strip()
        table = dict(self.values)
        if text not in table:
            raise EventError("", f"{text!r} is not in the mapping {{{', '.join(table)}}}")
        return table[text]


@dataclass(frozen=True)
class ColumnMapping:
    """How a log's columns make events. `value` and `tz_offset` are optional.

    `field=column` reads a column; `field=column:{a:x,b:y}` maps its cells (cell a gives x);
    `field=text` where the log has no column `text` sets a constant (category, action, value and
    tz_offset only), e.g. `category=purchases,action=event_type:{buy:purchase,return:refund}`.
    """

    user: Source = Source("user_id")
    timestamp: Source = Source("timestamp")
    category: Source = Source("category")
    action: Source = Source("action")
    value: Source | None = Source("value")
    tz_offset: Source | None = None
    default_tz_min: int | None = None  # used for epoch timestamps and naive ISO times

    @classmethod
    def parse(cls, spec: str | None, default_tz_min: int | None = None) -> ColumnMapping:
        """From `field=source,...` (see the class); unknown fields and bad syntax are an error."""
        kwargs: dict[str, Any] = {"default_tz_min": default_tz_min}
        for part in _split_top(spec or ""):
            key, sep, rhs = part.partition("=")
            key = ALIASES.get(key.strip(), key.strip())
            if not sep or key not in FIELDS:
                raise ValueError(
                    f"--map: bad mapping {part!r}: expected field=column with field one of "
                    f"{', '.join(FIELDS)} (or tz)"
                )
            kwargs[key] = _source(key, rhs.strip()) if rhs.strip() else None
        if any(k in kwargs and kwargs[k] is None for k in ("user", "timestamp", "category", "action")):
            raise ValueError("--map: user, timestamp, category and action cannot be empty")
        if default_tz_min is not None:
            try:
                check_tz_offset(default_tz_min)
            except EventError as e:
                raise ValueError(f"--tz: {str(e).partition(': ')[2]}") from None
        return cls(**kwargs)


def _split_top(spec: str) -> list[str]:
    """Split on commas outside braces."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    if depth != 0:
        raise ValueError(f"--map {spec!r}: unbalanced braces")
    return [p.strip() for p in parts if p.strip()]


def _source(key: str, rhs: str) -> Source:
    name, brace, rest = rhs.partition(":{")
    if not brace:
        return Source(rhs, given=True)
    if not rest.endswith("}"):
        raise ValueError(f"--map {key}={rhs}: a value map is column:{{cell:value,...}}")
    pairs = []
    for item in filter(None, (i.strip() for i in rest[:-1].split(","))):
        a, colon, b = item.partition(":")
        if not colon or not a.strip() or not b.strip():
            raise ValueError(f"--map {key}={rhs}: {item!r} is not cell:value")
        pairs.append((a.strip(), b.strip()))
    if not pairs:
        raise ValueError(f"--map {key}={rhs}: the value map is empty")
    return Source(name.strip(), tuple(pairs), given=True)


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
            raise EventError(
                "timestamp",
                f"{dt.isoformat()} has no UTC offset (give --tz, or name the log's offset column "
                "with --map tz=COLUMN)",
            )
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


COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")  # pyarrow decompresses a CSV by its extension


def log_format(path: Path) -> str:
    """`csv` (plain or compressed) or `parquet`, from the file name; anything else is refused."""
    suffixes = [x.lower() for x in path.suffixes[-2:]]
    if suffixes[-1:] == [".parquet"]:
        return "parquet"
    if suffixes[-1:] == [".csv"] or (
        len(suffixes) == 2 and suffixes[0] == ".csv" and suffixes[1] in COMPRESSED
    ):
        return "csv"
    raise ValueError(
        f"{path.name}: unsupported format {''.join(path.suffixes) or 'without an extension'!r} "
        f"(use .csv, .csv{'/.csv'.join(COMPRESSED)} or .parquet)"
    )


def read_table(path: Path) -> pa.Table:
    """The log as a table of text cells; what cannot be read (a corrupt archive, text that is not
    UTF-8, two columns of one name) is a ValueError naming the file."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (expected a header row and events)")
    try:
        table = pq.read_table(path) if log_format(path) == "parquet" else _read_csv(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot be read as a {log_format(path)} log: {e}") from None
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path.name}: the header names {', '.join(map(repr, twice))} more than once")
    return table


def _read_csv(path: Path) -> pa.Table:
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(
            f"row {row.number - 1} (line {row.number}): expected {row.expected_columns} "
            f"columns, got {row.actual_columns}"
        )
        return "skip"

    # Every cell is read as text and validated by the same rules whatever pyarrow would infer.
    header = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 16),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
    )
    names = header.schema.names
    header.close()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    if bad:
        raise ValueError(f"{path.name}: {bad[0]}")
    if table.num_rows == 0:
        raise ValueError(f"{path.name}: a header row but no events")
    return table


def _tz_cell(raw: Any) -> int:
    """A tz cell: minutes east of UTC (`120`) or an offset (`+02:00`, `-0530`)."""
    text = "" if raw is None else str(raw).strip()
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if m:
        minutes = int(m.group(2)) * 60 + int(m.group(3))
        return minutes if m.group(1) == "+" else -minutes
    return _as_int(raw, "tz_offset")


def read_log(path: str | Path, mapping: ColumnMapping | None = None) -> dict[str, np.ndarray]:
    """Parse and validate a whole log; returns user id -> `EVENT_DTYPE` array in file order."""
    path = Path(path)
    m = mapping or ColumnMapping()
    table = read_table(path)
    sources = {
        k: src
        for k, src in (
            ("user", m.user),
            ("timestamp", m.timestamp),
            ("category", m.category),
            ("action", m.action),
            ("value", m.value),
            ("tz_offset", m.tz_offset),
        )
        if src is not None
    }
    have = set(table.column_names)
    constant = {
        k for k, src in sources.items() if src.name not in have and src.given and k in CONSTANT_FIELDS
    }
    missing = [
        f"{k} (column {src.name!r})"
        for k, src in sources.items()
        if src.name not in have and k not in constant
    ]
    if missing:
        raise ValueError(
            f"{path.name}: missing columns: {', '.join(missing)}; "
            f"the file has: {', '.join(table.column_names)}"
        )
    n = table.num_rows
    cols = {
        k: [src.name] * n if k in constant else table.column(src.name).to_pylist()
        for k, src in sources.items()
    }
    where = {k: (f"--map {k}={src.name}" if k in constant else src.name) for k, src in sources.items()}
    rows: dict[str, list[tuple[int, int, int, int, float]]] = {}
    for i in range(n):
        column = "user"
        try:
            user = cols["user"][i]
            if user is None or str(user).strip() == "":
                raise EventError("user", "missing user id")
            column = "tz_offset"  # a tz column is also the zone of the row's naive time
            row_tz = (
                _tz_cell(sources["tz_offset"].lookup(cols["tz_offset"][i]))
                if "tz_offset" in sources
                else None
            )
            if row_tz is not None:
                check_tz_offset(row_tz)
            column = "timestamp"
            naive_tz = m.default_tz_min if row_tz is None else row_tz
            ts, carried_tz = _parse_ts(sources["timestamp"].lookup(cols["timestamp"][i]), naive_tz)
            check_timestamp(ts)
            tz = (
                row_tz
                if row_tz is not None
                else carried_tz
                if carried_tz is not None
                else m.default_tz_min or 0
            )
            check_tz_offset(tz)
            column = "category"
            cat = str(sources["category"].lookup(cols["category"][i]) or "").strip()
            column = "action"
            act = str(sources["action"].lookup(cols["action"][i]) or "").strip()
            column = "category"
            cat_idx, act_idx = action_code(cat, act)
            column = "value"
            value = _as_float(sources["value"].lookup(cols["value"][i])) if "value" in sources else 1.0
            check_value(value)
        except EventError as err:
            field_name = err.field if err.field in where else column
            raise ImportRowError(
                path, i + 1, where.get(field_name, field_name), str(err).split(": ", 1)[-1]
            ) from None
        rows.setdefault(str(user).strip(), []).append((ts, tz, cat_idx, act_idx, value))
    return {u: np.array(r, dtype=EVENT_DTYPE) for u, r in rows.items()}


@lru_cache(maxsize=2)
def read_log_devices(path: str, mapping: str, tz: str = "") -> tuple[tuple[np.ndarray, ...], int]:
    """A log as simulated devices: each user's events, users sorted by id (device i is the i-th),
    and the log's last local day (every device's today). Cached: a simulation process reads the
    log once however many messages it answers."""
    default_tz = int(tz) if tz.strip() else None
    per_user = read_log(Path(path), ColumnMapping.parse(mapping, default_tz))
    if not per_user:
        raise ValueError(f"{Path(path).name}: the log holds no events")
    arrays = tuple(per_user[u] for u in sorted(per_user))
    today = max(int(local_day(a["ts"], a["tz_min"]).max()) for a in arrays)
    return arrays, today


MAX_STORE_NAME_BYTES = 120  # of the readable part; file systems allow 255 bytes a name


def store_path(store_dir: Path, user: str) -> Path:
    """One SQLite file per user; the name is made file-system safe and stays readable.

    Letters and digits of any script are kept (`李雷` is `李雷.sqlite`); an id that had to change
    (a path separator, a leading dot, which hides the file from the SuperNode's listing, a name
    too long) gets a hash of itself appended, so that two ids never share a file: review 21 found
    `../../evil` stored as the hidden `.._.._evil.sqlite` and two Chinese names refused as one."""
    safe = re.sub(r"[^\w.-]", "_", user)
    safe = "_" + safe[1:] if safe.startswith(".") else safe
    if safe != user or len(safe.encode()) > MAX_STORE_NAME_BYTES:
        tag = hashlib.sha256(user.encode()).hexdigest()[:12]
        safe = f"{safe.encode()[:MAX_STORE_NAME_BYTES].decode(errors='ignore')}-{tag}"
    return store_dir / f"{safe}.sqlite"


@dataclass(frozen=True)
class ImportReport:
    users: int
    rows: int
    inserted: int
    duplicates: int


def import_log(
    path: str | Path,
    store_dir: str | Path,
    mapping: ColumnMapping | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Validate the whole log, then append each user's events to that user's store
    (`progress(done, users)` after each store)."""
    per_user = read_log(path, mapping)
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    users_of: dict[Path, list[str]] = {}
    for u in per_user:
        users_of.setdefault(store_path(store_dir, u), []).append(u)
    clashes = [users for users in users_of.values() if len(users) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(u) for u in users) for users in clashes[:3])
        raise ValueError(f"user ids map to the same store file name ({shown}); rename users to plain ASCII")
    # Every store is opened once before any is written: a file that is no store (or of another
    # schema) is named here, not after the stores before it took their rows (review 19).
    for path in filter(Path.exists, users_of):
        try:
            EventStore(path).close()
        except (sqlite3.DatabaseError, RuntimeError) as e:
            raise ValueError(f"{path}: not an event store this code can write ({e})") from None
    inserted = duplicates = rows = 0
    for done, (user, events) in enumerate(per_user.items(), start=1):
        with EventStore(store_path(store_dir, user)) as store:
            res = store.append(events)
        inserted += res.inserted
        duplicates += res.duplicates
        rows += len(events)
        if progress is not None:
            progress(done, len(per_user))
    return ImportReport(users=len(per_user), rows=rows, inserted=inserted, duplicates=duplicates)
