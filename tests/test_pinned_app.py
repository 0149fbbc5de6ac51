"""A device's SuperNode runs fedchurn's code-free app bundle or nothing (`client.pinned_app`); the
deployment test `test_attack_the_aggregator_ships_its_own_clientapp_code_to_the_supernodes` runs
the attack through real SuperNodes."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.pinned_app import (
    CLIENTAPP,
    FOREIGN_APP,
    SHIM,
    ForeignAppError,
    check_fab,
    checked_install,
    shim_dir,
)
from fedchurn.server.deploy import app_pyproject

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # `flwr build`'s


def _fab(tmp_path: Path, pyproject: str, files: dict[str, str] | None = None) -> bytes:
    """A bundle as `flwr run` builds it from an app folder."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(pyproject)
    for name, text in (files or {}).items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    return build_fab_from_disk(app)


def test_the_bundle_fedchurn_ships_is_accepted(tmp_path: Path) -> None:
    check_fab(_fab(tmp_path, app_pyproject()))


@pytest.mark.parametrize(
    ("files", "clientapp", "dependencies", "why"),
    [
        ({"evil/__init__.py": "", "evil/client.py": "app = None"}, "evil.client:app", "[]", "evil/client.py"),
        (
            {"fedchurn/client/deploy_client.py": "app = None"},
            CLIENTAPP,
            "[]",
            "fedchurn/client/deploy_client.py",
        ),
        ({}, "fedchurn.client.flower_app:app", "[]", "fedchurn.client.flower_app:app"),
        ({}, CLIENTAPP, '["requests"]', "requests"),
    ],
    ids=["its-own-code", "a-module-shadowing-fedchurns", "another-installed-clientapp", "dependencies"],
)
def test_any_other_bundle_is_refused_naming_why(
    tmp_path: Path, files: dict[str, str], clientapp: str, dependencies: str, why: str
) -> None:
    pyproject = app_pyproject().replace(f'clientapp = "{CLIENTAPP}"', f'clientapp = "{clientapp}"')
    pyproject = pyproject.replace("dependencies = []", f"dependencies = {dependencies}")
    with pytest.raises(ForeignAppError, match=f"{FOREIGN_APP}.*{why}"):
        check_fab(_fab(tmp_path, pyproject, files))


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["pyproject.toml", ".info/CONTENT", "x.py", "a/b.so"]), st.binary(max_size=80)
        ).map(_zip),
    )
)
def test_garbage_is_refused_with_the_one_error(content: bytes) -> None:
    with pytest.raises(ForeignAppError):
        check_fab(content)


def test_a_refused_bundle_is_never_unpacked(tmp_path: Path) -> None:
    unpacked: list[bytes] = []

    def install(fab_file: bytes, **_: object) -> Path:
        unpacked.append(fab_file)
        return tmp_path

    fab = _fab(tmp_path, app_pyproject().replace(CLIENTAPP, "evil.client:app"))
    with pytest.raises(ForeignAppError):
        checked_install(install)(fab, skip_prompt=True)
    assert not unpacked
    (tmp_path / "app").rename(tmp_path / "refused")
    ours = _fab(tmp_path, app_pyproject())
    checked_install(install)(ours, skip_prompt=True)
    assert unpacked == [ours]


def test_the_shim_on_the_supernodes_path_is_flowers_clientapp_command_with_the_check(tmp_path: Path) -> None:
    shim = shim_dir(tmp_path / "bin") / SHIM
    res = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--runtime-api-address" in res.stdout  # Flower's own `flwr-clientapp` arguments


def test_every_other_task_command_on_the_supernodes_path_refuses(tmp_path: Path) -> None:
    """A run's task type is the SuperLink's word: an aggregator could name an agent app (or any
    other task Flower runs from the bundle) instead of a ClientApp. On a device's SuperNode each
    of those commands refuses before anything is loaded."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    folder = shim_dir(tmp_path / "bin")
    others = sorted(set(TASK_TYPE_TO_COMMAND.values()) - {SHIM})
    assert others, "Flower names other task commands"
    for command in others:
        res = subprocess.run(
            [str(folder / command), "--token", "x"], capture_output=True, text=True, timeout=60
        )
        assert res.returncode != 0 and FOREIGN_APP in res.stderr and command in res.stderr, (command, res)


@pytest.mark.parametrize(
    ("pyproject_change", "manifest", "why"),
    [
        (("", ""), "pyproject.toml,0,1\n../../../etc/hostname,abc,1\n", "manifest"),
        (('version = "', 'version = "../../planted'), "pyproject.toml,0,1\n", "project.version"),
        (('publisher = "', 'publisher = "../'), "pyproject.toml,0,1\n", "tool.flwr.app.publisher"),
    ],
    ids=["manifest-lists-a-file-outside", "version-is-a-path", "publisher-is-a-path"],
)
def test_a_bundle_naming_paths_is_refused(pyproject_change: tuple[str, str], manifest: str, why: str) -> None:
    """Review 4: Flower checks the hash of every file the manifest lists, wherever its path
    points (a right guess installed, a wrong one failed: an oracle on the device's files), and
    names the folder it installs to from the project's name, version and publisher."""
    pyproject = app_pyproject().replace(*pyproject_change) if pyproject_change[0] else app_pyproject()
    fab = _zip({"pyproject.toml": pyproject.encode(), ".info/CONTENT": manifest.encode()})
    with pytest.raises(ForeignAppError, match=why):
        check_fab(fab)


def test_the_clientapp_is_fedchurns_whatever_folder_the_run_record_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 5: Flower loaded the ClientApp from a folder named after the run record's app id and
    version (the SuperLink's word) and put it first on the import path, so a folder left on the
    device with the bundle hash's suffix ran its code. The checked clientapp imports fedchurn's."""
    import sys

    from fedchurn.client import deploy_client
    from fedchurn.client.pinned_app import pinned_loader

    planted = tmp_path / "apps" / "evil.0123abcd"
    planted.mkdir(parents=True)
    (planted / "pyproject.toml").write_text(app_pyproject().replace(CLIENTAPP, "evilmod:app"))
    (planted / "evilmod.py").write_text("raise SystemExit('foreign code ran')\n")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    before = list(sys.path)
    app = pinned_loader("", None, True)("evil", "../apps/evil", "0123abcd" + "0" * 56)
    assert app is deploy_client.app and sys.path == before


def test_no_dependency_is_installed_whatever_folder_the_run_record_names(tmp_path: Path) -> None:
    """Review 6: a SuperNode started with runtime dependency installation installed them from the
    folder the run record names, not the checked bundle's (a leftover folder's build backend ran).
    fedchurn's bundle has none: the checked clientapp refuses to install any."""
    from fedchurn.client.pinned_app import no_dependencies

    with pytest.raises(ForeignAppError, match="dependencies"):
        no_dependencies(tmp_path / "apps" / "old.app.0.9.0123abcd", launch_id="t", run_id=1)
