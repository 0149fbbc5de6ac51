"""A real deployment on loopback: Flower's SuperLink (TLS, SuperNode authentication), 2 SuperNodes
serving device stores, the key holder service and the transparency API, each its own process.

One federation serves the module's tests (starting it costs ~15–20 s), in file order: the crash and
resume of a two-round run first, then the secrets check over everything the runs left, and the
SuperNode-kill test last because it leaves the federation one node short. Every process is
stopped afterwards, also when a test fails (the fixture's context manager), and on SIGTERM.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from fedchurn.client.pinned_app import CLIENTAPP, FOREIGN_APP
from fedchurn.server.app_package import flower_bin
from fedchurn.server.checkpoint import Checkpoint, CheckpointStore
from fedchurn.server.deploy import (
    Federation,
    app_pyproject,
    local_federation,
    population_stores,
    stop_group,
)
from fedchurn.server.dp import epsilon_for
from fedchurn.shared.feature_spec import BASE_FEATURES
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig, is_eval_device

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it

# Two SuperNodes: each ClientApp message starts a process that spends ~2 s of CPU importing
# Flower, so a third node cost ~20 s of the suite's CPU and covered nothing two do not.
NODES, PER_NODE, K_MIN = 2, 6, 3
PER_ROUND = 8  # of the ~10 training devices (the others are held out by hash)
RUN_TIMEOUT_S = 420.0


@dataclass
class Deployment:
    fed: Federation
    work: Path
    audit_db: str
    today: int
    stores: list[Path]  # supernode-i serves stores[i]

    def config(self, name: str, **overrides: object) -> RunConfig:
        """A run's public configuration: nothing of the aggregator's settings is in it."""
        base = RunConfig(
            num_server_rounds=2,
            per_round=PER_ROUND,
            eval_per_round=0,
            k_min=K_MIN,
            days=60,
            local_epochs=1,
            run_name=name,
            round_timeout=60.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def out(self, cfg: RunConfig) -> Path:
        return self.fed.run_dir(cfg.run_name)

    @property
    def state_db(self) -> str:
        return self.fed.settings.state_db

    def api(self, path: str) -> dict[str, object]:
        ctx = ssl.create_default_context(cafile=str(self.fed.secrets.ca_cert))
        r = httpx.get(f"{self.fed.api_url}{path}", verify=ctx, timeout=10)
        r.raise_for_status()
        out: dict[str, object] = r.json()
        return out


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("deploy")
    dirs, today = population_stores(work / "stores", NODES, PER_NODE, days=60)
    audit_db = f"sqlite:///{work / 'audit.sqlite'}"
    with local_federation(work / "fed", dirs, audit_db, k_min=K_MIN, extra_config=f"today={today}") as fed:
        yield Deployment(fed, work, audit_db, today, dirs)


def run_to_end(d: Deployment, cfg: RunConfig, name: str) -> dict[str, object]:
    """`flwr run` and wait; `flwr run` exits 0 even when the ServerApp fails, so read the status file."""
    d.fed.start_run(cfg, name)
    d.fed.wait(name, RUN_TIMEOUT_S)
    fed_json = d.out(cfg) / "federated.json"
    assert fed_json.exists(), d.fed.log_path(name).read_text()[-3000:]
    doc: dict[str, object] = json.loads(fed_json.read_text())
    assert doc["status"] == "finished", d.fed.log_path(name).read_text()[-3000:]
    return doc


def audit_rounds(d: Deployment, run_id: str) -> list[dict[str, object]]:
    page = d.api(f"/v1/audit/rounds?run_id={run_id}&limit=100")
    items = page["items"]
    assert isinstance(items, list)
    return items


def checkpoint(d: Deployment, cfg: RunConfig) -> Checkpoint | None:
    """The run's checkpoint; the engine is disposed at once, so this process holds no connection to
    the aggregator's database between reads (SQLite in WAL mode, written by another process)."""
    store = CheckpointStore(d.state_db)
    try:
        return store.load(cfg.run_name)
    finally:
        store.engine.dispose()


def query(d: Deployment, sql: str) -> list[Any]:
    engine = create_engine(d.state_db)
    try:
        with engine.connect() as c:
            return list(c.execute(text(sql)).all())
    finally:
        engine.dispose()


def audit_run_id(d: Deployment, cfg: RunConfig) -> str:
    ck = checkpoint(d, cfg)
    assert ck is not None
    return ck.audit_run_id


def _aggregator_pid(d: Deployment, cfg: RunConfig, name: str) -> int:
    """The run's ServerApp process, from the pid file it writes when it starts."""
    path = d.out(cfg) / "aggregator.pid"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, d.fed.log_path(name).read_text()[-3000:]
        time.sleep(0.1)
    return int(path.read_text())


