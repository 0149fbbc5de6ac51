"""The protection benchmark runs end to end and reports every row the issue asks for."""

from __future__ import annotations

import warnings

from fedchurn.server.secure_sum import PlaintextModeWarning
from fedchurn.simulations.protection_bench import bench_protection

ROWS = ("fedchurn_default", "fedchurn_ckks", "fedchurn_plaintext", "flower_plain_fedavg", "flower_secaggplus")


def test_bench_small() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlaintextModeWarning)
        out = bench_protection(n_updates=20)
    for row in ROWS:
        for key in ("upload_bytes", "protect_update_ms", "aggregate_1000_s", "label"):
            assert key in out[row], (row, key)
    assert out["fedchurn_default"]["upload_bytes"] == 780
    assert out["fedchurn_default"]["upload_bytes"] < out["flower_plain_fedavg"]["upload_bytes"]
    assert "NOT PRIVATE" in out["fedchurn_plaintext"]["label"]
    assert out["flower_secaggplus"]["masked_vector_bytes"] > 8 * 2286
