"""Review 19: what a user types is refused before any work, naming the option or file, and nothing
is lost; a run that fails never reads as a success. In process (typer's runner), no Flower run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedchurn.cli import app
from fedchurn.client.store import EventStore
from fedchurn.shared.run_config import RunConfig

LOG = (
    "user_id,timestamp,category,action,value\n"
    "alice,2026-01-01T09:00:00+01:00,sessions,session,300\n"
    "alice,2026-01-04T08:00:00+01:00,purchases,purchase,20\n"
    "bob,2026-01-01T09:00:00Z,sessions,session,60\n"
    "carol,2026-01-02T09:00:00Z,sessions,session,60\n"
)


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit code and everything printed, whitespace folded (Rich wraps long lines)."""
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "1000", **(env or {})})
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, _folded(res.output)  # stdout and stderr, as a terminal shows them


def _folded(text: str) -> str:
    """Without any whitespace: Rich wraps long lines, paths included, at the console's width."""
    return "".join(text.split())


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_failed_run_into_a_folder_of_an_earlier_run_is_reported_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose aggregator died read the earlier run's `federated.json` (status finished) and
    model, and exited 0 with the earlier figures. The earlier run's results are now cleared first,
    and the error carries the aggregator's own reason from Flower's log."""
    from fedchurn.simulations import simulate as sim

    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"run": {}, "model": {}}))  # an earlier run's folder
    (out / "federated.json").write_text(json.dumps({"status": "finished"}))
    (out / "model" / "params.npy").write_bytes(b"an earlier run's model")
    (out / "notes.txt").write_text("the user's own file")

    def aggregator_dies(_cfg: RunConfig, flower_dir: Path, **_: object) -> None:
        flower_dir.mkdir(parents=True, exist_ok=True)
        (flower_dir / "flower.log").write_text(
            "Traceback (most recent call last):\n"
            "fedchurn.server.audit.AuditDatabaseError: cannot prepare the audit database: disk I/O error\n"
            "ERROR :     Exit Code: 700\n"
        )

    monkeypatch.setattr(sim, "run_flower", aggregator_dies)
    cfg = RunConfig(devices=60, per_round=10, num_server_rounds=1, days=40)
    with pytest.raises(RuntimeError, match=r"did not finish: AuditDatabaseError: cannot prepare the audit"):
        sim.simulate(cfg, Console(quiet=True), out, baselines=False)
    assert not (out / "federated.json").exists() and not (out / "model").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_a_folder_of_the_users_own_files_is_not_cleared_as_an_earlier_run(tmp_path: Path) -> None:
    """Review 21: a run cleared `model/`, `metrics.json` and `checkpoints/` from any `--out` (a
    user's own notes went), then crashed on a file named `private`. Only a folder holding an earlier
    run's `config.json` is cleared; the others are refused before anything is written."""
    out = tmp_path / "proj"
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.txt").write_text("notes")
    (out / "metrics.json").write_text("{}")
    before = _digest(out)
    code, text = _run("simulate", "--devices", "60", "--per-round", "10", "--out", str(out))
    assert code == 2 and _folded("holds metrics.json, model but no earlier run") in text, text
    assert _digest(out) == before
    (out / "config.json").write_text('{"run": {}, "model": {}}')
    (out / "private").write_text("a file")
    code, text = _run("simulate", "--devices", "60", "--per-round", "10", "--out", str(out))
    assert code == 2 and _folded("private is a file where a run writes a folder") in text, text
    assert (out / "model" / "notes.txt").read_text() == "notes"


def test_a_bad_audit_database_is_named_before_anything_starts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"run": {}, "model": {}}')
    (out / "federated.json").write_text('{"status": "finished"}')
    not_a_db = tmp_path / "audit.sqlite"
    not_a_db.write_text("not a database")
    for url, said in (("notaurl", "is not a database URL"), (f"sqlite:///{not_a_db}", "not a database")):
        code, text = _run(
            "simulate", "--devices", "60", "--per-round", "10", "--out", str(out), "--audit-db", url
        )
        assert code == 2 and "--audit-db" in text and _folded(said) in text, text
    code, text = _run(
        "simulate", "--out", str(out), "--audit-db", "postgresql+psycopg://bob:hunter2@db/audit"
    )
    assert (
        code == 2 and _folded("a password on the command line is refused") in text and "hunter2" not in text
    )
    assert (out / "federated.json").read_text() == '{"status": "finished"}'  # nothing lost
    assert not_a_db.read_text() == "not a database"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("simulate", "--days", "5"), "--days: days must be in 14..3650, got 5"),
        (("population", "--days", "100000"), "--days"),
        (("whatif", "--policy", "default", "--days", "100000"), "--days must be <= 3650"),
        (("bench-policy", "--days", "5"), "--days must be in 14..3650"),
        (("bench-policy", "--devices", "0"), "--devices"),
    ],
)
def test_days_and_devices_out_of_range_are_refused_naming_the_option(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    code, text = _run(*args)
    assert code == 2 and _folded(said) in text, text


@pytest.mark.parametrize("command", ["simulate", "population", "whatif", "import"])
def test_an_output_folder_that_is_a_file_or_below_one_is_refused_first(
    tmp_path: Path, log: Path, command: str
) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("keep")
    option = "--stores" if command == "import" else "--out"
    extra = {
        "simulate": ("--devices", "60", "--per-round", "10"),
        "population": ("--devices", "5"),
        "whatif": ("--policy", "default", "--devices", "5"),
        "import": ("--events", str(log)),
    }[command]
    for target, said in ((a_file, "is a file, not a folder"), (a_file / "sub", f"{a_file} is a file")):
        code, text = _run(command, *extra, option, str(target))
        assert code == 2 and _folded(option) in text and _folded(said) in text, text
    assert a_file.read_text() == "keep"


def test_an_import_onto_a_folder_with_a_corrupt_store_names_it_and_writes_nothing(
    tmp_path: Path, log: Path
) -> None:
    """The corrupt store was found only when its turn came, after the stores before it had their
    rows; every store is now opened before any is written."""
    from fedchurn.client.importer import store_path

    stores = tmp_path / "stores"
    stores.mkdir()
    with EventStore(store_path(stores, "alice")):
        pass
    store_path(stores, "carol").write_text("garbage")
    before = _digest(stores)
    code, text = _run("import", "--events", str(log), "--stores", str(stores))
    assert (
        code == 2
        and _folded(f"{store_path(stores, 'carol')}: not an event store") in text
        and _folded("nothing was written") in text
    )
    assert _digest(stores) == before and not store_path(stores, "bob").exists()


@pytest.mark.parametrize(
    ("content", "args", "said"),
    [
        (LOG, ("--user", "alice", "--today", "2024-13-45"), "--today: '2024-13-45' is not a date"),
        (LOG, ("--user", "alice", "--today", "2025-06-10"), "--today 2025-06-10: before alice's first event"),
        (LOG, ("--user", "alice", "--tz", "99999"), "--tz: 99999 min is outside"),
        (
            "".join(line + ",x\n" for line in LOG.replace("value", "user_id", 1).splitlines()),
            (),
            "names 'user_id'",
        ),
    ],
)
def test_features_names_the_option_or_the_file_at_fault(
    tmp_path: Path, content: str, args: tuple[str, ...], said: str
) -> None:
    path = tmp_path / "log.csv"
    path.write_text(content)
    code, text = _run("features", "--events", str(path), *args)
    assert code == 2 and _folded(said) in text, text


def test_a_corrupt_or_non_utf8_log_is_named(tmp_path: Path) -> None:
    import gzip

    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(LOG.encode())[:30])
    latin = tmp_path / "latin.csv"
    latin.write_bytes(LOG.replace("bob", "b\xe9b").encode("latin-1"))
    for path in (cut, latin):
        code, text = _run("features", "--events", str(path))
        assert code == 2 and _folded(f"{path.name}: cannot be read as a csv log") in text, text


