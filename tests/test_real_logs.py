"""Real logs (issue 22): importing them, the standard churn protocol's labels, refusals before
anything runs, scoring as of a day, and what `simulate --events` does with a log up to Flower.

The logs are synthetic stand-ins (`tests/event_logs.py`); the suite's Flower run on a log is in
`tests/test_simulate_events.py`.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import RunCli
from event_logs import MAP, PARQUET_MAP, START, parquet_log, purchase_log
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess_grid import simulation_grid
from sklearn.metrics import roc_auc_score

from fedchurn.client.device_data import prepare_device
from fedchurn.client.importer import ColumnMapping, ImportRowError, read_log, read_log_devices
from fedchurn.client.labels import recently_active, window_labels
from fedchurn.client.training import DeviceRows, TrainConfig, local_train, train_devices
from fedchurn.server.run_output import RunOutput
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.strategy import make_strategy
from fedchurn.shared.evaluation import device_histogram, histogram_length, metrics_from_histogram
from fedchurn.shared.events import EVENT_DTYPE, local_day
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.messages import PARAMS_KEY
from fedchurn.shared.model_format import ModelSpec, init_params
from fedchurn.shared.protocol import Protocol, ProtocolError, day_number
from fedchurn.shared.run_config import RunConfig, is_eval_device
from fedchurn.simulations.flower_client import SimulatedShard
from fedchurn.simulations.simulate import log_dataset

PARQUET_DEVICES = 300  # 90 days each: enough of each class among the held-out devices


class _FlowerWouldStartError(Exception):
    """Raised in place of Flower's run: everything `simulate` does before it has run for real."""


@dataclass(frozen=True)
class ParquetRun:
    """What `simulate --events` on a parquet log did up to the call that starts Flower."""

    log: Path
    out: Path
    cfg: RunConfig  # as the command handed it to Flower
    nodes: int


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory: pytest.TempPathFactory) -> ParquetRun:
    """`simulate --events` on a parquet log with its own offsets, two activity categories,
    silence-day labels, a 28-day model and no feature centring, in process (typer's runner) up to
    the call that starts Flower. The suite's Flower run on a log is `tests/test_simulate_events.py`:
    a gzipped CSV under the cutoff protocol, centred."""
    from typer.testing import CliRunner

    from fedchurn.cli import app
    from fedchurn.simulations import simulate as sim

    started: list[tuple[RunConfig, int]] = []

    def before_flower(cfg: RunConfig, _flower_dir: Path, num_supernodes: int, **_: object) -> None:
        started.append((cfg, num_supernodes))
        raise _FlowerWouldStartError

    tmp = tmp_path_factory.mktemp("parquet")
    log, out = parquet_log(tmp / "log.parquet", PARQUET_DEVICES, 90), tmp / "run"
    args = ["simulate", "--events", str(log), "--map", PARQUET_MAP, "--activity", "sessions,purchases",
            "--horizon", "28", "--silence-days", "28", "--rounds", "2", "--per-round", "20",
            "--eval-fraction", "0.5", "--no-centre-features", "--no-baselines", "--nodes", "1",
            "--out", str(out)]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim, "run_flower", before_flower)
        res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert isinstance(res.exception, _FlowerWouldStartError), (res.output, res.exception)
    ((cfg, nodes),) = started
    return ParquetRun(log, out, cfg, nodes)