def _wait_gone(pid: int, timeout: float) -> None:
    """Block until process `pid` (not our child) has exited: a pidfd becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still runs after {timeout:.0f} s"
    finally:
        os.close(fd)


def test_aggregator_killed_between_rounds_resumes_with_the_same_epsilon(deployment: Deployment) -> None:
    """Two rounds over TLS with SuperNode authentication, the key holder and the API, with DP and
    centre-features, the aggregator killed between them: the feature-mean round (round 0) is charged
    once, its mean is kept in the checkpoint, the restarted run trains on the same one, and the
    finished run is the one an uninterrupted run leaves (model trained, 780-byte uploads from at
    least k_min devices a round, every round in the API's audit log, the run completed)."""
    cfg = deployment.config("resume", target_epsilon=8.0, centre_features=True)
    fed = deployment.fed
    # The crash drill: the aggregator kills itself (SIGKILL) right after round 1's records, a
    # known point, instead of the test racing a kill against round 2.
    replace(fed.settings, crash_after_round="1").write(fed.settings_file)
    try:
        fed.start_run(cfg, "resume-1")
        _wait_gone(_aggregator_pid(deployment, cfg, "resume-1"), RUN_TIMEOUT_S)
    finally:
        fed.settings.write(fed.settings_file)  # the restart runs without the drill
    fed.stop("resume-1")
    ck = checkpoint(deployment, cfg)
    assert ck is not None and ck.round == 1
    offset_before_crash = ck.input_offset
    assert offset_before_crash is not None and len(offset_before_crash) == BASE_FEATURES
    contacted_round_2 = query(
        deployment,
        "SELECT COUNT(*) FROM fedchurn_round_attempts WHERE run_name = 'resume' "
        "AND round = 2 AND status != 'started'",
    )[0][0]
    assert contacted_round_2 == 0, "the kill landed after round 2 reached the key holder"

    t0 = time.monotonic()
    doc = run_to_end(deployment, cfg, "resume-2")
    print(f"the resumed run on the deployment engine: {time.monotonic() - t0:.1f} s")
    rounds = doc["rounds"]
    assert isinstance(rounds, list) and [r["round"] for r in rounds] == [1, 2]
    # Under DP the ring widens and the upload keeps within 780 bytes (docs/wire-format.md §2.1).
    upload = doc["privacy"]["release"]["upload_bytes"]  # type: ignore[index]
    assert 700 < upload <= 780
    assert all(r["trained"] >= K_MIN and r["upload_bytes_per_device"] == upload for r in rounds)
    params = np.load(deployment.out(cfg) / "model" / "params.npy")
    assert not np.allclose(params, init_params(cfg.seed, DEFAULT_SPEC)), "the model did not change"
    assert doc["feature_mean"] == {"devices": None, "offset": offset_before_crash}  # not measured again
    train_attempts = query(
        deployment,
        "SELECT round, status FROM fedchurn_round_attempts WHERE run_name = 'resume' "
        "AND kind = 'train' ORDER BY id",
    )
    # Round 1 ran once; round 2's first attempt died before the key holder, the second finished.
    assert [r for r, st in train_attempts if st == "finished"] == [1, 2]
    stats_attempts = query(
        deployment,
        "SELECT COUNT(*) FROM fedchurn_round_attempts WHERE run_name = 'resume' AND kind = 'stats'",
    )[0][0]
    assert stats_attempts == 1
    # epsilon after 2 rounds equals an uninterrupted run's: nothing forgotten, nothing counted twice.
    rid = audit_run_id(deployment, cfg)
    recorded = sorted(audit_rounds(deployment, rid), key=lambda r: r["round"])  # type: ignore[arg-type, return-value]
    assert [r["round"] for r in recorded] == [0, 1, 2]  # round 0: the feature mean
    assert not any(r["skipped"] for r in recorded)
    run = deployment.api(f"/v1/runs/{rid}")
    assert run["status"] == "completed"
    dp = run["dp"]
    assert isinstance(dp, dict)
    ck = checkpoint(deployment, cfg)
    assert ck is not None and ck.roster is not None and ck.input_offset == offset_before_crash
    n_train = sum(not is_eval_device(cfg.seed, dev, cfg.eval_fraction) for _, dev in ck.roster)
    for r in recorded:
        expected = epsilon_for(
            float(dp["noise_multiplier"]),
            cfg.delta,
            min(1.0, PER_ROUND / n_train),  # the run's rate (all devices when the pool is smaller)
            int(str(r["round"])) + 1,  # the feature-mean round is the first charged step
            sampling="poisson",
        )
        assert r["epsilon_spent"] == pytest.approx(expected, rel=1e-9)


def _command_lines(fed: Federation) -> dict[int, str]:
    """The command line of every process the federation runs (each group leader's descendants too)."""
    out: dict[int, str] = {}
    groups = {p.pid for p in fed.procs.values()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            pgid = os.getpgid(int(proc.name))
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if pgid in groups:
            out[int(proc.name)] = cmd
    return out


def test_no_secret_in_logs_outputs_databases_or_command_lines(deployment: Deployment) -> None:
    """Private keys and bearer tokens never appear in a log, the run's outputs, a database or any
    process's command line; no fedchurn secret *path* is on a command line either (Flower's own
    processes take their TLS key and SuperNode key by path, their interface). Each party reads
    only its own folder: the key holder's process sees none of the aggregator's files."""
    s = deployment.fed.secrets
    needles: list[bytes] = []
    for path in s.private_files():
        if not path.exists():
            continue
        raw = path.read_bytes()
        needles.append(raw.strip())
        # PEM / OpenSSH bodies: every long base64 line of the key on its own.
        needles += [line for line in raw.splitlines() if len(line) >= 40 and b"-----" not in line]
    assert len(needles) >= 8
    scanned = 0
    for f in deployment.work.rglob("*"):
        if not f.is_file() or s.dir in f.parents:
            continue
        blob = f.read_bytes()
        scanned += 1
        for n in needles:
            assert n not in blob, f"a secret from {s.dir} appears in {f}"
    assert scanned > 10
    lines = _command_lines(deployment.fed)
    assert len(lines) >= 6, lines  # key holder, API, SuperLink, SuperNodes (and their children)
    never_on_a_command_line: list[str] = [
        str(s.aggregator_token),
        str(s.keyholder_key),
        str(s.api_token),
        str(s.keyholder.key),
        str(s.api.key),
        deployment.fed.settings.state_db,
        deployment.audit_db,
    ]
    for pid, cmd in lines.items():
        for n in needles:
            assert n.decode(errors="replace") not in cmd, f"a secret on process {pid}'s command line"
        for text_ in never_on_a_command_line:
            assert text_ not in cmd, f"{text_} on process {pid}'s command line: {cmd[:300]}"
    # Every SuperNode is configured with the key holder's pin (public), and nothing else of it.
    pin = s.keyholder_pin().node_config_arg()
    supernodes = [c for c in lines.values() if "flower-supernode" in c and "--node-config" in c]
    assert len(supernodes) >= 2 and all(pin in c for c in supernodes)


# The aggregator's own app: its ClientApp writes what it can read on the device's machine.
FOREIGN_CLIENT = """
from pathlib import Path
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    stores = sorted(p.name for p in Path(str(context.node_config["store-dir"])).glob("*"))
    Path(str(context.run_config["out"])).with_suffix(".stolen").write_text("\\n".join(stores))
    return Message(RecordDict(), reply_to=msg)
"""
FOREIGN_SERVER = """
import json
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    content = RecordDict({"c": ConfigRecord({})})
    msgs = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
    replies = grid.send_and_receive(msgs, timeout=120)
    errors = [r.error.reason for r in replies if r.has_error()]
    Path(str(context.run_config["out"])).write_text(json.dumps({"nodes": len(nodes), "errors": errors}))
"""


def test_attack_the_aggregator_ships_its_own_clientapp_code_to_the_supernodes(deployment: Deployment) -> None:
    """`flwr run` sends the SuperNodes an app bundle; Flower runs the ClientApp it names, from the
    bundle's own code. An aggregator's bundle with code in it read the device stores (and the
    node's secret) on every node, and none of fedchurn's client code ran. The nodes now run
    fedchurn's ClientApp or nothing (`client.pinned_app`): the task fails, the code never runs."""
    app = deployment.work / "foreign-app"
    (app / "evil").mkdir(parents=True)
    (app / "evil" / "__init__.py").write_text("")
    (app / "evil" / "client.py").write_text(FOREIGN_CLIENT)
    (app / "evil" / "server.py").write_text(FOREIGN_SERVER)
    pyproject = app_pyproject().replace(CLIENTAPP, "evil.client:app")
    pyproject = pyproject.replace('serverapp = "fedchurn.server.app:app"', 'serverapp = "evil.server:app"')
    (app / "pyproject.toml").write_text(
        pyproject.split("[tool.flwr.app.config]")[0] + '[tool.flwr.app.config]\nout = ""\n'
    )
    out = deployment.work / "foreign.json"
    proc = deployment.fed._start(
        "foreign",
        [flower_bin("flwr"), "run", str(app), "fedchurn", "--stream", "--run-config", f'out="{out}"'],
    )
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, deployment.fed.log_path("foreign").read_text()[-3000:]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not out.exists():  # `flwr run --stream` may return before the ServerApp's last write
        assert time.monotonic() < deadline, deployment.fed.log_path("foreign").read_text()[-3000:]
        time.sleep(0.2)
    result = json.loads(out.read_text())
    stolen = out.with_suffix(".stolen")
    assert not stolen.exists(), (
        f"the aggregator's ClientApp ran on a SuperNode and read: {stolen.read_text()!r}"
    )
    assert result["nodes"] == NODES and len(result["errors"]) == NODES, result
    assert all(FOREIGN_APP in e and "evil/client.py" in e for e in result["errors"]), result


def _evaluators(store_dir: Path) -> set[int]:
    """The devices of a node that evaluated in an earlier run of this module: a device keeps its
    first role for a key holder (`client.contribution_ledger`), so these refuse to train."""
    from fedchurn.client.deploy_client import LEDGER_FILE

    path = store_dir / LEDGER_FILE
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT DISTINCT device FROM claims WHERE scope LIKE '% evaluates'").fetchall()
    finally:
        conn.close()
    return {int(d) for (d,) in rows}


def _victim(d: Deployment, cfg: RunConfig) -> tuple[RunConfig, int, set[int]]:
    """The run, the SuperNode to kill and its training devices: a node none of whose devices is
    held out, so that the final evaluation sends it nothing and the run does not wait out a second
    round timeout on the dead node after the round this test is about. The other nodes must still
    upload at least k devices that carry data: their devices that evaluated in an earlier run of this
    module refuse to train, and one account per node is too young for a labelled day (population
    seed 0), whose upload carries no data and does not count towards k (decision 150); a CI run
    whose live node had three earlier evaluators had its round refused. A node's device indices
    are HMACs under its own secret (random per federation) and the run's seed decides which are
    held out, so the run takes the first seed from `cfg.seed` on that leaves such a node."""
    from fedchurn.client.deploy_client import list_stores

    devices = [set(list_stores(s)) for s in d.stores]
    trainers = [ds - _evaluators(s) for ds, s in zip(devices, d.stores, strict=True)]
    for seed in range(cfg.seed, cfg.seed + 100):
        for n, ds in enumerate(devices):
            held_out = {i for i in set().union(*devices) if is_eval_device(seed, i, cfg.eval_fraction)}
            live = set().union(*(t for m, t in enumerate(trainers) if m != n)) - held_out
            if len(live) >= K_MIN + len(devices) - 1 and not ds & held_out:
                return replace(cfg, seed=seed), n, ds
    raise AssertionError(f"no seed from {cfg.seed} suits these nodes' devices that may train: {trainers}")


def test_a_supernode_killed_mid_round_leaves_the_round_complete(deployment: Deployment) -> None:
    # Uncentred: no feature-mean round before the one this test is about. Every training device
    # takes part, so the dead node's devices are in the round; few are held out, and the dead
    # node holds none of them (`_victim`).
    cfg = deployment.config(
        "dropout",
        num_server_rounds=1,
        round_timeout=25.0,
        centre_features=False,
        eval_fraction=0.05,
        per_round=NODES * PER_NODE,
    )
    cfg, victim, victim_devices = _victim(deployment, cfg)
    assert victim_devices
    deployment.fed.start_run(cfg, "dropout")
    progress = deployment.out(cfg) / "progress.json"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not progress.exists():  # written when round 1's attempt is committed, before its messages leave
        assert time.monotonic() < deadline, deployment.fed.log_path("dropout").read_text()[-3000:]
        time.sleep(0.1)
    assert json.loads(progress.read_text())["round"] == 1
    stop_group(deployment.fed.procs.pop(f"supernode-{victim}"), signal.SIGKILL)
    deployment.fed.wait("dropout", RUN_TIMEOUT_S)
    doc = json.loads((deployment.out(cfg) / "federated.json").read_text())
    assert doc["status"] == "finished" and doc["feature_mean"] is None  # uncentred: no such round
    (r1,) = doc["rounds"]
    # Every device of the dead node is left out, and the round counts the live node's uploads (that
    # node must answer within the round's timeout; one that did not would be left out as well).
    left_out = {int(x["device"].split("/")[1]) for x in r1["refused"] if "no upload" in x["reason"]}
    assert victim_devices <= left_out, r1["refused"]
    assert r1["trained"] == r1["sampled"] - len(left_out) >= K_MIN
    assert r1["upload_bytes_per_device"] == 780  # the default upload (this run has no DP)
    params = np.load(deployment.out(cfg) / "model" / "params.npy")
    assert not np.allclose(params, init_params(cfg.seed, DEFAULT_SPEC))
    recorded = [r for r in audit_rounds(deployment, audit_run_id(deployment, cfg)) if r["round"] == 1]
    assert len(recorded) == 1 and not recorded[0]["skipped"]
    assert recorded[0]["refused"], "the left-out devices are counted in the audit log"
