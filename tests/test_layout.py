"""The direction of the data flow is a rule of the code: the device never imports the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> list[tuple[Path, str]]:
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(path, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.append((path, node.module))
    return out


def test_client_never_imports_server_or_simulations() -> None:
    bad = [
        (p.name, m)
        for p, m in _imports("client")
        if m.startswith(("fedchurn.server", "fedchurn.simulations"))
    ]
    assert not bad


def test_shared_imports_only_shared() -> None:
    bad = [
        (p.name, m)
        for p, m in _imports("shared")
        if m.startswith("fedchurn.") and not m.startswith("fedchurn.shared")
    ]
    assert not bad


def test_feature_path_needs_numpy_alone() -> None:
    code = (
        "import sys; import fedchurn.client.pipeline, fedchurn.client.signals, fedchurn.client.store;"
        "heavy = {'torch', 'flwr', 'tenseal', 'pyarrow', 'fastapi', 'sqlalchemy'} & set(sys.modules);"
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _names_compared_with_strings(folder: str, names: set[str]) -> list[str]:
    """`x.mode == "secagg"`-style compares (either side, ==, !=, in) of the given names in a folder."""

    def named(node: ast.expr) -> str | None:
        if isinstance(node, ast.Attribute):
            return node.attr
        return node.id if isinstance(node, ast.Name) else None

    def literal(node: ast.expr) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str)

    found = []
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any(named(s) in names for s in sides) and any(literal(s) for s in sides):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_protection_schemes_are_objects_not_string_compares() -> None:
    """Which scheme a party runs is looked up (`Scheme`, `ENCODERS`, `SCHEME_SUMS`), never decided by
    comparing a mode name: a new scheme cannot be half-handled by a forgotten branch."""
    names = {"mode", "protection", "protection_mode", "sampling"}
    found = [f for d in ("client", "server", "shared") for f in _names_compared_with_strings(d, names)]
    assert not found


def test_no_line_compares_a_mode_or_a_sampling_with_equals() -> None:
    """Issue 24's own check, as text: `grep -c "sampling ==" server/` and `grep -c "mode ==" server/
    client/` find nothing (a column filter reads `filter_by(protection_mode=...)`)."""
    lines = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder, needles in (("server", ("sampling ==", "mode ==")), ("client", ("mode ==",)))
        for path in (ROOT / folder).rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if any(n in line for n in needles)
    ]
    assert not lines
