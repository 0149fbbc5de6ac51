"""`fedchurn deploy ...` refuses a bad input before any work starts, naming the option, with the
deploy commands' own error (exit 2, no traceback), and changes nothing. No process is started
here: every exec, server and `flwr` call the commands would make is replaced by a recorder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedchurn.cli import app
from fedchurn.server.deploy_secrets import make_secrets


class StartedError(Exception):
    """What a recorder raises where the command would have started a process or a server."""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wrapping inside the long paths the errors name."""
    from fedchurn import deploy_cli

    monkeypatch.setattr(deploy_cli.console, "width", 1000)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every process or server a command starts, recorded instead of started."""
    import fedchurn.server.deploy as deploy
    import fedchurn.server.deploy_services as services

    calls: list[str] = []

    def record(what: str, result: Any = None) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            if isinstance(result, Exception):
                raise result
            return result

        return fake

    monkeypatch.setattr(os, "execvpe", record("exec", StartedError()))
    monkeypatch.setattr(subprocess, "call", record("flwr run", 0))
    monkeypatch.setattr(services, "_serve_tls", record("serve"))
    monkeypatch.setattr(deploy, "register_node", record("register", 7))
    monkeypatch.setattr(deploy, "population_stores", record("stores", StartedError()))
    monkeypatch.setattr(deploy, "local_federation", record("federation", StartedError()))
    return calls


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets folder of 2 SuperNodes, as `deploy certs` writes it (the tests copy or only read it)."""
    out = tmp_path_factory.mktemp("provisioned") / "sec"
    make_secrets(out, 2, ("127.0.0.1", "localhost"))
    return out


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and output (one line: Rich wraps at the terminal's width)."""
    res = CliRunner().invoke(app, ["deploy", *args])
    if res.exception is not None:  # a traceback for a user's mistake fails here
        assert isinstance(res.exception, SystemExit | StartedError), repr(res.exception)
    return res.exit_code, " ".join(res.output.replace("│", " ").split())


def refused(*args: str) -> str:
    code, text = invoke(*args)
    assert code == 2, text
    assert "Traceback" not in text
    return text


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- deploy certs -------------------------------------------------------------------------------


def test_certs_refuses_a_folder_that_already_holds_secrets_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "sec"
    args = ("certs", "--out", str(out), "--nodes", "2", "--host", "127.0.0.1")
    assert invoke(*args)[0] == 0
    before = digests(out)
    assert "keyholder/keyholder.key" in before and "nodes/node-1" in before
    text = refused(*args)
    assert f"--out {out} already holds a deployment's secrets" in text and "nothing was changed" in text
    assert digests(out) == before  # the CA, TLS keys, tokens, node keys and key holder's key


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--nodes", "-1", "--nodes"),
        ("--nodes", "0", "--nodes"),
        ("--nodes", "10001", "--nodes"),
        ("--host", "bad host name!!", "--host"),
        ("--keyholder-host", "kh_1.example", "--keyholder-host"),
        ("--api-host", "-api.example", "--api-host"),
        ("--host", "10.0.0", "--host"),
    ],
)
def test_certs_refuses_a_bad_node_count_or_host_name_before_writing(
    tmp_path: Path, option: str, value: str, named: str
) -> None:
    out = tmp_path / "sec"
    assert named in refused("certs", "--out", str(out), option, value)
    assert not out.exists()


def test_certs_takes_ip_addresses_and_host_names(tmp_path: Path) -> None:
    hosts = ("--host", "::1", "--host", "superlink.example.org", "--keyholder-host", "kh-1.example")
    code, text = invoke("certs", "--out", str(tmp_path / "sec"), "--nodes", "1", *hosts)
    assert code == 0, text


