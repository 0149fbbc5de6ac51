"""The contribution ledger: a (scope, device) pair is granted once, in memory and on file alike,
and a ledger written before per-round claims keeps its evaluations claimed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.contribution_ledger import FileLedger, MemoryLedger, role_of, scopes_of
from fedchurn.client.deploy_client import LEDGER_FILE, LEGACY_LEDGER_FILE, StoreSource
from fedchurn.client.device_config import MAX_UPLOADS_KEY, upload_budget
from fedchurn.shared.keyholder_pin import PinError

KEY = bytes(range(32))

claims = st.lists(
    st.tuples(
        st.lists(
            st.sampled_from(["k train round 1", "k train round 2", "k evaluate round 3", "evaluate run 4"]),
            min_size=1,
            max_size=2,
            unique=True,
        ),
        st.lists(st.integers(0, 6), max_size=6),
        st.one_of(st.none(), st.integers(1, 3)),
        st.sampled_from([None, ("k trains", "k evaluates"), ("k evaluates", "k trains")]),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(claims)
def test_a_device_is_granted_a_scope_once_and_uploads_within_its_limit_in_memory_and_on_file_alike(
    tmp_path_factory: object, sequence: list[tuple[list[str], list[int], int | None, tuple[str, str] | None]]
) -> None:
    path = tmp_path_factory.mktemp("ledger") / "claims.sqlite"  # type: ignore[attr-defined]
    memory, file = MemoryLedger(), FileLedger(path)
    seen: set[tuple[str, int]] = set()
    roles: dict[int, str] = {}
    for scopes, devices, limit, role in sequence:
        granted = memory.claim(scopes, devices, limit, role)
        assert file.claim(scopes, devices, limit, role) == granted

        def uploads(d: int) -> int:  # round scopes claimed so far: one per upload
            return sum(1 for s, e in seen if e == d and " round " in s)

        expected = [
            d
            for d in dict.fromkeys(devices)
            if not any((s, d) in seen for s in scopes)
            and (limit is None or uploads(d) < limit)
            and (role is None or roles.get(d, role[0]) == role[0])
        ]
        assert (
            granted == expected
        )  # in order, each device once, none seen in a scope, over its limit or out of its role
        seen.update((s, d) for s in scopes for d in granted)
        if role:
            roles.update((d, roles.get(d, role[0])) for d in granted)


def test_a_ledger_reloaded_in_another_process_keeps_counting_uploads() -> None:
    """Flower's simulation engine pickles the ClientApp, ledger included."""
    import pickle

    ledger = MemoryLedger()
    assert ledger.claim(scopes_of(1, 1, KEY, evaluation=False), [1, 2], limit=2) == [1, 2]
    assert ledger.claim(scopes_of(2, 1, KEY, evaluation=True), [1], limit=2) == [1]
    again = pickle.loads(pickle.dumps(ledger))
    assert again.claim(scopes_of(3, 1, KEY, evaluation=False), [1, 2], limit=2) == [2]


def test_two_answers_racing_for_one_device_grant_it_once(tmp_path: Path) -> None:
    """Two processes of a simulation (or a retried delivery) answering for the same device: one
    immediate transaction per claim, so exactly one of them gets it."""
    path = tmp_path / "claims.sqlite"
    FileLedger(path)
    start = threading.Barrier(8)
    results: list[list[int]] = []
    lock = threading.Lock()

    def claim() -> None:
        ledger = FileLedger(path)
        start.wait()
        got = ledger.claim(scopes_of(5, 1, KEY, evaluation=False), [1, 2, 3])
        with lock:
            results.append(got)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(tuple, results)) == [()] * 7 + [(1, 2, 3)]


def test_scopes_tie_a_round_to_its_key_holder_and_an_evaluation_to_its_run() -> None:
    assert scopes_of(5, 1, KEY, evaluation=False) == (f"{KEY[:16].hex()} round 5",)
    assert scopes_of(5, 1, None, evaluation=False) == ("plaintext run 1 round 5",)
    assert scopes_of(5, 9, KEY, evaluation=True) == (f"{KEY[:16].hex()} round 5", "evaluate run 9")