def _model(run: Path, params: np.ndarray) -> Path:
    from fedchurn.server.run_output import RunOutput

    RunOutput(run).write_model(params, 1)
    return run


def test_a_model_with_a_non_finite_parameter_is_refused_by_name(tmp_path: Path, log: Path) -> None:
    from fedchurn.shared.model_format import init_params

    params = init_params(0)
    params[7] = np.nan
    run = _model(tmp_path / "run", params)
    for args in (("score", "--model", str(run), "--events", str(log)), ("export-onnx", "--model", str(run))):
        code, text = (
            _run(*args, "--out", str(tmp_path / "m.onnx")) if args[0] == "export-onnx" else _run(*args)
        )
        assert code == 2 and _folded("params.npy: 1 of 2286 parameters are not finite numbers") in text, text
    assert not (tmp_path / "m.onnx").exists()
    (run / "model" / "model.json").write_text("{not json")
    code, text = _run("score", "--model", str(run), "--events", str(log))
    assert code == 2 and _folded("model.json: not a model description") in text, text


def test_export_onnx_to_a_folder_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    from fedchurn.shared.model_format import init_params

    run = _model(tmp_path / "run", init_params(0))
    folder = tmp_path / "adir.onnx"
    folder.mkdir()
    code, text = _run("export-onnx", "--model", str(run), "--out", str(folder))
    assert code == 2 and "--out" in text and _folded("is a folder") in text, text
    assert list(tmp_path.glob("*.tmp")) == [] and list(folder.iterdir()) == []