def test_a_parquet_log_with_its_own_activity_and_horizon_reaches_flower_so_configured(
    parquet_run: ParquetRun,
) -> None:
    cfg, out = parquet_run.cfg, parquet_run.out
    doc = json.loads((out / "config.json").read_text())  # what the run's report and recovery read
    assert doc["run"] == json.loads(json.dumps(asdict(cfg))) and parquet_run.nodes == 1
    assert cfg.devices == PARQUET_DEVICES and cfg.horizon == 28 and cfg.silence_days == 28
    assert cfg.activity == "sessions,purchases" and cfg.centre_features is False
    spec = ModelSpec.from_dict(doc["model"])
    assert spec == cfg.model_spec() and spec.horizon_days == 28
    assert spec.outputs == Protocol(horizon=28).outputs == 4  # weekly bins beyond 14 days
    # Each user's events keep the offsets of the file's column (the log's users sorted by id).
    arrays, _ = read_log_devices(cfg.events_file, cfg.events_map, cfg.events_tz)
    table = pq.read_table(parquet_run.log).to_pydict()
    by_user: dict[str, list[int]] = {}
    for user, offset in zip(table["uid"], table["offset"], strict=True):
        by_user.setdefault(user, []).append(offset)
    assert len({o for offsets in by_user.values() for o in offsets}) > 1
    for a, user in zip(arrays, sorted(by_user), strict=True):
        assert sorted(a["tz_min"].tolist()) == sorted(by_user[user])
    # The examples the baselines and the report read: the log's own devices, labelled in the
    # model's bins, the held-out ones chosen by the run's seed.
    data = log_dataset(cfg)
    train, test = data.train, data.test
    assert data.n_devices == PARQUET_DEVICES and train.x.shape[1] == spec.n_features
    chosen = {d for d in range(PARQUET_DEVICES) if is_eval_device(cfg.seed, d, cfg.eval_fraction)}
    assert set(test.device.tolist()) <= chosen and chosen.isdisjoint(train.device.tolist())
    assert np.all((train.time >= 1) & (train.time <= spec.outputs))
    assert 0 < train.event.sum() < len(train.event)  # both classes among the rows
    # The simulation's ClientApp reads and labels the log itself: a training device's rows and a
    # held-out device's evaluation day are the ones above.
    devices = [int(d) for d in np.unique(train.device)[:12]]
    for d, dev in zip(devices, SimulatedShard._prepare(cfg, devices), strict=True):
        mine = train.device == d
        np.testing.assert_array_equal(dev.x, train.x[mine])
        np.testing.assert_array_equal(dev.time, train.time[mine])
        np.testing.assert_array_equal(dev.event, train.event[mine])
    devices = [int(d) for d in test.device[:12]]
    for row, dev in enumerate(SimulatedShard._prepare(cfg, devices)):
        assert dev.eval_x is not None
        np.testing.assert_array_equal(dev.eval_x, test.x[row])
        assert (dev.eval_time, dev.eval_event) == (test.time[row], test.event[row])