def test_a_deployed_nodes_old_evaluation_ledger_stays_claimed(tmp_path: Path) -> None:
    """A node upgraded from the evaluations-only ledger (`.evaluations.sqlite`, table `evaluated`):
    the file is taken over and a device that evaluated in run 7 still may not do so again."""
    conn = sqlite3.connect(tmp_path / LEGACY_LEDGER_FILE)
    conn.execute("CREATE TABLE evaluated (run_id TEXT, device INTEGER, PRIMARY KEY (run_id, device))")
    conn.execute("INSERT INTO evaluated VALUES ('7', 3)")
    conn.commit()
    conn.close()
    (tmp_path / f"{LEGACY_LEDGER_FILE}-journal").touch()  # an (empty, so not hot) rollback journal
    context = Context(
        run_id=7, node_id=1, node_config={"store-dir": str(tmp_path)}, state=RecordDict(), run_config={}
    )
    ledger = StoreSource().ledger(context)
    assert (tmp_path / LEDGER_FILE).exists() and not (tmp_path / LEGACY_LEDGER_FILE).exists()
    assert not (tmp_path / f"{LEGACY_LEDGER_FILE}-journal").exists()  # moved with its database
    assert ledger.claim(scopes_of(2, 7, KEY, evaluation=True), [3, 4]) == [4]
    assert ledger.claim(scopes_of(3, 8, KEY, evaluation=True), [3]) == [3]  # another run
    assert ledger.claim(scopes_of(4, 9, KEY, evaluation=True), [3], limit=2) == []  # its 3rd upload
    conn = sqlite3.connect(tmp_path / LEDGER_FILE)  # taken over once: the old table is gone
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'evaluated'").fetchall() == []
    conn.close()


def test_the_upload_budget_is_read_from_the_devices_own_configuration_as_deploy_writes_it() -> None:
    from flwr.common.config import parse_config_args

    from fedchurn.deploy_cli import _node_extra

    written = _node_extra(today=5, max_uploads=3)
    assert upload_budget(parse_config_args([f'store-dir="/s" {written}'])) == 3
    assert upload_budget(parse_config_args(['store-dir="/s" today=5'])) is None  # no cap unless pinned
    assert upload_budget({MAX_UPLOADS_KEY: "12"}) == 12


@pytest.mark.parametrize("bad", [0, -1, "x", 2.5, True, "1e3"])
def test_a_malformed_upload_budget_is_refused_naming_the_key_and_where(bad: object) -> None:
    with pytest.raises(PinError, match=f"'{MAX_UPLOADS_KEY}' in the node configuration must be a whole"):
        upload_budget({MAX_UPLOADS_KEY: bad})


def test_attack_a_ledger_from_before_roles_lets_a_device_that_trained_evaluate(tmp_path: Path) -> None:
    """A node's ledger written before role claims (4822eef) held round claims without roles, so a
    device that had trained under DP could be declared held out after the upgrade and evaluate,
    its evaluation released without the noise floor (review 4). Opening such a file gives its
    devices the roles their claims show, once."""
    path = tmp_path / "claims.sqlite"
    with sqlite3.connect(path) as conn:  # the file as 4822eef's ledger left it
        conn.execute("CREATE TABLE claims (scope TEXT, device INTEGER, PRIMARY KEY (scope, device))")
        old = [
            *[(scope, 1) for scope in scopes_of(1, 7, KEY, evaluation=False)],  # device 1 trained
            *[(scope, 2) for scope in scopes_of(2, 7, KEY, evaluation=True)],  # device 2 evaluated
            *[(scope, 3) for r in (3, 4) for scope in scopes_of(r, 7, KEY, evaluation=r == 4)],  # both
        ]
        conn.executemany("INSERT INTO claims VALUES (?, ?)", old)
    ledger = FileLedger(path)
    evaluate, train = role_of(8, KEY, evaluation=True), role_of(8, KEY, evaluation=False)
    assert ledger.claim(scopes_of(10, 8, KEY, evaluation=True), [1, 2, 3, 4], role=evaluate) == [2, 4]
    assert ledger.claim(scopes_of(11, 8, KEY, evaluation=False), [1, 2, 3, 5], role=train) == [1, 5]
    assert FileLedger(path).claim(scopes_of(12, 8, KEY, evaluation=False), [1, 2, 3], role=train) == [1]


