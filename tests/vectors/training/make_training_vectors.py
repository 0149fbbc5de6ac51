"""Regenerate the local-training vector: `python tests/vectors/training/make_training_vectors.py`.

Run it only when the training semantics change on purpose (client/training.py's docstring is the
specification). The vector is one device's local training from fixed, documented inputs: the
initial parameters of `init_params(0)`, seven labelled rows, two epochs of minibatches of three
with `max_examples` 5 (so the oldest two rows are dropped and the last minibatch of each epoch is
short). A port reproduces `epoch_orders` with NumPy's generator (or reads them from the file and
checks its own steps), then every parameter after training within 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.client.training import TrainConfig, local_train
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.model_format import DEFAULT_SPEC, INPUT_SCALE, init_params

HERE = Path(__file__).parent
CONFIG = TrainConfig(epochs=2, batch_size=3, lr=0.3, max_examples=5)
SEED = 20261206
ROWS = 7


def case() -> dict[str, Any]:
    gen = np.random.default_rng(7)
    x = (gen.random((ROWS, N_FEATURES)) * np.asarray(INPUT_SCALE) * 1.5).astype(np.float32)
    time = gen.integers(1, DEFAULT_SPEC.outputs + 1, ROWS).astype(np.int64)
    event = gen.random(ROWS) < 0.5
    start = init_params(0).astype(np.float32)
    res = local_train(start, x, time, event, CONFIG, SEED)
    n = min(ROWS, CONFIG.max_examples)
    order_gen = np.random.default_rng(SEED)
    orders = [order_gen.permutation(n).tolist() for _ in range(CONFIG.epochs)]
    return {
        "description": "one device's local training (client/training.py), batch of one",
        "config": {
            "epochs": CONFIG.epochs,
            "batch_size": CONFIG.batch_size,
            "lr": CONFIG.lr,
            "max_examples": CONFIG.max_examples,
        },
        "seed": SEED,
        "initial_params_float32": [float(v) for v in start],
        "features_float32": [[float(v) for v in row] for row in x],
        "time": time.tolist(),
        "event": [bool(v) for v in event],
        "rows_used": f"the last {n} rows (indices {ROWS - n}..{ROWS - 1})",
        "epoch_orders": orders,
        "params_after_float32": [float(v) for v in res.params],
        "n_examples": res.n_examples,
        "loss": res.loss,
    }


def main() -> None:
    (HERE / "one_device.json").write_text(json.dumps(case(), indent=1) + "\n")


if __name__ == "__main__":
    main()
