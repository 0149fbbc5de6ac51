"""The server optimiser's settings from the run config reach Flower's FedAdam and shape its step."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedchurn.client.protect import protect_batch, selected_clipped
from fedchurn.server.strategy import ChurnFedAdam, make_strategy
from fedchurn.shared.messages import PARAMS_KEY, NodeReply, RoundTask
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.protection import select_coordinates
from fedchurn.shared.run_config import RunConfig

NODES = [11, 12, 13, 14]  # four phones: each node a list of one device
ROSTER = [(node, node * 100) for node in NODES]


pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _first_step(cfg: RunConfig, start: np.ndarray, new: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Round 1 with each phone's update set to `new[i] - start`, uploaded as the plaintext baseline
    uploads it (the real reply format, without training). Returns the new global parameters and
    the mean of what the phones uploaded (the round's coordinates, clipped; zero elsewhere)."""
    strategy = make_strategy(cfg, ROSTER)
    msgs = list(strategy.configure_train(1, ArrayRecord({PARAMS_KEY: Array(start)}), ConfigRecord(), None))  # type: ignore[arg-type]
    params = strategy.secure.train_params
    replies, uploaded = [], []
    for msg in msgs:
        task = RoundTask.from_message(msg, DEFAULT_SPEC.n_params, DEFAULT_SPEC.n_features)
        (device,) = task.devices
        delta = (new[NODES.index(device // 100)] - start)[None, :]
        seeds = task.bound_round_seeds(cfg.digest())  # what a device protects under (model, settings)
        sent = np.zeros(start.size)
        sent[select_coordinates(params, seeds[0], start.size)] = selected_clipped(delta[0], params, seeds[0])
        uploaded.append(sent)
        blobs = protect_batch(
            delta, params, None, task.round_id, task.cohorts, task.model_version, seeds, [None]
        )
        replies.append(NodeReply(task.devices, tuple(blobs)).to_message(msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return np.asarray(arrays[PARAMS_KEY].numpy(), dtype=np.float64), np.mean(uploaded, axis=0)


@pytest.mark.parametrize(("beta2", "tau"), [(0.99, 1e-3), (0.999, 1e-6)])
def test_fedadam_step_follows_the_configured_beta2_and_tau(beta2: float, tau: float) -> None:
    cfg = RunConfig(
        devices=20,
        per_round=len(NODES),
        protection="plaintext",
        k_min=2,
        eval_fraction=0.0,
        server_lr=0.01,
        server_beta2=beta2,
        server_tau=tau,
    )
    start = init_params(0)
    rng = np.random.default_rng(1)
    new = [(start + rng.normal(0, 1e-2, start.size)).astype(np.float32) for _ in NODES]
    got, delta = _first_step(cfg, start, new)  # equal weights: the plain mean of the uploads
    assert np.count_nonzero(delta) > start.size // 10
    m, v = 0.1 * delta, (1 - beta2) * delta**2
    eta = 0.01 * np.sqrt(1 - beta2**2) / (1 - 0.9**2)  # Flower's bias-corrected step, round 1
    expected = start + eta * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(got - start, expected - start, rtol=2e-3, atol=1e-5)


def test_a_cosine_schedule_sets_flowers_step_round_by_round() -> None:
    cfg = RunConfig(
        devices=20,
        per_round=len(NODES),
        protection="plaintext",
        server_lr=0.04,
        num_server_rounds=9,
        server_lr_schedule="constant",
    )
    cosine = RunConfig(**{**cfg.__dict__, "server_lr_schedule": "cosine"})
    etas = [cosine.server_lr_at(r) for r in range(1, 10)]
    assert etas[0] == pytest.approx(0.04) and etas[-1] == pytest.approx(0.002)
    assert etas[4] == pytest.approx(0.04 * (0.05 + 0.95 / 2)) and etas == sorted(etas, reverse=True)
    assert {cfg.server_lr_at(r) for r in range(1, 10)} == {0.04}
    with pytest.raises(ValueError, match="constant or cosine"):
        RunConfig(server_lr_schedule="linear").server_lr_at(1)
    strategy = make_strategy(cosine, ROSTER)
    assert isinstance(strategy, ChurnFedAdam)
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    for r in (1, 5, 9):
        list(strategy.configure_train(r, start, ConfigRecord(), None))  # type: ignore[arg-type]
        assert strategy.eta == pytest.approx(etas[r - 1])  # what Flower's aggregate_train multiplies by
