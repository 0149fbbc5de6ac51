"""The audit store: the contract the aggregator writes through, and the schema Alembic owns."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text

from fedchurn.server.audit import (
    VERSION_TABLE,
    AuditStore,
    Base,
    InvalidRecordError,
    RoundAlreadyRecordedError,
    RoundFilters,
    RunFinishedError,
    UnknownRunError,
    alembic_config,
)

PROTECTION: dict[str, Any] = {
    "mode": "secagg",
    "params": {"ring_bits": 32, "k_min": 5},
    "upload_bytes": 9268,
    "aggregator_learns": "the cohort sum",
    "keyholder_learns": "the cohort's mask sum",
    "framing_bytes": 840,
}
DP: dict[str, Any] = {
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "accountant": "rdp",
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "evaluation_noise_multiplier": 2.0,
    "evaluation_epsilon_per_run": 4.73,
}
MODEL: dict[str, Any] = {
    "name": "churn-survival-mlp",
    "version": "0.1.0",
    "n_params": 2286,
    "layers": [127, 16, 14],
}


# Refusals as the aggregator builds them: each names a device (a Flower node, or node/device).
DEVICE_REFUSALS: list[dict[str, Any]] = [
    {"device": "node-17", "reason": "no upload (failed or timed out)"},
    {"device": "4711/123456", "reason": "no upload (failed or timed out)"},
    {"device": "4711/123456", "reason": "wrong_round: round 2 != 3"},
]


def dump_tables(store: AuditStore) -> str:
    """Every row of every table of the audit database, as text."""
    meta = MetaData()
    with store.engine.connect() as conn:
        meta.reflect(conn)
        assert {"audit_runs", "audit_rounds"} <= set(meta.tables)
        return "\n".join(repr(row) for t in meta.sorted_tables for row in conn.execute(select(t)).all())


def _round(store: AuditStore, run_id: str, n: int, **over: Any) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC) + timedelta(minutes=n)
    kw: dict[str, Any] = {
        "started_at": t0,
        "finished_at": t0 + timedelta(seconds=4),
        "sampled": 10,
        "received": 9,
        "refused": [{"reason": "late", "count": 1}],
        "bytes_received": 9 * 9268,
        "protection_mode": "secagg",
        "dp_noise_std": 0.11,
        "epsilon_spent": 1.5 * n,
        "epsilon_aggregator": 4.0 * n,
        "metrics": {"train_loss": 0.4},
    }
    kw.update(over)
    store.record_round(run_id, n, **kw)


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    return AuditStore(f"sqlite:///{tmp_path / 'sub' / 'audit.sqlite'}")


def test_a_round_is_never_counted_twice(store: AuditStore) -> None:
    rid = store.start_run({"seed": 0}, PROTECTION, DP, MODEL)
    _round(store, rid, 1)
    with pytest.raises(RoundAlreadyRecordedError, match=r"round 1 .* already recorded"):
        _round(store, rid, 1, sampled=99)
    page = store.list_rounds(rid)
    assert page.total == 1 and page.items[0].sampled == 10


def test_a_second_store_on_the_same_file_sees_the_rounds_and_refuses_duplicates(store: AuditStore) -> None:
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    _round(store, rid, 1)
    other = AuditStore(store.database_url)  # e.g. a restarted aggregator: the upgrade is a no-op
    with pytest.raises(RoundAlreadyRecordedError):
        _round(other, rid, 1)
    assert other.list_rounds(rid).total == 1


def test_finished_runs_take_no_rounds_and_finish_once(store: AuditStore) -> None:
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    _round(store, rid, 1)
    run = store.finish_run(rid, "completed", {"roc_auc": 0.8}, {"version": "0.1.0"})
    assert run.status == "completed" and run.finished_at is not None and run.rounds_recorded == 1
    with pytest.raises(RunFinishedError):
        _round(store, rid, 2)
    with pytest.raises(RunFinishedError):
        store.finish_run(rid, "failed", {}, {})


def test_unknown_runs_and_bad_records_are_refused_clearly(store: AuditStore) -> None:
    with pytest.raises(UnknownRunError):
        _round(store, "nope", 1)
    with pytest.raises(InvalidRecordError, match="mode"):
        store.start_run({}, {**PROTECTION, "mode": "rot13"}, DP, MODEL)
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    with pytest.raises(InvalidRecordError, match="sampled"):
        _round(store, rid, 1, sampled=-1)
    with pytest.raises(InvalidRecordError, match="status"):
        store.finish_run(rid, "done", {}, {})
    with pytest.raises(InvalidRecordError, match="started_at"):
        _round(store, rid, 1, started_at="2026-01-05 09:00")  # no UTC offset: ambiguous


def test_numpy_values_unix_times_and_nan_are_stored_as_plain_json(store: AuditStore) -> None:
    rid = store.start_run({"lr": np.float32(0.01)}, {**PROTECTION, "upload_bytes": np.int64(9268)}, DP, MODEL)
    now = time.time()
    _round(
        store,
        rid,
        1,
        started_at=now - 2,
        finished_at=now,
        bytes_received=np.int64(5),
        epsilon_spent=np.float64(0.5),
        epsilon_aggregator=np.float64(float("inf")),  # an accountant without DP says inf: stored as null
        refused=[{"device": 17, "reason": "late"}, {"device": np.int64(18), "reason": "late"}],
        metrics={"loss": np.float32(0.25), "lift": float("nan"), "hist": np.arange(3)},
    )
    r = store.list_rounds(rid).items[0]
    assert r.metrics == {"loss": 0.25, "lift": None, "hist": [0, 1, 2]}
    assert r.refused == [{"reason": "late", "count": 2}]  # counted; the device ids are dropped
    assert r.epsilon_aggregator is None
    assert abs(r.finished_at.timestamp() - now) < 1e-3 and r.finished_at.tzinfo is not None
    run = store.get_run(rid)
    assert (
        run is not None and run.protection["upload_bytes"] == 9268 and run.protection["framing_bytes"] == 840
    )


def test_readers_filter_paginate_and_account_the_budget(store: AuditStore) -> None:
    assert store.privacy_budget() is None and store.latest_model_card() is None and store.latest_run() is None
    a = store.start_run({}, PROTECTION, DP, MODEL)
    for n in (1, 2, 3):
        _round(store, a, n, refused=[] if n != 2 else [{"reason": "bad size", "count": 3}])
    _round(
        store,
        a,
        4,
        skipped=True,
        skip_reason="cohort below k",
        received=0,
        epsilon_spent=None,
        epsilon_aggregator=None,
    )
    store.finish_run(a, "completed", {}, {"feature_group_importance": {"sessions": 1.0}})
    b = store.start_run({}, {**PROTECTION, "mode": "plaintext"}, {"accountant": "none"}, MODEL)
    _round(
        store,
        b,
        1,
        protection_mode="plaintext",
        epsilon_spent=None,
        epsilon_aggregator=None,
        dp_noise_std=None,
    )

    assert store.list_rounds().total == 5
    refusing = store.list_rounds(filters=RoundFilters(with_refusals=True, run_id=a)).items[0]
    assert refusing.round == 2 and refusing.refused == [{"reason": "bad size", "count": 3}]
    assert [r.round for r in store.list_rounds(filters=RoundFilters(skipped=True)).items] == [4]
    assert store.list_rounds(filters=RoundFilters(protection_mode="plaintext")).items[0].run_id == b
    since = datetime(2026, 1, 5, 9, 2, tzinfo=UTC)
    assert [r.round for r in store.list_rounds(a, RoundFilters(since=since)).items] == [2, 3, 4]
    page = store.list_rounds(a, offset=1, limit=2)
    assert page.total == 4 and [r.round for r in page.items] == [2, 3]

    budget = store.privacy_budget(a)
    assert budget is not None
    assert (
        budget["epsilon_spent"] == 4.5
        and budget["epsilon_aggregator_spent"] == 12.0  # round 4 recorded none: round 3's value
        and budget["remaining_epsilon"] == 3.5
        and budget["rounds_counted"] == 3
    )
    assert (budget["evaluation_noise_multiplier"], budget["evaluation_epsilon_per_run"]) == (2.0, 4.73)
    run_a = store.get_run(a)
    assert run_a is not None and (run_a.epsilon_spent, run_a.epsilon_aggregator) == (4.5, 12.0)
    latest = store.privacy_budget()
    assert latest is not None and latest["run_id"] == b and latest["epsilon_spent"] is None
    assert latest["epsilon_aggregator_spent"] is None
    card = store.latest_model_card()
    assert card is not None and card[0].run_id == a  # b is still running
    assert [r.run_id for r in store.list_runs().items] == [b, a]


def test_refusals_are_counted_by_reason(store: AuditStore) -> None:
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    long_reason = "client error: " + "x" * 1986  # 2000 characters: the limit
    refused = [
        {"reason": "wrong_round: round 2 != 3", "count": 4},
        {"reason": long_reason},  # no count: one device
        {"device": "node-9", "reason": "wrong_round: round 2 != 3"},  # an older writer's entry
    ]
    _round(store, rid, 1, refused=refused)
    (r,) = store.list_rounds(rid).items
    assert r.refused == [
        {"reason": long_reason, "count": 1},
        {"reason": "wrong_round: round 2 != 3", "count": 5},
    ]
    with pytest.raises(InvalidRecordError, match="count"):
        _round(store, rid, 2, refused=[{"reason": "late", "count": 0}])
    with pytest.raises(InvalidRecordError, match="reason"):
        _round(store, rid, 2, refused=[{"reason": long_reason + "x", "count": 1}])
    # Counts are not capped by the round's cohort: each may reach 10^9 (refused_count is a BIGINT).
    _round(store, rid, 2, refused=[{"reason": f"r{i}", "count": 10**9} for i in range(3)])
    with store.engine.connect() as conn:
        counts = conn.execute(text("SELECT round, refused_count FROM audit_rounds ORDER BY round")).all()
    assert [tuple(c) for c in counts] == [(1, 6), (2, 3 * 10**9)]


def test_a_database_created_by_revision_0001_upgrades(tmp_path: Path) -> None:
    """0002 adds `epsilon_aggregator` and rewrites 0001's per-device refusals to counts."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, conn), "0001")
        conn.execute(
            text(
                "INSERT INTO audit_runs (run_id, status, started_at, protection_mode, config, protection, "
                "dp, model) VALUES ('old', 'running', '2026-01-05 09:00:00', 'secagg', '{}', :p, :dp, :m)"
            ),
            {"p": json.dumps(PROTECTION), "dp": json.dumps(DP), "m": json.dumps(MODEL)},
        )
        for n, refused in ((1, DEVICE_REFUSALS), (2, [])):
            conn.execute(
                text(
                    "INSERT INTO audit_rounds (run_id, round, started_at, finished_at, recorded_at, sampled, "
                    "received, refused_count, refused, bytes_received, protection_mode, dp_noise_std, "
                    "epsilon_spent, metrics, skipped) VALUES ('old', :n, '2026-01-05 09:00:00', "
                    "'2026-01-05 09:00:04', '2026-01-05 09:00:04', 10, 7, :rc, :r, 0, 'secagg', 0.1, :eps, "
                    "'{}', 0)"
                ),
                {"n": n, "rc": len(refused), "r": json.dumps(refused), "eps": 0.5 * n},
            )
    engine.dispose()

    store = AuditStore(url)  # upgrades to head in-process
    with store.engine.connect() as conn:
        assert conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == "0002"
        columns = {c["name"]: c for c in inspect(conn).get_columns("audit_rounds")}
        assert columns["epsilon_aggregator"]["nullable"]
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
    dump = dump_tables(store)
    assert "node-17" not in dump and "4711/123456" not in dump
    r1, r2 = store.list_rounds("old").items
    assert r1.refused == [
        {"reason": "no upload (failed or timed out)", "count": 2},
        {"reason": "wrong_round: round 2 != 3", "count": 1},
    ]
    assert r2.refused == [] and r1.epsilon_aggregator is None and r2.epsilon_spent == 1.0
    _round(store, "old", 3, epsilon_aggregator=2.5)  # the upgraded database takes new rounds
    budget = store.privacy_budget("old")
    assert budget is not None and (budget["epsilon_spent"], budget["epsilon_aggregator_spent"]) == (4.5, 2.5)


def test_in_memory_sqlite_works_across_threads() -> None:
    import threading

    store = AuditStore("sqlite://")
    rid = store.start_run({}, PROTECTION, DP, MODEL)
    t = threading.Thread(target=_round, args=(store, rid, 1))
    t.start()
    t.join()
    assert store.list_rounds(rid).total == 1


def test_the_migrations_create_exactly_the_models(store: AuditStore) -> None:
    """Autogenerate finds nothing to do: models and Alembic revisions agree."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert {"audit_runs", "audit_rounds", VERSION_TABLE} <= tables


def test_downgrade_and_upgrade_round_trip(store: AuditStore) -> None:
    from alembic import command

    with store.engine.begin() as conn:
        command.downgrade(alembic_config(store.database_url, conn), "base")
    with store.engine.connect() as conn:
        assert "audit_runs" not in inspect(conn).get_table_names()
    store.upgrade()
    assert store.list_runs().total == 0
