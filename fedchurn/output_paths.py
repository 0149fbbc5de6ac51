"""Checks of the paths a command will write, made before any work starts.

A command that writes a folder or a file learns only at the end, after minutes of work, that the
path names an existing file, lies below one, or is a folder where a file was asked for; these
checks name the option and the path at once instead (review 19).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_out_dir", "check_out_file"]


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path.cwd()  # pragma: no cover - a relative path's parents end at "."


def check_out_dir(path: Path, option: str, named: Path | None = None) -> None:
    """Refuse `path` as a folder to create or fill: an existing file, a path below a file, or a
    folder this process may not write. ValueError naming `option` and `named` (default `path`)."""
    here = _nearest_existing(path)
    shown = f"{option} {named if named is not None else path}"
    if not here.is_dir():
        where = "is a file" if here == path and named is None else f"{here} is a file"
        raise ValueError(f"{shown}: {where}, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: {here} is not writable")


def check_out_file(path: Path, option: str) -> None:
    """Refuse `path` as a file to write: an existing folder, or a parent that cannot be a folder."""
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    check_out_dir(path.parent, option, named=path)