@pytest.mark.usefixtures("serverapp_identity")
def test_the_simulation_clientapp_trains_and_evaluates_a_logs_4_output_model(
    parquet_run: ParquetRun,
) -> None:
    """A training round and the final evaluation on that run, through the real strategy and the real
    simulation ClientApp in this process (Flower's engine aside: `tests/inprocess_grid.py`); and
    the 4-output model trains batched as each device alone."""
    cfg = parquet_run.cfg
    spec = cfg.model_spec()
    strategy = make_strategy(cfg, simulation_roster([1], cfg.devices))
    grid = simulation_grid(strategy, [1])
    p0 = init_params(cfg.seed, spec)
    msgs = list(strategy.configure_train(1, ArrayRecord({PARAMS_KEY: Array(p0)}), ConfigRecord(), grid))  # type: ignore[arg-type]
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(msgs))
    assert not grid.errors, grid.errors[:2]
    assert arrays is not None and strategy.stats.trained == strategy.stats.sampled == cfg.per_round
    params = arrays[PARAMS_KEY].numpy()
    assert params.shape == (spec.n_params,) and np.all(np.isfinite(params)) and not np.allclose(params, p0)
    final = strategy.evaluate_all(grid, arrays, 1, 60.0)  # type: ignore[arg-type]
    assert not grid.errors, grid.errors[:2]
    assert final["devices"] >= 40 and 0 < final["positives"] < final["devices"]
    assert 0.0 <= final["roc_auc"] <= 1.0
    # Batched local training equals each device trained alone, for this model's shape too.
    training = [d for d in range(cfg.devices) if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    prepared = SimulatedShard._prepare(cfg, training[:12])
    rows = [DeviceRows(dev.x, dev.time, dev.event) for dev in prepared]
    tc = TrainConfig()
    batch = train_devices(p0, rows, tc, list(range(len(rows))), spec)
    for i, r in enumerate(rows):
        one = local_train(p0, r.x, r.time, r.event, tc, i, spec)
        np.testing.assert_allclose(batch.params[i], one.params, rtol=0, atol=1e-5)
    assert np.all(np.isfinite(batch.params)) and not np.allclose(batch.params, p0)


def test_a_degenerate_setup_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """In process (typer's runner), so five refusals cost one import of the command, not five."""
    from typer.testing import CliRunner

    from fedchurn.cli import app

    runner = CliRunner()
    log = purchase_log(tmp_path / "buys.csv.gz", users=150)
    base = ["simulate", "--events", str(log), "--map", MAP, "--tz", "0", "--rounds", "2", "--per-round", "20"]
    base += ["--no-baselines"]
    cases = {
        "late_cutoff": (["--cutoff", "1998-06-01", "--horizon", "90", "--activity", "purchases"], "--cutoff"),
        "long_silence": (
            ["--horizon", "14", "--silence-days", "30", "--activity", "purchases"],
            "--silence-days",
        ),
        "no_activity": (
            ["--cutoff", "1997-12-31", "--horizon", "90", "--activity", "sessions"],
            "--activity",
        ),
        "few_of_a_class": (
            [
                "--cutoff",
                "1997-12-31",
                "--horizon",
                "90",
                "--activity",
                "purchases",
                "--eval-fraction",
                "0.1",
            ],
            "at least 20 of each",
        ),
        "bad_population": (["--cutoff", "1997-12-31", "--population", "busy"], "--population"),
    }
    for name, (extra, says) in cases.items():
        out = tmp_path / name
        res = runner.invoke(app, [*base, *extra, "--out", str(out)], env={"COLUMNS": "200"})
        said = " ".join(res.stderr.split())  # the console wraps at its width, which the runner may not set
        assert res.exit_code == 2 and says in said, (name, res.stderr, res.exception)
        # refused before Flower or any training started: no round, no model, no Flower folder
        assert not (out / "rounds.jsonl").exists() and not (out / "flower").exists(), name


def test_as_of_scoring_sees_a_30_day_silence(tmp_path: Path, run_cli: RunCli) -> None:
    rows = ["customer,date,cds,dollars"]
    for day in range(120):
        rows.append(f"busy,{START + timedelta(days=day, hours=12):%Y-%m-%d %H:%M:%S},1,10")
        if day < 90:  # same history, then silent for the last 30 days
            rows.append(f"quiet,{START + timedelta(days=day, hours=12):%Y-%m-%d %H:%M:%S},1,10")
    rows.append(f"late,{START + timedelta(days=119, hours=12):%Y-%m-%d %H:%M:%S},1,10")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    spec = ModelSpec(n_features=N_FEATURES, horizon_days=90, bin_days=90)
    params = init_params(3, spec) + np.random.default_rng(1).normal(0, 0.3, spec.n_params).astype(np.float32)
    RunOutput(tmp_path / "run").write_model(params, version=1, spec=spec)

    def scores(*extra: str) -> dict[str, dict[str, object]]:
        res = run_cli("score", "--model", str(tmp_path / "run"), "--events", str(log), "--map", MAP,
                      "--tz", "0", "--json", *extra, check=True)  # fmt: skip
        doc = json.loads(res.stdout)
        assert doc["horizon_days"] == 90
        return {d["user"]: d for d in doc["devices"]}

    today = scores()  # default: the log's last day, for every user
    assert today["busy"]["date"] == today["quiet"]["date"] == "1997-04-30"
    assert today["busy"]["probability"] != today["quiet"]["probability"]
    # As of the day the quiet user stopped, both have the same history: the same score.
    then = scores("--as-of", "1997-03-31")
    assert then["busy"]["probability"] == then["quiet"]["probability"]
    assert "late" not in then  # not a user yet on that day
    bad = run_cli("score", "--model", str(tmp_path / "run"), "--events", str(log), "--map", MAP,
                  "--as-of", "31/03/1997")  # fmt: skip
    assert bad.returncode == 2 and "--as-of" in bad.stderr


def test_the_binned_auc_matches_the_exact_auc_on_skewed_scores() -> None:
    rng = np.random.default_rng(0)
    for centre in (4.6, -6.2, 0.0):  # scores crowding at 0.99, at 0.002, and around 0.5
        y = rng.random(3000) < 0.5
        z = np.where(y, rng.normal(centre + 0.4, 0.8, 3000), rng.normal(centre - 0.4, 0.8, 3000))
        p = 1.0 / (1.0 + np.exp(-z))
        hist = np.zeros(histogram_length(1))
        for pi, yi in zip(p, y, strict=True):
            hist += device_histogram(float(pi), 1 if yi else 0, bool(yi), 1)
        binned = metrics_from_histogram(hist, 1)["roc_auc"]
        assert abs(binned - roc_auc_score(y, p)) < 0.005, centre


def test_window_labels_are_the_standard_churn_label() -> None:
    active = np.zeros(40, dtype=bool)
    active[[0, 5, 30]] = True
    lab = window_labels(active, horizon=10)
    # day 0: next activity on day 5 (within 10): stayed; day 5: next on 30 (25 days later): churned
    assert not lab.event[0] and lab.event[5] and lab.usable[5]
    # day 25: activity on day 30 is within the window: stayed; day 31: no activity, window ends day 41 > 39
    assert not lab.event[25] and lab.usable[25] and not lab.usable[31]
    # a user who bought 60 days before and buys again 40 days after a cutoff is not a churner
    act = np.zeros(200, dtype=bool)
    act[[40, 140]] = True
    assert not window_labels(act, horizon=90).event[100]
    assert recently_active(act, 90)[100] and not recently_active(act, 30)[100]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 20), st.integers(1, 20))