def test_certs_refuses_an_out_that_is_a_file_or_lies_in_one(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    assert "--out" in refused("certs", "--out", str(afile))
    assert f"{afile} is a file" in refused("certs", "--out", str(afile / "sub"))
    assert afile.read_text() == "mine\n"


def test_make_secrets_reports_each_node_key_for_a_progress_bar(tmp_path: Path) -> None:
    ticks: list[None] = []
    sec = make_secrets(tmp_path / "sec", 3, with_ckks=False, on_node_key=lambda: ticks.append(None))
    assert len(ticks) == len(sec.node_keys) == 3


# --- deploy run and deploy local ----------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A FLWR_HOME as `deploy register` leaves it."""
    folder = tmp_path / "fh"
    folder.mkdir()
    (folder / "config.toml").write_text('[superlink]\ndefault = "fedchurn"\n')
    return folder


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--target-epsilon", "-5"), "--target-epsilon"),
        (("--target-epsilon", "nan"), "--target-epsilon"),
        (("--eval-noise", "-2"), "--eval-noise"),
        (("--k-min", "0"), "--k-min"),
        (("--k-min", "100"), "--k-min 100 is above the largest cohort, 32"),
        (("--round-timeout", "-1"), "--round-timeout"),
        (("--rounds", "0"), "--rounds"),
        (("--per-round", "-1"), "--per-round"),
        (("--run-name", "../elsewhere"), "--run-name"),
    ],
)
def test_run_refuses_bad_settings_before_writing_or_calling_flwr(
    tmp_path: Path, home: Path, started: list[str], flags: tuple[str, ...], named: str
) -> None:
    work = tmp_path / "work"
    assert named in refused("run", "--home", str(home), "--work", str(work), *flags)
    assert started == [] and not work.exists()


def test_run_refuses_a_home_that_does_not_exist_or_was_never_registered(
    tmp_path: Path, started: list[str]
) -> None:
    work = tmp_path / "work"
    assert "--home" in refused("run", "--home", str(tmp_path / "nosuchhome"), "--work", str(work))
    (tmp_path / "empty").mkdir()
    text = refused("run", "--home", str(tmp_path / "empty"), "--work", str(work))
    assert "--home" in text and "deploy register" in text
    assert started == [] and not work.exists()


def test_run_with_good_settings_writes_its_config_and_calls_flwr(
    tmp_path: Path, home: Path, started: list[str]
) -> None:
    work = tmp_path / "work"
    code, text = invoke("run", "--home", str(home), "--work", str(work), "--target-epsilon", "8")
    assert code == 0, text
    assert started == ["flwr run"] and (work / "run-config.toml").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--k-min", "100"), "--k-min 100 is above the largest cohort, 32"),
        (("--k-min", "50"), "--k-min 50 is above the largest cohort, 32"),
        (("--k-min", "20"), "--k-min 20 is above the 9 devices a round trains"),
        (("--rounds", "0"), "--rounds"),
        (("--nodes", "0"), "--nodes"),
        (("--devices-per-node", "0"), "--devices-per-node"),
        (("--reply-after", "nan"), "--reply-after"),
    ],
)
def test_local_refuses_bad_settings_before_starting_anything(
    tmp_path: Path, started: list[str], flags: tuple[str, ...], named: str
) -> None:
    out = tmp_path / "dl_bad"
    assert named in refused("local", "--out", str(out), *flags)
    assert started == [] and not out.exists()


def test_local_refuses_a_folder_an_earlier_run_left(tmp_path: Path, started: list[str]) -> None:
    out = tmp_path / "dl"
    (out / "fed").mkdir(parents=True)
    assert f"--out {out} is not empty" in refused("local", "--out", str(out))
    assert started == []


# --- deploy keyholder and deploy api ------------------------------------------------------------


