"""A device's SuperNode runs fedchurn's own ClientApp, whatever app bundle the aggregator sends.

`flwr run` ships a Flower app bundle (FAB) to every SuperNode, and Flower loads the ClientApp the
bundle's pyproject.toml names, from the bundle's own folder first. A bundle with code in it is
therefore code the aggregator runs on the device's machine: it can read the device stores and
the node's secret, and nothing of `client.flower_app` (the key holder pin, the contribution
ledger, the upload budget) runs at all. Flower 1.41 checks bundles only against signatures its
SuperLink vouches for (`--trusted-entities` needs the SuperLink's licence verification), so a
fedchurn SuperNode checks them itself, before anything in them is installed or imported.

fedchurn's bundle carries no code: one pyproject.toml naming modules installed on the device, and
no dependencies. `check_fab` accepts exactly that shape with this module's `CLIENTAPP`. Flower's
SuperNode starts each ClientApp as the command `flwr-clientapp`, found on PATH; `shim_dir` writes
one that is `main` here (Flower's own `flwr-clientapp` with the check in front of its install
step, loading fedchurn's ClientApp by name rather than from a folder the run record names), and
`fedchurn deploy supernode` puts it first on the SuperNode's PATH. A bundle that fails
the check is never unpacked: the task fails and Flower answers the aggregator with an error reply.
"""

from __future__ import annotations

import importlib
import io
import re
import stat
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENTAPP",
    "FOREIGN_APP",
    "ForeignAppError",
    "check_fab",
    "checked_install",
    "main",
    "no_dependencies",
    "pinned_loader",
    "refuse",
    "shim_dir",
]

CLIENTAPP = "fedchurn.client.deploy_client:app"  # the one ClientApp a device's SuperNode runs
FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})  # what `flwr build` puts in a code-free app
FOREIGN_APP = "foreign-app"  # the reason a refused bundle gives
SHIM = "flwr-clientapp"  # the command name Flower's SuperNode starts a ClientApp with
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # what Flower may name a folder after


class ForeignAppError(ValueError):
    """The aggregator sent an app bundle that is not fedchurn's code-free one."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{FOREIGN_APP}: refused the app bundle the aggregator sent: {why}")


def check_fab(content: bytes, clientapp: str = CLIENTAPP) -> None:
    """Raise `ForeignAppError` unless `content` (a FAB, a zip) holds only a pyproject.toml and
    Flower's manifest listing it alone, with plain names, no dependencies and `clientapp`."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = fab.namelist()
            extra = sorted(set(names) - FAB_FILES)
            if extra or len(names) != len(set(names)):
                raise ForeignAppError(
                    f"it carries files besides pyproject.toml: {', '.join(extra[:5]) or names}"
                )
            project = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
            listed = [line.split(",")[0] for line in fab.read(".info/CONTENT").decode("utf-8").splitlines()]
    except ForeignAppError:
        raise
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ForeignAppError(f"it is not a readable app bundle ({type(e).__name__})") from e
    if listed != ["pyproject.toml"]:
        # Flower checks the hash of every file the manifest lists, wherever its path points: a
        # listed path outside the bundle made the install an oracle on the device's files.
        raise ForeignAppError(f"its manifest lists {listed[:5]!r}, not pyproject.toml alone")
    for keys in (("project", "name"), ("project", "version"), ("tool", "flwr", "app", "publisher")):
        value = _get(project, *keys)
        if not (isinstance(value, str) and _PLAIN_NAME.fullmatch(value) and ".." not in value):
            # Flower names the folder it installs to from these: no path may hide in them.
            raise ForeignAppError(f"its {'.'.join(keys)} {value!r} is not a plain name")
    named = _get(project, "tool", "flwr", "app", "components", "clientapp")
    if named != clientapp:
        raise ForeignAppError(f"its ClientApp is {named!r}, this device runs only {clientapp!r}")
    dependencies = _get(project, "project", "dependencies")
    if dependencies not in (None, []):
        raise ForeignAppError(f"it asks for dependencies {dependencies!r}; fedchurn's bundle has none")


def _get(doc: dict[str, Any], *keys: str) -> object:
    node: object = doc
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def shim_dir(folder: Path) -> Path:
    """Write `folder/flwr-clientapp`, which runs `main` with this interpreter, and, for every other
    command Flower starts a task with (`flwr-agentapp`, `flwr-serverapp`, ...: a run's task type
    is the SuperLink's word, and each of them loads its app from the bundle), one that refuses;
    return `folder` (the directory to put first on the SuperNode's PATH)."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    folder.mkdir(parents=True, exist_ok=True)
    for command in sorted({SHIM, *TASK_TYPE_TO_COMMAND.values()}):
        call = "main()" if command == SHIM else f"refuse('{command}')"
        shim = folder / command
        shim.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -P -c "from {__name__} import main, refuse; {call}" "$@"\n'
        )
        shim.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return folder


def refuse(command: str) -> None:
    """What a device's SuperNode runs for any task but a ClientApp's."""
    sys.exit(f"{FOREIGN_APP}: a fedchurn SuperNode runs fedchurn's ClientApp only, not {command}")


def checked_install(install: Callable[..., Path]) -> Callable[..., Path]:
    """`install` (Flower's `install_from_fab`) that first refuses any bundle but fedchurn's."""

    def install_checked(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        check_fab(fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes())
        return install(fab_file, *args, **kwargs)

    return install_checked


def pinned_loader(*_: object, **__: object) -> Callable[[str, str, str], Any]:
    """A stand-in for Flower's `get_load_client_app_fn`: its loader imports `CLIENTAPP` from the
    installed package. Flower's loads from a folder named after the run record's app id and
    version (the SuperLink's word, never compared with the checked bundle; a version may hold a
    path) and puts that folder first on the import path: any folder with the bundle hash's suffix
    left on the device, an app installed before this check, say, ran its code (review 5)."""

    def load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
        module, attribute = CLIENTAPP.split(":")
        return getattr(importlib.import_module(module), attribute)

    return load


def main() -> None:
    """Flower's `flwr-clientapp`, refusing foreign bundles and dependency installs and loading
    fedchurn's ClientApp by name. Flower 1.41 has no hook between pulling a task's bundle and
    loading its app, so this process (and only this one) replaces the three steps `run_clientapp`
    calls by name."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp

    run_clientapp.install_from_fab = checked_install(run_clientapp.install_from_fab)  # type: ignore[attr-defined]
    run_clientapp.get_load_client_app_fn = pinned_loader  # type: ignore[attr-defined]
    run_clientapp.install_app_dependencies = no_dependencies  # type: ignore[attr-defined,assignment]
    flwr_clientapp()


def no_dependencies(app_path: str | Path, *_: object, **__: object) -> Path:
    """A stand-in for Flower's `install_app_dependencies`, which a SuperNode started with
    `--allow-runtime-dependency-installation` calls on the folder the run record names (not the
    checked bundle's): a leftover folder's build backend ran on the device (review 6). fedchurn's
    bundle has no dependencies, so there is nothing to install."""
    raise ForeignAppError(
        f"the run asks to install dependencies (for {Path(app_path).name}); fedchurn has none"
    )
