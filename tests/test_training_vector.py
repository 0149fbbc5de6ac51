"""The committed local-training vector still describes what a device computes
(tests/vectors/training/one_device.json; a port checks the same numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedchurn.client.training import DeviceRows, TrainConfig, local_train, train_devices

VECTOR = json.loads((Path(__file__).parent / "vectors" / "training" / "one_device.json").read_text())
CFG = TrainConfig(**VECTOR["config"])
START = np.asarray(VECTOR["initial_params_float32"], dtype=np.float32)
DEVICE = DeviceRows(
    x=np.asarray(VECTOR["features_float32"], dtype=np.float32),
    time=np.asarray(VECTOR["time"], dtype=np.int64),
    event=np.asarray(VECTOR["event"], dtype=bool),
)
WANT = np.asarray(VECTOR["params_after_float32"], dtype=np.float32)


def test_the_epoch_orders_are_numpys_permutations_of_the_seed() -> None:
    gen = np.random.default_rng(VECTOR["seed"])
    n = VECTOR["n_examples"]
    assert [gen.permutation(n).tolist() for _ in range(CFG.epochs)] == VECTOR["epoch_orders"]


def test_a_device_alone_reproduces_the_vector() -> None:
    res = local_train(START, DEVICE.x, DEVICE.time, DEVICE.event, CFG, VECTOR["seed"])
    np.testing.assert_allclose(res.params, WANT, rtol=0, atol=1e-6)
    assert not np.array_equal(WANT, START)  # training moved the parameters
    assert res.n_examples == VECTOR["n_examples"] == min(len(DEVICE.time), CFG.max_examples)
    assert np.isclose(res.loss, VECTOR["loss"], rtol=1e-6)


def test_the_vector_device_in_a_batch_reproduces_the_vector() -> None:
    gen = np.random.default_rng(3)
    others = [
        DeviceRows(
            x=(gen.random((k, DEVICE.x.shape[1])) * 10).astype(np.float32),
            time=gen.integers(1, 15, k).astype(np.int64),
            event=gen.random(k) < 0.5,
        )
        for k in (0, 9, 1)
    ]
    res = train_devices(START, [others[0], DEVICE, *others[1:]], CFG, [1, VECTOR["seed"], 2, 3])
    np.testing.assert_allclose(res.params[1], WANT, rtol=0, atol=1e-5)