def test_keyholder_says_where_it_listens_and_no_secret(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    state = tmp_path / "kh" / "state.sqlite"
    code, text = invoke("keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(state))
    assert code == 0, text
    assert "key holder listening on https://127.0.0.1:8443" in text and started == ["serve"]
    token = (provisioned / "aggregator" / "keyholder.token").read_text().strip()
    assert token not in text and "keyholder.key" not in text


@pytest.mark.parametrize("port", ["99999", "0", "-1", "65536"])
def test_every_deploy_command_refuses_a_port_outside_1_to_65535(
    tmp_path: Path, provisioned: Path, started: list[str], port: str
) -> None:
    kh = ("keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(tmp_path / "ks.sqlite"))
    assert "--port" in refused(*kh, "--port", port)
    assert "--port" in refused("api", "--dir", str(provisioned / "api"), "--port", port)
    assert "--port" in refused("superlink", "--certs", str(provisioned), "--port", port)
    node = ("supernode", "--certs", str(provisioned), "--node", "0", "--stores", str(tmp_path))
    assert "--runtime-port" in refused(*node, "--superlink", "127.0.0.1:9093", "--runtime-port", port)
    assert "--superlink" in refused(*node, "--superlink", f"127.0.0.1:{port}")
    assert started == []


def test_api_refuses_a_database_url_that_does_not_parse_without_echoing_it(
    provisioned: Path, started: list[str]
) -> None:
    text = refused("api", "--dir", str(provisioned / "api"), "--database-url", "notaurl")
    assert "error: --database-url is not a database URL" in text and "notaurl" not in text
    assert started == []


def test_the_key_holder_service_module_refuses_a_port_outside_1_to_65535() -> None:
    from fedchurn.server.deploy_services import main

    with pytest.raises(SystemExit) as exit_:
        main(["keyholder", "--dir", "x", "--state", "y", "--port", "99999"])
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--k-min", "0"), "--k-min"),
        (("--min-noise-multiplier", "-1"), "--min-noise-multiplier"),
        (("--min-noise-multiplier", "nan"), "--min-noise-multiplier"),
        (("--horizon", "0"), "--horizon"),
        (("--eval-noise", "-1"), "--eval-noise"),
        (("--host", "not a host"), "--host"),
    ],
)
def test_keyholder_refuses_bad_settings(
    tmp_path: Path, provisioned: Path, started: list[str], flags: tuple[str, ...], named: str
) -> None:
    state = tmp_path / "kh" / "state.sqlite"
    assert named in refused(
        "keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(state), *flags
    )
    assert started == [] and not state.parent.exists()


def test_keyholder_refuses_a_missing_or_unprovisioned_folder_and_a_state_inside_a_file(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    state = str(tmp_path / "ks.sqlite")
    assert "--dir" in refused("keyholder", "--dir", str(tmp_path / "nosuch"), "--state", state)
    (tmp_path / "empty").mkdir()
    text = refused("keyholder", "--dir", str(tmp_path / "empty"), "--state", state)
    assert "--dir" in text and "keyholder.key is missing" in text
    afile = tmp_path / "afile"
    afile.write_text("")
    text = refused("keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(afile / "ks.sqlite"))
    assert "--state" in text and f"{afile} is a file" in text
    assert started == []


# --- deploy supernode, superlink, register, aggregator-settings ------------------------------------


def test_supernode_refuses_a_node_it_has_no_key_for_and_a_folder_without_secrets(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    base = ("supernode", "--superlink", "127.0.0.1:9093", "--stores", str(stores))
    text = refused(*base, "--certs", str(provisioned), "--node", "7")
    assert "--node 7" in text and "2 SuperNodes" in text
    assert "--node" in refused(*base, "--certs", str(provisioned), "--node", "-1")
    text = refused(*base, "--certs", str(tmp_path / "nosuch"), "--node", "0")
    assert "--certs" in text and "nosuch" in text
    assert started == []


def test_supernode_refuses_stores_that_are_a_file_or_missing_unless_told_to_create_them(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    base = ("supernode", "--certs", str(provisioned), "--node", "1", "--superlink", "127.0.0.1:9093")
    good = tmp_path / "good.csv"
    good.write_text("user,timestamp\n")
    assert "--stores" in refused(*base, "--stores", str(good))
    missing = tmp_path / "nosuchstores"
    text = refused(*base, "--stores", str(missing))
    assert "--stores" in text and "--create-stores" in text and not missing.exists()
    assert started == []
    code, text = invoke(*base, "--stores", str(missing), "--create-stores")
    assert code == 1 and started == ["exec"] and missing.is_dir(), text  # the recorder's exception


def test_superlink_refuses_a_folder_without_its_secrets(tmp_path: Path, started: list[str]) -> None:
    text = refused("superlink", "--certs", str(tmp_path / "nosuch"))
    assert "--certs" in text and "nosuch" in text and started == []


def test_register_refuses_a_folder_without_secrets_and_writes_nothing(
    tmp_path: Path, started: list[str]
) -> None:
    home = tmp_path / "fh3"
    text = refused(
        "register", "--certs", str(tmp_path / "nosuch"), "--superlink", "127.0.0.1:18745", "--home", str(home)
    )
    assert "--certs" in text and "nosuch" in text
    assert not home.exists() and started == []


def test_register_names_the_ca_by_its_absolute_path_and_registers_every_node(
    tmp_path: Path, provisioned: Path, started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(provisioned.parent)
    home = tmp_path / "fh"
    code, text = invoke("register", "--certs", "sec", "--superlink", "127.0.0.1:18745", "--home", str(home))
    assert code == 0, text
    assert (
        f'root-certificates = "{provisioned.resolve() / "ca" / "ca.pem"}"'
        in (home / "config.toml").read_text()
    )
    assert started == ["register", "register"]


def test_aggregator_settings_refuses_bad_urls_folders_and_results(tmp_path: Path, provisioned: Path) -> None:
    certs = tmp_path / "sec"
    shutil.copytree(provisioned, certs)
    settings = certs / "aggregator" / "aggregator.toml"
    good = {
        "--certs": str(certs),
        "--keyholder-url": "https://kh.example:8443",
        "--results": str(tmp_path / "runs"),
        "--state-db": "sqlite:///state.sqlite",
        "--audit-db": "sqlite:///audit.sqlite",
    }

    def args(**change: str) -> list[str]:
        return [
            "aggregator-settings",
            *(
                x
                for k, v in {**good, **{f"--{n.replace('_', '-')}": v for n, v in change.items()}}.items()
                for x in (k, v)
            ),
        ]

    afile = tmp_path / "afile"
    afile.write_text("")
    for change, named in (
        ({"keyholder_url": "http://kh.example:8443"}, "--keyholder-url"),
        ({"keyholder_url": "not a url"}, "--keyholder-url"),
        ({"keyholder_url": "https://kh.example:99999"}, "--keyholder-url"),
        ({"state_db": "notaurl"}, "--state-db"),
        ({"audit_db": "notaurl"}, "--audit-db"),
        ({"results": str(afile)}, "--results"),
        ({"certs": str(tmp_path / "nosuch")}, "--certs"),
    ):
        text = refused(*args(**change))
        assert named in text and "got not a url://" not in text, (change, text)
        assert not settings.exists() and not (tmp_path / "nosuch").exists()
    code, text = invoke(*args())
    assert code == 0 and settings.exists(), text


# --- review 21: passwords in a query string, files that are no database, folders of the wrong level


SECRET = "Sup3rSecretPW"


@pytest.fixture
def no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedchurn.server.database_url import DATABASE_URL_ENV

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)


@pytest.fixture
def not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text("user,timestamp\n1,2026-01-01\n")
    return path


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://agg@db.example/fedchurn?password={SECRET}",
        f"postgresql+psycopg://agg@db.example/fedchurn?sslmode=require&PASSWORD={SECRET}",
        f"postgresql://agg:{SECRET}@db.example/fedchurn",
    ],
)
def test_api_refuses_a_password_anywhere_in_its_database_url_without_echoing_it(
    provisioned: Path, started: list[str], no_database_env: None, url: str
) -> None:
    text = refused("api", "--dir", str(provisioned / "api"), "--database-url", url)
    assert "error: --database-url holds a password" in text and "FEDCHURN_DATABASE_URL" in text
    assert SECRET not in text and started == []


@pytest.mark.parametrize("option", ["--state-db", "--audit-db"])
def test_aggregator_settings_refuses_a_password_in_a_query_string_and_writes_nothing(
    tmp_path: Path, provisioned: Path, option: str
) -> None:
    certs = tmp_path / "sec"
    shutil.copytree(provisioned, certs)
    dbs = {"--state-db": "sqlite:///state.sqlite", "--audit-db": "sqlite:///audit.sqlite"}
    dbs[option] = f"postgresql://agg@db.example/fedchurn?password={SECRET}"
    text = refused(
        "aggregator-settings",
        *("--certs", str(certs), "--keyholder-url", "https://kh.example:8443"),
        *("--results", str(tmp_path / "runs")),
        *(x for kv in dbs.items() for x in kv),
    )
    assert f"{option} holds a password" in text and SECRET not in text
    assert not (certs / "aggregator" / "aggregator.toml").exists()


def test_api_refuses_no_database_or_one_from_the_environment_that_does_not_parse(
    provisioned: Path, started: list[str], monkeypatch: pytest.MonkeyPatch, no_database_env: None
) -> None:
    from fedchurn.server.database_url import DATABASE_URL_ENV

    text = refused("api", "--dir", str(provisioned / "api"))
    assert "error: no database: give --database-url or set $FEDCHURN_DATABASE_URL" in text
    monkeypatch.setenv(DATABASE_URL_ENV, f"::not a url {SECRET}")
    text = refused("api", "--dir", str(provisioned / "api"))
    assert "error: $FEDCHURN_DATABASE_URL is not a database URL" in text and SECRET not in text
    assert started == []


def test_api_refuses_a_file_that_is_no_database_and_changes_nothing(
    provisioned: Path, started: list[str], not_a_database: Path, no_database_env: None
) -> None:
    before = not_a_database.read_bytes()
    text = refused("api", "--dir", str(provisioned / "api"), "--database-url", f"sqlite:///{not_a_database}")
    assert "error: --database-url" in text and f"{not_a_database} is not a SQLite database" in text
    assert not_a_database.read_bytes() == before and started == []


def test_api_refuses_a_missing_sqlite_file_unless_told_to_create_it(
    tmp_path: Path, provisioned: Path, started: list[str], no_database_env: None
) -> None:
    missing = tmp_path / "nope.sqlite"
    args = ("api", "--dir", str(provisioned / "api"), "--database-url", f"sqlite:///{missing}")
    text = refused(*args)
    assert f"--database-url names {missing}, which does not exist" in text and "--create" in text
    assert not missing.exists() and started == []
    code, text = invoke(*args, "--create")
    assert code == 0 and missing.is_file() and started == ["serve"], text
    code, text = invoke(*args)  # now it exists: served without --create
    assert code == 0 and started == ["serve", "serve"], text


def test_the_api_module_refuses_a_missing_database_and_a_key_holder_state_that_is_no_database(
    tmp_path: Path, provisioned: Path, started: list[str], not_a_database: Path, no_database_env: None
) -> None:
    from fedchurn.server.deploy_services import main

    api = ["api", "--dir", str(provisioned / "api"), "--database-url", f"sqlite:///{tmp_path / 'no.sqlite'}"]
    with pytest.raises(SystemExit) as exit_:
        main(api)
    assert exit_.value.code == 2 and not (tmp_path / "no.sqlite").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(not_a_database)])
    assert exit_.value.code == 2 and started == []


def test_keyholder_refuses_a_state_that_is_no_database_or_another_one(
    tmp_path: Path, provisioned: Path, started: list[str], not_a_database: Path
) -> None:
    import sqlite3

    kh = ("keyholder", "--dir", str(provisioned / "keyholder"), "--state")
    before = not_a_database.read_bytes()
    text = refused(*kh, str(not_a_database))
    assert f"--state: {not_a_database} is not a SQLite database" in text
    assert not_a_database.read_bytes() == before
    other = tmp_path / "audit.sqlite"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER)")
    text = refused(*kh, str(other))
    assert f"--state: {other} is another SQLite database (tables runs)" in text
    assert started == []


