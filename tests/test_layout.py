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