def test_score_as_of_a_day_before_the_log_says_so(tmp_path: Path, log: Path) -> None:
    from fedchurn.shared.model_format import init_params

    run = _model(tmp_path / "run", init_params(0))
    code, text = _run("score", "--model", str(run), "--events", str(log), "--as-of", "1990-01-01")
    assert code == 2 and _folded("--as-of 1990-01-01: before the log's first event (2026-01-01)") in text, (
        text
    )
    code, text = _run("score", "--model", str(run), "--events", str(log), "--as-of", "2026-03-01")
    assert code == 0 and _folded("after the log's last event") in text, text


def test_serve_refuses_a_password_on_the_command_line_a_bad_port_and_a_file_that_is_no_database(
    tmp_path: Path,
) -> None:
    code, text = _run("serve", "--database-url", "postgresql+psycopg://bob:hunter2@db/fedchurn")
    assert (
        code == 2 and _folded("a password on the command line is refused") in text and "hunter2" not in text
    )
    assert "FEDCHURN_DATABASE_URL" in text
    code, text = _run("serve", "--port", "99999", "--database-url", "sqlite://")
    assert code == 2 and "--port" in text
    not_a_db = tmp_path / "log.csv"
    not_a_db.write_text(LOG)
    code, text = _run("serve", "--database-url", f"sqlite:///{not_a_db}")
    assert code == 2 and "--database-url" in text and _folded("not a database") in text, text
    assert not_a_db.read_text() == LOG


def test_the_environment_may_carry_a_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """What reaches the server from $FEDCHURN_DATABASE_URL is not refused for its password (the
    server start is replaced: the URL's driver is not installed here)."""
    from fedchurn.server import audit

    seen: list[str] = []

    class Opened:
        def __init__(self, url: str) -> None:
            seen.append(url)

        def close(self) -> None:
            pass

    monkeypatch.setattr(audit, "AuditStore", Opened)
    monkeypatch.setattr("fedchurn.server.serve_cli.serve", lambda *a, **k: None)
    url = "postgresql+psycopg://bob:hunter2@db/fedchurn"
    code, text = _run("serve", env={"FEDCHURN_DATABASE_URL": url})
    assert code == 0 and seen == [url] and "hunter2" not in text, text


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--map", "user=uid"), "--cutoff, --tz and --map apply to a real log"),
        (("--events", "LOG", "--devices", "500"), "--devices describe a simulated population"),
    ],
)
def test_simulate_refuses_options_it_would_ignore(
    tmp_path: Path, log: Path, args: tuple[str, ...], said: str
) -> None:
    code, text = _run(
        "simulate", *(str(log) if a == "LOG" else a for a in args), "--out", str(tmp_path / "r")
    )
    assert code == 2 and _folded(said) in text, text
    assert not (tmp_path / "r").exists()


