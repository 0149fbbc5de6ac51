"""The model as ONNX: onnxruntime agrees with the numpy forward pass (and torch) to 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fedchurn.server.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAMES, export_onnx, export_run_model
from fedchurn.server.run_output import RunOutput
from fedchurn.shared.feature_spec import FEATURE_NAMES
from fedchurn.shared.model import ChurnNet
from fedchurn.shared.model_format import churn_probability, hazards, init_params, survival

VEC = Path(__file__).parent / "vectors" / "policy"


def _params() -> np.ndarray:
    return np.array(json.loads((VEC / "model_params.json").read_text())["params"], dtype=np.float32)


def _inputs() -> np.ndarray:
    doc = json.loads((VEC / "history.json").read_text())
    real = np.array([d["features"][:127] for d in doc["expected"]["days"]], dtype=np.float32)
    rand = np.abs(np.random.default_rng(5).normal(0, 3, (64, 127))).astype(np.float32)
    return np.concatenate([real, rand])


def test_onnx_runtime_equals_numpy_forward(tmp_path: Path) -> None:
    for params in (
        _params(),
        init_params(1) + np.random.default_rng(0).normal(0, 0.5, 2286).astype(np.float32),
    ):
        path = export_onnx(params, tmp_path / "m.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = _inputs()
        h, s, p = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        want_h = hazards(params, x)
        np.testing.assert_allclose(h, want_h, rtol=0, atol=1e-5)
        np.testing.assert_allclose(s, survival(want_h), rtol=0, atol=1e-5)
        np.testing.assert_allclose(p[:, 0], churn_probability(params, x), rtol=0, atol=1e-5)
        one = sess.run(["churn_probability"], {INPUT_NAME: x[:1]})[0]  # any batch size
        assert one.shape == (1, 1)


def test_onnx_equals_torch_and_declares_its_interface(tmp_path: Path) -> None:
    params = _params()
    path = export_onnx(params, tmp_path / "m.onnx", model_version=4)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17 and OPSET >= 17
    assert [i.name for i in model.graph.input] == ["features"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 127
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["fedchurn.feature_names"]) == list(FEATURE_NAMES[:127])
    assert meta["fedchurn.model_version"] == "4" and float(meta["fedchurn.high_risk"]) == 0.78
    net = ChurnNet()
    net.set_vector(params)
    x = _inputs()
    with torch.no_grad():
        h_torch = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    h_onnx = ort.InferenceSession(str(path)).run(["hazards"], {"features": x})[0]
    np.testing.assert_allclose(h_onnx, h_torch, rtol=0, atol=1e-5)
    assert (
        export_onnx(params, tmp_path / "again.onnx").read_bytes()
        == export_onnx(params, tmp_path / "m2.onnx").read_bytes()
    )  # deterministic bytes


def test_export_a_run_folder(tmp_path: Path) -> None:
    params = _params()
    RunOutput(tmp_path / "run").write_model(params, version=9)
    out = export_run_model(tmp_path / "run", tmp_path / "out" / "model.onnx")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["fedchurn.model_version"] == "9"