def test_keyholder_starts_again_on_its_own_state(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    import shutil

    own = tmp_path / "keyholder"  # a key of its own: a key answers with one state file (decision 155)
    shutil.copytree(provisioned / "keyholder", own, ignore=shutil.ignore_patterns("*.state-id"))
    state = tmp_path / "state.sqlite"
    kh = ("keyholder", "--dir", str(own), "--state", str(state))
    assert invoke(*kh)[0] == 0 and state.stat().st_size > 0
    code, text = invoke(*kh)
    assert code == 0 and started == ["serve", "serve"], text


@pytest.mark.parametrize(("command", "party"), [("keyholder", "keyholder"), ("api", "api")])
def test_keyholder_and_api_given_the_whole_secrets_folder_name_their_sub_folder(
    tmp_path: Path, provisioned: Path, started: list[str], command: str, party: str
) -> None:
    args = [command, "--dir", str(provisioned), "--database-url", "sqlite://"]
    if command == "keyholder":
        args[-2:] = ["--state", str(tmp_path / "ks.sqlite")]
    text = refused(*args)
    assert f"needs only its {party}/ sub-folder: --dir {provisioned / party}" in text
    assert "is not a folder `fedchurn deploy certs` wrote" not in text and started == []


def test_keyholder_names_the_largest_cohort_not_an_option_it_does_not_have(
    tmp_path: Path, provisioned: Path, started: list[str]
) -> None:
    state = tmp_path / "ks.sqlite"
    text = refused(
        "keyholder", "--dir", str(provisioned / "keyholder"), "--state", str(state), "--k-min", "33"
    )
    assert "--k-min 33 is above the largest cohort, 32" in text and "--max-cohort" not in text
    assert started == [] and not state.exists()


def test_supernode_refuses_a_negative_day(tmp_path: Path, provisioned: Path, started: list[str]) -> None:
    base = ("supernode", "--certs", str(provisioned), "--node", "0", "--superlink", "127.0.0.1:9093")
    text = refused(*base, "--stores", str(tmp_path), "--today", "-5")
    assert "--today -5" in text and "days since 1970-01-01 (UTC)" in text and started == []
    code, text = invoke(*base, "--stores", str(tmp_path), "--today", "20500")
    assert code == 1 and started == ["exec"], text  # the recorder's exception


def test_certs_refuses_a_folder_that_is_not_empty_and_changes_nothing(
    tmp_path: Path, provisioned: Path
) -> None:
    sec = tmp_path / "sec"
    shutil.copytree(provisioned, sec)
    before = digests(sec)
    text = refused("certs", "--out", str(sec / "nodes"), "--nodes", "1")
    assert f"--out {sec / 'nodes'} is not empty" in text and "nothing was changed" in text
    assert digests(sec) == before
    (tmp_path / "empty").mkdir()
    code, text = invoke("certs", "--out", str(tmp_path / "empty"), "--nodes", "1", "--no-ckks")
    assert code == 0, text


def test_make_secrets_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    from fedchurn.server.deploy_secrets import SecretsFolderError

    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(SecretsFolderError, match="is not empty"):
        make_secrets(tmp_path, 1, with_ckks=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.fixture
def settings_args(tmp_path: Path, provisioned: Path) -> dict[str, str]:
    certs = tmp_path / "sec"
    shutil.copytree(provisioned, certs)
    return {
        "--certs": str(certs),
        "--keyholder-url": "https://kh.example:8443",
        "--results": str(tmp_path / "runs"),
        "--state-db": "sqlite:///state.sqlite",
        "--audit-db": "sqlite:///audit.sqlite",
    }


def settings(args: dict[str, str], **change: str) -> list[str]:
    both = {**args, **{f"--{k.replace('_', '-')}": v for k, v in change.items()}}
    return ["aggregator-settings", *(x for kv in both.items() for x in kv)]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/path?q=1",
        "https://kh.example:8443/v1",
        "https://kh.example:8443?q=1",
        "https://kh.example:8443/#top",
        "https://kh.example:8443?",
    ],
)
def test_aggregator_settings_refuses_a_keyholder_url_with_a_path_query_or_fragment(
    settings_args: dict[str, str], url: str
) -> None:
    text = refused(*settings(settings_args, keyholder_url=url))
    assert "--keyholder-url must be https://host[:port]" in text and "path, query or fragment" in text
    assert "q=1" not in text and "#top" not in text and "/v1" not in text  # a query may hold a credential
    assert not (Path(settings_args["--certs"]) / "aggregator" / "aggregator.toml").exists()


