"""The audit store: the contract the aggregator writes through, and the schema Alembic owns."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import inspect

from fedchurn.server.audit import (
    AuditStore,
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
}
MODEL: dict[str, Any] = {
    "name": "churn-survival-mlp",
    "version": "0.1.0",
    "n_params": 2286,
    "layers": [127, 16, 14],
}


def _round(store: AuditStore, run_id: str, n: int, **over: Any) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC) + timedelta(minutes=n)
    kw: dict[str, Any] = {
        "started_at": t0,
        "finished_at": t0 + timedelta(seconds=4),
        "sampled": 10,
        "received": 9,
        "refused": [{"device": 17, "reason": "late"}],
        "bytes_received": 9 * 9268,
        "protection_mode": "secagg",
        "dp_noise_std": 0.11,
        "epsilon_spent": 1.5 * n,
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
        metrics={"loss": np.float32(0.25), "lift": float("nan"), "hist": np.arange(3)},
    )
    r = store.list_rounds(rid).items[0]
    assert r.metrics == {"loss": 0.25, "lift": None, "hist": [0, 1, 2]}
    assert r.refused == [{"device": "17", "reason": "late"}]
    assert abs(r.finished_at.timestamp() - now) < 1e-3 and r.finished_at.tzinfo is not None
    run = store.get_run(rid)
    assert (
        run is not None and run.protection["upload_bytes"] == 9268 and run.protection["framing_bytes"] == 840
    )


def test_readers_filter_paginate_and_account_the_budget(store: AuditStore) -> None:
    assert store.privacy_budget() is None and store.latest_model_card() is None and store.latest_run() is None
    a = store.start_run({}, PROTECTION, DP, MODEL)
    for n in (1, 2, 3):
        _round(store, a, n, refused=[] if n != 2 else [{"device": "x", "reason": "bad size"}])
    _round(store, a, 4, skipped=True, skip_reason="cohort below k", received=0, epsilon_spent=None)
    store.finish_run(a, "completed", {}, {"feature_group_importance": {"sessions": 1.0}})
    b = store.start_run({}, {**PROTECTION, "mode": "plaintext"}, {"accountant": "none"}, MODEL)
    _round(store, b, 1, protection_mode="plaintext", epsilon_spent=None, dp_noise_std=None)

    assert store.list_rounds().total == 5
    assert store.list_rounds(filters=RoundFilters(with_refusals=True, run_id=a)).items[0].round == 2
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
        and budget["remaining_epsilon"] == 3.5
        and budget["rounds_counted"] == 3
    )
    latest = store.privacy_budget()
    assert latest is not None and latest["run_id"] == b and latest["epsilon_spent"] is None
    card = store.latest_model_card()
    assert card is not None and card[0].run_id == a  # b is still running
    assert [r.run_id for r in store.list_runs().items] == [b, a]


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
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from fedchurn.server.audit import VERSION_TABLE, Base

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
