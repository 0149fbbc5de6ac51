"""Export the churn model as ONNX, the format mobile teams run with ONNX Runtime Mobile.

The graph is written directly with `onnx.helper` from the flat parameter vector: the bytes depend
only on the parameters (no tracing, no torch exporter, whose default path needs onnxscript and
whose TorchScript path is deprecated), and it uses only operators every runtime has (opset 17:
Div, Gemm, Relu, Sigmoid, Softplus, MatMul, Exp, Gather, Sub).

Input `features` float32 [batch, n_features] (the first n_features of a device's raw feature vector:
127 for the default model; the input scaling is baked in).
Outputs `hazards` [batch, 14], `survival` S(t) [batch, 14] and `churn_probability` [batch, 1].
S(t) is exp of a cumulative sum of log(1 − h) = −softplus(z), taken as a product with an
upper-triangular matrix of ones, which is numerically safer than multiplying the (1 − h) terms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedchurn.shared.feature_spec import FEATURE_NAMES
from fedchurn.shared.model_format import (
    DEFAULT_SPEC,
    HIGH_RISK,
    MEDIUM_RISK,
    ModelSpec,
    unflatten,
)

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: loads in older mobile runtimes too
INPUT_NAME = "features"
OUTPUT_NAMES = ("hazards", "survival", "churn_probability")


def build_model(
    params: np.ndarray, spec: ModelSpec = DEFAULT_SPEC, model_version: int = 0
) -> onnx.ModelProto:
    w1, b1, w2, b2 = unflatten(params, spec)
    H = spec.outputs
    inits = [
        numpy_helper.from_array(spec.input_scale.astype(np.float32), "input_scale"),
        numpy_helper.from_array(np.ascontiguousarray(w1, dtype=np.float32), "W1"),
        numpy_helper.from_array(np.ascontiguousarray(b1, dtype=np.float32), "b1"),
        numpy_helper.from_array(np.ascontiguousarray(w2, dtype=np.float32), "W2"),
        numpy_helper.from_array(np.ascontiguousarray(b2, dtype=np.float32), "b2"),
        numpy_helper.from_array(np.triu(np.ones((H, H), dtype=np.float32)), "cumsum_matrix"),
        numpy_helper.from_array(np.array([H - 1], dtype=np.int64), "last_day"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Div", [INPUT_NAME, "input_scale"], ["x_scaled"]),
        helper.make_node("Gemm", ["x_scaled", "W1", "b1"], ["pre_hidden"], transB=1),
        helper.make_node("Relu", ["pre_hidden"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logits"], transB=1),
        helper.make_node("Sigmoid", ["logits"], ["hazards"]),
        helper.make_node("Softplus", ["logits"], ["neg_log_1m_h"]),  # −log(1 − h)
        helper.make_node("MatMul", ["neg_log_1m_h", "cumsum_matrix"], ["neg_log_s"]),
        helper.make_node("Neg", ["neg_log_s"], ["log_s"]),
        helper.make_node("Exp", ["log_s"], ["survival"]),
        helper.make_node("Gather", ["survival", "last_day"], ["s_last"], axis=1),
        helper.make_node("Sub", ["one", "s_last"], ["churn_probability"]),
    ]
    batch = "batch"
    graph = helper.make_graph(
        nodes,
        "fedchurn_churn_net",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, spec.n_features])],
        [
            helper.make_tensor_value_info("hazards", TensorProto.FLOAT, [batch, H]),
            helper.make_tensor_value_info("survival", TensorProto.FLOAT, [batch, H]),
            helper.make_tensor_value_info("churn_probability", TensorProto.FLOAT, [batch, 1]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="fedchurn",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="fedchurn discrete-time survival churn model: raw features -> hazards, S(t), P(churn)",
    )
    model.ir_version = IR_VERSION
    meta = {
        "fedchurn.model_version": str(model_version),
        "fedchurn.spec": json.dumps(spec.to_dict()),
        "fedchurn.high_risk": repr(HIGH_RISK),
        "fedchurn.medium_risk": repr(MEDIUM_RISK),
        "fedchurn.feature_names": json.dumps(list(FEATURE_NAMES[: spec.n_features])),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(params: np.ndarray, path: Path, model_version: int = 0) -> Path:
    """Write the model with these parameters to `path` (.onnx); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the .onnx file's name")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(np.asarray(params, dtype=np.float32), model_version=model_version)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_bytes(model.SerializeToString())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # written and moved, or a failure left it half-written
    return path


def export_run_model(model_dir: Path, out: Path) -> Path:
    """`fedchurn export-onnx --model RUN_DIR --out model.onnx`: a run's final model to ONNX."""
    from fedchurn.server.run_output import load_model

    params, meta = load_model(Path(model_dir))
    return export_onnx(params, out, model_version=int(meta.get("model_version", 0)))