@pytest.mark.parametrize("option", ["state_db", "audit_db"])
def test_aggregator_settings_refuses_a_sqlite_file_that_is_no_database(
    settings_args: dict[str, str], not_a_database: Path, option: str
) -> None:
    text = refused(*settings(settings_args, **{option: f"sqlite:///{not_a_database}"}))
    named = "--" + option.replace("_", "-")
    assert f"{named}: {not_a_database} is not a SQLite database" in text
    assert not (Path(settings_args["--certs"]) / "aggregator" / "aggregator.toml").exists()


def test_aggregator_settings_stores_sqlite_paths_absolute(
    tmp_path: Path, settings_args: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    monkeypatch.chdir(tmp_path)
    code, text = invoke(*settings(settings_args, keyholder_url="https://kh.example:8443/"))
    assert code == 0, text
    with (Path(settings_args["--certs"]) / "aggregator" / "aggregator.toml").open("rb") as f:
        doc = tomllib.load(f)
    assert doc["state_db"] == f"sqlite:///{tmp_path.resolve() / 'state.sqlite'}"
    assert doc["audit_db"] == f"sqlite:///{tmp_path.resolve() / 'audit.sqlite'}"


def test_api_never_shows_the_password_of_a_database_url_from_the_environment(
    provisioned: Path, started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedchurn.server.database_url import DATABASE_URL_ENV

    # Allowed in the environment, but nothing answers there (no driver, or a refused connection).
    monkeypatch.setenv(DATABASE_URL_ENV, f"postgresql://agg:{SECRET}@127.0.0.1:1/fedchurn?password={SECRET}")
    text = refused("api", "--dir", str(provisioned / "api"))
    assert "error: $FEDCHURN_DATABASE_URL postgresql://agg:***@127.0.0.1:1/fedchurn?password=***" in text
    assert SECRET not in text and started == []