def test_window_labels_and_populations_by_definition(flags: list[bool], horizon: int, look: int) -> None:
    act = np.array(flags)
    lab = window_labels(act, horizon)
    rec = recently_active(act, look)
    D = len(act)
    for t in range(D):
        ahead = act[t + 1 : t + horizon + 1]
        assert bool(lab.usable[t]) == (bool(ahead.any()) or t + horizon <= D - 1)
        if lab.usable[t]:
            assert bool(lab.event[t]) == (not ahead.any())
        assert bool(rec[t]) == bool(act[max(0, t - look + 1) : t + 1].any())


def test_cutoff_rows_end_before_the_cutoff_and_the_evaluation_row_is_the_cutoff() -> None:
    ev = np.zeros(3, dtype=EVENT_DTYPE)
    cutoff = day_number("1997-12-31")
    for i, d in enumerate((cutoff - 200, cutoff - 20, cutoff + 50)):
        ev[i] = (d * 86_400 + 43_200, 0, 12, 0, 10.0)
    proto = Protocol(horizon=90, activity=("purchases",), cutoff_day=cutoff, n_features=N_FEATURES)
    first = int(local_day(ev["ts"], ev["tz_min"]).min())
    data = prepare_device(ev, first, cutoff + 120, proto)
    assert data.eval_x is not None and data.eval_event is False  # bought again 50 days later
    assert data.x.shape[1] == N_FEATURES and len(data.time) > 0 and np.all(data.time == 1)
    # the last training row is 90 days before the cutoff, the others every 7 days before it
    assert data.x.shape[0] == (cutoff - 90 - first) // 7 + 1


def test_protocol_settings_are_checked_and_name_their_option() -> None:
    for kwargs, option in (
        ({"horizon": 0}, "--horizon"),
        ({"horizon": 400}, "--horizon"),
        ({"silence_days": 30, "horizon": 14}, "--silence-days"),
        ({"activity": ("nosuch",)}, "--activity"),
        ({"activity": ()}, "--activity"),
        ({"n_features": 50}, "--features"),
    ):
        with pytest.raises(ProtocolError) as info:
            Protocol(**kwargs)
        assert info.value.option == option
    with pytest.raises(ProtocolError, match="--cutoff"):
        day_number("1969-12-31")
    assert Protocol(horizon=90).outputs == math.ceil(90 / 7)  # weekly bins beyond 14 days
    assert Protocol(horizon=14).outputs == 14 and Protocol(horizon=90, cutoff_day=10_000).outputs == 1


def test_import_reads_compressed_logs_constants_value_maps_and_offsets(tmp_path: Path) -> None:
    text = (
        "who,when,kind,amount,zone\n"
        "a,1997-03-01 10:00:00,buy,12.5,+02:00\n"
        "a,1997-03-02 10:00:00,return,12.5,+02:00\n"
        "b,1985-07-04 23:30:00,buy,3,-0530\n"
    )
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    m = ColumnMapping.parse(
        "user=who,timestamp=when,category=purchases,action=kind:{buy:purchase,return:refund},"
        "value=amount,tz=zone"
    )
    got = read_log(path, m)
    a, b = got["a"], got["b"]
    assert list(a["action"]) == [0, 1] and list(a["tz_min"]) == [120, 120] and set(a["cat"]) == {12}
    assert (
        int(b["tz_min"][0]) == -330
        and int(b["ts"][0])
        == int((datetime(1985, 7, 4, 23, 30) - datetime(1970, 1, 1)).total_seconds()) + 330 * 60
    )
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(text.replace("return", "swap").encode()))
    with pytest.raises(ImportRowError, match=r"row 2.*'kind'.*'swap' is not in the mapping"):
        read_log(bad, m)
    with pytest.raises(ValueError, match="unsupported format"):
        read_log(tmp_path / "log.csv.7z", m)
    with pytest.raises(ValueError, match="bad mapping"):
        ColumnMapping.parse("colour=red")
    with pytest.raises(ValueError, match="missing columns: user"):
        read_log(path, ColumnMapping.parse("user=nobody,timestamp=when,category=purchases,action=purchase"))


def test_zstd_and_bzip2_logs_read_like_plain_ones(tmp_path: Path) -> None:
    import pyarrow as pa

    text = b"who,when,amount\na,1997-03-01 10:00:00,12.5\nb,1997-03-02 10:00:00,3\n"
    m = ColumnMapping.parse("user=who,timestamp=when,category=purchases,action=purchase,value=amount", 0)
    plain = tmp_path / "log.csv"
    plain.write_bytes(text)
    want = read_log(plain, m)
    for ext, codec in (("zst", "zstd"), ("bz2", "bz2")):
        path = tmp_path / f"log.csv.{ext}"
        with pa.CompressedOutputStream(str(path), codec) as f:
            f.write(text)
        got = read_log(path, m)
        assert got.keys() == want.keys() and all(np.array_equal(got[u], want[u]) for u in want)
