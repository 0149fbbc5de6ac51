"""Checks of the paths a command will write, made before any work starts.

A command that writes a folder or a file learns only at the end, after minutes of work, that the
path names an existing file, lies below one, is a folder where a file was asked for, is a link
to nothing or a device, or cannot be a name at all; these checks name the option and the path at
once instead (reviews 19 and 21).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_out_dir", "check_out_file"]


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (a link counts, even a link to nothing)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path.cwd()  # pragma: no cover - a relative path's parents end at "."


def check_out_dir(path: Path, option: str, named: Path | None = None) -> None:
    """Refuse `path` as a folder to create or fill: an existing file, a path below a file, a link
    to nothing, a name the file system refuses, or a folder this process may not write.
    ValueError naming `option` and `named` (default `path`)."""
    shown = f"{option} {named if named is not None else path}"
    try:
        here = _nearest_existing(path)
        if here.is_symlink() and not here.exists():
            raise ValueError(f"{shown}: {here} is a link to {os.readlink(here)}, which does not exist")
        if not here.is_dir():
            where = "is a file" if here == path and named is None else f"{here} is a file"
            raise ValueError(f"{shown}: {where}, not a folder")
        if not os.access(here, os.W_OK | os.X_OK):
            raise ValueError(f"{shown}: {here} is not writable")
        longest = os.pathconf(here, "PC_NAME_MAX")
        for part in path.relative_to(here).parts if path != here else ():
            if len(os.fsencode(part)) > longest:
                raise ValueError(f"{shown}: a name of {len(os.fsencode(part))} bytes; at most {longest}")
    except OSError as e:  # e.g. a name longer than the file system allows
        raise ValueError(f"{shown}: {e.strerror or e}") from None


def check_out_file(path: Path, option: str) -> None:
    """Refuse `path` as a file to write: an existing folder, link or device (a file written
    beside it and renamed onto it would replace it), or a parent that cannot be a folder."""
    try:
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a folder; give a file name")
        if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
            raise ValueError(f"{option} {path}: is not a regular file (a link or a device); give a file name")
    except OSError as e:
        raise ValueError(f"{option} {path}: {e.strerror or e}") from None
    check_out_dir(path.parent, option, named=path)