def test_spec_doc_names_a_document_without_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "spec.md"
    doc.write_text("# a spec without generated sections\n")
    code, text = _run("spec-doc", str(doc))
    assert code == 2 and _folded(f"{doc}: section") in text and _folded("markers are missing") in text, text
    assert doc.read_text() == "# a spec without generated sections\n"


# --- review 21 -------------------------------------------------------------------------------


def test_export_onnx_never_replaces_a_link_or_a_device(tmp_path: Path) -> None:
    """`--out /dev/null` (as root) turned the device into a regular file: the .onnx is written
    beside the target and renamed onto it. A target that is not a regular file is refused."""
    from fedchurn.shared.model_format import init_params

    run = _model(tmp_path / "run", init_params(0))
    kept = tmp_path / "kept.txt"
    kept.write_text("keep")
    link = tmp_path / "link.onnx"
    link.symlink_to(kept)
    code, text = _run("export-onnx", "--model", str(run), "--out", str(link))
    assert code == 2 and _folded("is not a regular file") in text, text
    assert link.is_symlink() and kept.read_text() == "keep"


def test_out_paths_that_cannot_be_folders_are_named(tmp_path: Path, log: Path) -> None:
    dangling = tmp_path / "dangle"
    dangling.symlink_to(tmp_path / "nowhere")
    code, text = _run("import", "--events", str(log), "--stores", str(dangling))
    assert code == 2 and _folded("which does not exist") in text, text
    too_long = tmp_path / ("x" * 300)
    code, text = _run("import", "--events", str(log), "--stores", str(too_long))
    assert code == 2 and "--stores" in text and _folded("a name of 300 bytes; at most 255") in text, text


def test_import_keeps_every_user_apart_and_visible(tmp_path: Path) -> None:
    """Two Chinese names were refused as one store; `../../evil` became the hidden
    `.._.._evil.sqlite`, which a SuperNode's listing skips (the device was silently lost)."""
    from fedchurn.client.deploy_client import list_stores

    users = ["李雷", "韩梅", "../../evil", "a/b", "a_b"]
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,timestamp,category,action,value\n"
        + "".join(f"{u},2026-01-0{i + 1}T09:00:00Z,sessions,session,60\n" for i, u in enumerate(users))
    )
    stores = tmp_path / "stores"
    code, text = _run("import", "--events", str(path), "--stores", str(stores))
    assert code == 0, text
    assert len(list_stores(stores)) == len(users)
    assert (stores / "李雷.sqlite").exists() and (stores / "a_b.sqlite").exists()


@pytest.mark.parametrize(
    ("meta", "said"),
    [
        ({"high_risk": "x"}, "must be numbers in [0, 1]"),
        ({"high_risk": float("nan")}, "must be numbers in [0, 1]"),
        ({"high_risk": 0.1, "medium_risk": 0.9}, "medium_risk 0.9 is above high_risk 0.1"),
        ({"spec": [1, 2]}, "spec must be an object"),
    ],
)
def test_a_model_description_that_would_score_wrongly_is_refused(
    tmp_path: Path, log: Path, meta: dict[str, object], said: str
) -> None:
    """Review 21: a threshold "x" crashed `score`, NaN put every user in "low", thresholds the wrong
    way round put 0.239 in "high", and a spec that is not an object read as the default spec."""
    from fedchurn.shared.model_format import init_params

    run = _model(tmp_path / "run", init_params(0))
    doc = json.loads((run / "model" / "model.json").read_text())
    (run / "model" / "model.json").write_text(json.dumps({**doc, **meta}))
    for args in (("score", "--events", str(log)), ("export-onnx", "--out", str(tmp_path / "m.onnx"))):
        code, text = _run(args[0], "--model", str(run), *args[1:])
        assert code == 2 and _folded(said) in text, text


