"""`fedchurn.client` scores, explains and runs the policy with numpy alone, in a clean environment.

A fresh virtual environment gets numpy and nothing else (no torch, cryptography, pyarrow, the
package itself is not installed); a copy of `client/` and `shared/` laid out as `fedchurn.client`
and `fedchurn.shared` is put on its path, and the device path runs end to end there. Also: the
numpy scoring equals the torch model to 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from fedchurn.client.scoring import score_features
from fedchurn.shared.model import ChurnNet

ROOT = Path(__file__).resolve().parents[1]
VEC = ROOT / "tests" / "vectors" / "policy"

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys, tempfile
    from pathlib import Path
    import numpy as np
    for heavy in ("torch", "cryptography", "pyarrow", "flwr", "tenseal", "fastapi"):
        assert importlib.util.find_spec(heavy) is None, heavy + " is installed in the clean venv"
    import fedchurn.client.scoring, fedchurn.client.signals, fedchurn.client.features
    from fedchurn.client.store import EventStore
    from fedchurn.client.policy import inputs_from_events, run_policy
    from fedchurn.client.decision_log import DecisionLog, PolicyEngine
    from fedchurn.client.explain import explain_history
    from fedchurn.client.pipeline import device_features
    from fedchurn.client.user_view import export_json, erase, list_by_category
    from fedchurn.shared.events import Event
    vec = Path(sys.argv[1])
    params = np.array(json.loads((vec / "model_params.json").read_text())["params"], dtype=np.float32)
    doc = json.loads((vec / "history.json").read_text())
    events = [
        Event(e["ts"], e["tz_offset_min"], e["category"], e["action"], e["value"]) for e in doc["events"]
    ]
    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "d.sqlite") as store:
        store.append(events)
        ev = store.events()
        score = fedchurn.client.scoring.score_device(params, ev)
        consent = {int(k): v for k, v in doc["consent"].items()}
        decisions = run_policy(inputs_from_events(params, ev, consent))
        with DecisionLog(store.path) as log:
            PolicyEngine(log).decide(inputs_from_events(params, ev)[-1])
        top = explain_history(params, device_features(ev).features[:41])
        n_export = sum(len(c["events"]) for c in export_json(store)["categories"])
        erased = erase(store, Path(tmp) / "pending")
        listed = sum(r["events"] for r in list_by_category(store))
    heavy = sorted({"torch", "cryptography", "pyarrow"} & set(sys.modules))
    print(json.dumps({
        "probability": score["probability"], "tier": score["tier"],
        "decisions": [d.to_dict() for d in decisions], "explain": [c.category for c in top],
        "exported": n_export, "erased": erased, "listed_after": listed, "heavy": heavy,
    }))
    """
)


def test_numpy_scoring_equals_torch() -> None:
    params = np.array(json.loads((VEC / "model_params.json").read_text())["params"], dtype=np.float32)
    doc = json.loads((VEC / "history.json").read_text())
    x = np.array([d["features"] for d in doc["expected"]["days"]], dtype=np.float32)
    net = ChurnNet()
    net.set_vector(params)
    with torch.no_grad():
        s_torch = torch.cumprod(1 - torch.sigmoid(net(torch.from_numpy(x))), dim=-1).numpy()
    for k in range(len(x)):
        got = score_features(params, x[k])
        np.testing.assert_allclose(got["survival"], s_torch[k], rtol=0, atol=1e-5)
        assert abs(got["probability"] - (1 - s_torch[k, -1])) < 1e-5


def test_client_runs_with_numpy_alone_in_a_clean_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # numpy only, linked from the project's environment (offline, and the same version).
    src = Path(np.__file__).parent
    (site / "numpy").symlink_to(src)
    libs = src.parent / "numpy.libs"
    if libs.exists():
        (site / "numpy.libs").symlink_to(libs)
    pkg = tmp_path / "src" / "fedchurn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for part in ("client", "shared"):
        shutil.copytree(ROOT / part, pkg / part, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run(
        [str(py), "-c", SCRIPT, str(VEC)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["heavy"] == []
    want = json.loads((VEC / "history.json").read_text())["expected"]
    assert abs(out["probability"] - want["days"][-1]["probability"]) < 1e-6
    strip = [{k: v for k, v in d.items() if k != "probability"} for d in out["decisions"]]
    assert strip == [{k: v for k, v in d["decision"].items() if k != "probability"} for d in want["days"]]
    assert out["explain"] and out["exported"] > 0
    assert out["erased"]["events"] == out["exported"] and out["erased"]["decisions"] == 1
    assert out["listed_after"] == 0
