from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedchurn.client.importer import ColumnMapping, ImportRowError, Source, import_log, read_log, store_path
from fedchurn.client.store import EventStore

HEADER = "user_id,timestamp,category,action,value\n"
GOOD = [
    "u1,2026-01-01T09:00:00+08:00,sessions,session,120\n",
    "u1,1767229200,purchases,purchase,9.5\n",
    "u2,2026-01-02T10:00:00Z,reactions,reaction,1\n",
]


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text(HEADER + "".join(lines))
    return path


def test_csv_import_one_store_per_user(tmp_path: Path) -> None:
    rep = import_log(_csv(tmp_path / "log.csv", GOOD), tmp_path / "stores")
    assert (rep.users, rep.rows, rep.inserted) == (2, 3, 3)
    with EventStore(store_path(tmp_path / "stores", "u1")) as s:
        ev = s.events()
    assert list(ev["tz_min"]) == [480, 0]  # the ISO offset is kept as the device clock


@pytest.mark.parametrize(
    ("bad", "column", "reason"),
    [
        ("u1,2026-01-03T09:00:00Z,sessions,teleport,1\n", "action", "not an action"),
        ("u1,yesterday,sessions,session,1\n", "timestamp", "neither epoch"),
        ("u1,2026-01-03T09:00:00Z,emails,sent,1\n", "category", "unknown category"),
        ("u1,2026-01-03T09:00:00Z,sessions,session,-4\n", "value", "outside"),
        ("u1,2026-01-03T09:00:00Z,sessions,session,abc\n", "value", "expected a number"),
        (",2026-01-03T09:00:00Z,sessions,session,1\n", "user_id", "missing user"),
        ("u1,2026-01-03T09:00:00,sessions,session,1\n", "timestamp", "no UTC offset"),
    ],
)
def test_one_malformed_row_rejects_the_import_and_changes_nothing(
    tmp_path: Path, bad: str, column: str, reason: str
) -> None:
    stores = tmp_path / "stores"
    import_log(_csv(tmp_path / "first.csv", GOOD), stores)
    before = {p.name: EventStore(p).count() for p in stores.glob("*.sqlite")}
    lines = [*GOOD[:2], bad, GOOD[2]]
    lines[0] = lines[0].replace("09:00", "11:00")  # new, valid rows around the bad one
    with pytest.raises(ImportRowError) as info:
        import_log(_csv(tmp_path / "second.csv", lines), stores)
    err = info.value
    assert err.row == 3 and err.column == column and reason in str(err)
    assert "row 3 (line 4)" in str(err)
    after = {p.name: EventStore(p).count() for p in stores.glob("*.sqlite")}
    assert after == before


def test_wrong_number_of_columns_is_reported_with_its_row(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", [GOOD[0], "u1,1767229200,sessions\n", GOOD[1]])
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): expected 5 columns, got 3"):
        read_log(path)


def test_parquet_with_a_column_mapping_and_tz_column(tmp_path: Path) -> None:
    table = pa.table(
        {
            "uid": ["a", "a", "b"],
            "time": [1_767_229_200, 1_767_232_800, 1_767_229_200],
            "kind": ["sessions", "purchases", "purchases"],
            "what": ["session", "purchase", "purchase"],
            "amount": [30.0, 12.0, 99.0],
            "offset": [-300, -300, 60],
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    mapping = ColumnMapping.parse(
        "user=uid,timestamp=time,category=kind,action=what,value=amount,tz_offset=offset"
    )
    per_user = read_log(path, mapping)
    assert set(per_user) == {"a", "b"}
    assert list(per_user["a"]["tz_min"]) == [-300, -300] and list(per_user["b"]["value"]) == [99.0]


def test_missing_columns_and_bad_mappings_say_what_is_there(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", GOOD)
    with pytest.raises(ValueError, match=r"missing columns: user .*'uid'.*the file has: user_id"):
        read_log(path, ColumnMapping(user=Source("uid")))
    with pytest.raises(ValueError, match="bad mapping"):
        ColumnMapping.parse("colour=red")


def test_naive_times_use_the_given_offset(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", ["u1,2026-01-01T09:00:00,sessions,session,1\n"])
    ev = read_log(path, ColumnMapping(default_tz_min=480))["u1"]
    assert int(ev["ts"][0]) == 1_767_229_200 and int(ev["tz_min"][0]) == 480  # 01:00Z