def test_a_model_of_strings_or_no_folder_is_named(tmp_path: Path, log: Path) -> None:
    from fedchurn.shared.model_format import init_params

    run = _model(tmp_path / "run", init_params(0))
    np.save(run / "model" / "params.npy", np.array(["a"] * 2286))
    code, text = _run("score", "--model", str(run), "--events", str(log))
    assert code == 2 and _folded("holds <U1 values, not numbers") in text, text
    code, text = _run("score", "--model", str(tmp_path / "nope"), "--events", str(log))
    assert code == 2 and _folded("nope does not exist") in text, text
    code, text = _run("score", "--model", str(log), "--events", str(log))
    assert code == 2 and _folded("is a file, not a run folder") in text, text


def test_serve_checks_its_host_and_write_token_options(tmp_path: Path) -> None:
    code, text = _run("serve", "--host", "bad host!!", "--database-url", "sqlite://")
    assert code == 2 and "--host" in text, text
    code, text = _run("serve", "--write-token-file", str(tmp_path / "t"), "--database-url", "sqlite://")
    assert code == 2 and _folded("add --writable") in text, text


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://u:Sup3rSecretPW@db/x", "postgresql+psycopg://u@db/x?password=Sup3rSecretPW"],
)
def test_a_password_anywhere_in_a_database_url_stays_off_the_command_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 21: `?password=` passed every check and was printed in full; and `python -m
    fedchurn.server.serve_cli` (docs: "the same, without the CLI") took a password on its command
    line, created missing SQLite files and ignored $FEDCHURN_DATABASE_URL."""
    from fedchurn.server import serve_cli

    for args in (("serve", "--database-url", url), ("simulate", "--audit-db", url)):
        code, text = _run(*args)
        assert code == 2 and _folded("on the command line is refused") in text and "Sup3r" not in text, text
    assert serve_cli.main(["--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "on the command line is refused" in err and "Sup3r" not in err


def test_the_module_server_refuses_a_missing_sqlite_file_unless_told_to_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedchurn.server import serve_cli

    missing = tmp_path / "nope.sqlite"
    assert serve_cli.main(["--database-url", f"sqlite:///{missing}", "--port", "8000"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
    with pytest.raises(SystemExit):
        serve_cli.main(["--port", "99999"])
    assert "from 1 to 65535" in capsys.readouterr().err


def test_a_policy_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_bytes(b"\xff\xfe name")
    code, text = _run("whatif", "--policy", str(bad), "--devices", "5")
    assert code == 2 and _folded(f"{bad}: not UTF-8 text") in text, text


@pytest.mark.parametrize(
    ("text", "eps"),
    [("none", 0.0), ("None", 0.0), ("0", 0.0), ("8", 8.0), ("0.5", 0.5), ("-5", None), ("nan", None)],
)
def test_every_command_reads_target_epsilon_alike(text: str, eps: float | None) -> None:
    """`simulate` took `none`, `deploy run` only 0 (review 21): one parser for both."""
    from fedchurn.shared.run_config import parse_target_epsilon

    if eps is None:
        with pytest.raises(ValueError, match="--target-epsilon must be a positive number or none"):
            parse_target_epsilon(text)
    else:
        assert parse_target_epsilon(text) == eps


def test_serve_says_when_its_port_is_taken_before_announcing_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Review 21: the banner announced another server's address, then uvicorn failed to bind."""
    import socket

    from fedchurn.server import serve_cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert serve_cli.main(["--port", str(port), "--database-url", "sqlite://"]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and "transparency API:" not in err


def test_an_error_shows_its_brackets_as_text(tmp_path: Path) -> None:
    """Review 23: Rich read `[policy]` in a message as a style and dropped it, and a path holding
    `[/]` crashed the error printer itself."""
    folder = tmp_path / "x[" / "]y"
    folder.mkdir(parents=True)
    bad = folder / "p[1].toml"
    bad.write_text("[policy]\nhigh_risk = 5.0\n")
    code, text = _run("whatif", "--policy", str(bad), "--devices", "5")
    assert code == 2 and _folded(f"{bad} [policy].high_risk") in text, text