def test_a_device_that_evaluated_for_one_key_holder_and_trained_for_the_next_is_no_evaluator(
    tmp_path: Path,
) -> None:
    """Review 5: the first migration compared a device's uploads for one key holder with its
    evaluations for all of them, so a device that evaluated for key holder A and then trained for
    B came out as B's evaluator. Evaluations do not name their key holder: it is now both."""
    path, other = tmp_path / "claims.sqlite", bytes(range(100, 132))
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE claims (scope TEXT, device INTEGER, PRIMARY KEY (scope, device))")
        old = [(scope, 7) for scope in scopes_of(1, 1, other, evaluation=True)]
        old += [(scope, 7) for scope in scopes_of(2, 2, KEY, evaluation=False)]
        conn.executemany("INSERT INTO claims VALUES (?, ?)", old)
    ledger = FileLedger(path)
    assert (
        ledger.claim(scopes_of(3, 3, KEY, evaluation=True), [7], role=role_of(3, KEY, evaluation=True)) == []
    )


def test_a_ledger_whose_round_claims_named_their_purpose_gets_roles_for_the_key_holder(
    tmp_path: Path,
) -> None:
    """Review 6: ledgers written by 92f169a..c4ddcf9 named the purpose in a round claim
    ("<key> train round 3"); the first migration read "<key> train" as the key holder, so a
    device that had trained was granted that key holder's evaluation."""
    path, holder = tmp_path / "claims.sqlite", KEY[:16].hex()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE claims (scope TEXT, device INTEGER, PRIMARY KEY (scope, device))")
        old = [(f"{holder} train round 1", 1), (f"{holder} stats round 2", 2)]
        old += [(f"{holder} evaluate round 3", 3), ("evaluate run 5", 3)]
        conn.executemany("INSERT INTO claims VALUES (?, ?)", old)
    ledger = FileLedger(path)
    evaluate = role_of(6, KEY, evaluation=True)
    assert ledger.claim(scopes_of(9, 6, KEY, evaluation=True), [1, 2, 3], role=evaluate) == [3]


@pytest.mark.parametrize("migrated_once", [False, True])
def test_attack_a_device_of_the_oldest_ledger_that_evaluated_trains_afterwards(
    tmp_path: Path, migrated_once: bool
) -> None:
    """The oldest ledger (`evaluated` table) named a run, not a key holder, so the role migration
    gave its devices a role no check reads ("legacy evaluates"): one that had evaluated could then
    be told to train (left open by decision 139). Such a device is now an evaluator for any key
    holder, also in a file the first role migration already opened (`migrated_once`)."""
    path = tmp_path / "claims.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE evaluated (run_id TEXT, device INTEGER, PRIMARY KEY (run_id, device))")
        conn.execute("INSERT INTO evaluated VALUES ('7', 3)")
    if migrated_once:
        with sqlite3.connect(path) as conn:  # what the first migration made of it (user_version 1)
            conn.execute("CREATE TABLE claims (scope TEXT, device INTEGER, PRIMARY KEY (scope, device))")
            rows = [("evaluate run 7", 3), ("legacy round of run 7", 3), ("legacy evaluates", 3)]
            conn.executemany("INSERT INTO claims VALUES (?, ?)", rows)
            conn.execute("DROP TABLE evaluated")
            conn.execute("PRAGMA user_version = 1")
    ledger = FileLedger(path)
    train, evaluate = role_of(8, KEY, evaluation=False), role_of(8, KEY, evaluation=True)
    assert ledger.claim(scopes_of(10, 8, KEY, evaluation=False), [3, 4], role=train) == [4]
    assert ledger.claim(scopes_of(11, 8, KEY, evaluation=True), [3], role=evaluate) == [3]
    assert FileLedger(path).claim(scopes_of(12, 9, KEY, evaluation=False), [3], role=train) == []
