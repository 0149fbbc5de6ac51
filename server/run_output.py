"""What a federated run leaves behind: config, per-round records, checkpoints, the final model.

Files in the run folder:
  config.json            the run configuration and the model spec
  rounds.jsonl           one JSON object per finished round (the CLI tails it for progress)
  checkpoints/round_NNN.npy  the global model after each round
  model/params.npy, model/model.json   the final model (what `fedchurn score --model` reads)
  federated.json         initial and final evaluation, per-round records
  progress.json          the round in flight and its phase
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.server.round_report import RoundReport
from fedchurn.shared.model_format import DEFAULT_SPEC, HIGH_RISK, MEDIUM_RISK, ModelSpec

MODEL_FORMAT_VERSION = 1


class RunOutput:
    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = []

    def write_json(self, name: str, doc: Any) -> Path:
        path = self.dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        tmp.replace(path)
        return path

    def progress(self, server_round: int, phase: str) -> None:
        """`progress.json`: the round in flight and its phase (for operators, and for tests that
        must act at a known point of a run without reading its databases)."""
        self.write_json("progress.json", {"round": server_round, "phase": phase, "at": time.time()})

    def record_round(self, report: RoundReport, params: np.ndarray) -> None:
        """The round's model (as published) and its record, in `rounds.jsonl` and `federated.json`."""
        np.save(self.dir / "checkpoints" / f"round_{report.round:03d}.npy", params.astype(np.float32))
        record = report.to_json()
        self.rounds.append(record)
        with (self.dir / "rounds.jsonl").open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def write_model(self, params: np.ndarray, version: int, spec: ModelSpec = DEFAULT_SPEC) -> Path:
        d = self.dir / "model"
        d.mkdir(exist_ok=True)
        np.save(d / "params.npy", params.astype(np.float32))
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "model_version": version,
            "spec": spec.to_dict(),
            "high_risk": HIGH_RISK,
            "medium_risk": MEDIUM_RISK,
            "written_at": time.time(),
        }
        (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        return d


def load_model(model_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a model folder (a run folder or its `model/` subfolder)."""
    if not model_dir.is_dir():
        what = "does not exist" if not model_dir.exists() else "is a file, not a run folder"
        raise FileNotFoundError(f"{model_dir} {what}")
    d = model_dir / "model" if (model_dir / "model" / "model.json").exists() else model_dir
    meta_path = d / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{model_dir}: no model.json (is this a run folder?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not a model description (JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != MODEL_FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: model format {found}, expected {MODEL_FORMAT_VERSION}")
    missing = [k for k in ("model_version", "spec", "high_risk", "medium_risk") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing {', '.join(missing)}")
    if not isinstance(meta["spec"], dict):
        raise ValueError(f"{meta_path}: spec must be an object, got {type(meta['spec']).__name__}")
    high, medium = meta["high_risk"], meta["medium_risk"]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in (high, medium)
    ):
        raise ValueError(f"{meta_path}: high_risk and medium_risk must be numbers in [0, 1]")
    if medium > high:  # a device would tier a lower probability "high" than a higher one
        raise ValueError(f"{meta_path}: medium_risk {medium} is above high_risk {high}")
    try:
        params = np.load(d / "params.npy", allow_pickle=False)
        spec = ModelSpec.from_dict(meta["spec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{d}: not a readable model ({type(e).__name__}: {e})") from None
    if params.dtype.kind not in "fiu":
        raise ValueError(f"{d}/params.npy: holds {params.dtype} values, not numbers")
    if params.shape != (spec.n_params,):
        raise ValueError(f"{d}: params.npy has shape {params.shape}, the spec says {spec.n_params}")
    if not np.all(np.isfinite(params)):
        # A device would score NaN (and an ONNX export would carry it): refuse it by name.
        bad = int(np.count_nonzero(~np.isfinite(params)))
        raise ValueError(f"{d}/params.npy: {bad} of {params.size} parameters are not finite numbers")
    return params, meta
