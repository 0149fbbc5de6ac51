"""The smaller trust-model findings of issue 19 (9, 10, 11) and the deployed ClientApp's pin.

Finding 9: a round retried after a crash draws its devices afresh (the sampler is secret and keeps
no state), and every attempt that reached the key holder is charged. Finding 10: a real device's
stochastic-rounding coins come from an OS-seeded generator (a simulated one's from its seed).
Finding 11: a deployed device's public index is keyed by its node's secret, so store (user) names
cannot be tested against it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from inprocess_grid import InProcessGrid, device_pins

from fedchurn.client import deploy_client
from fedchurn.client.deploy_client import list_stores, node_secret
from fedchurn.client.store import EventStore
from fedchurn.server.app import Recovery
from fedchurn.server.checkpoint import Checkpoint
from fedchurn.server.deploy import population_stores
from fedchurn.server.keyholder import MaskSumRequest, SealedEntry
from fedchurn.server.strategy import make_strategy
from fedchurn.shared import wire
from fedchurn.shared.messages import K_KEY, PARAMS_KEY, TASK_RECORD, NodeReply, RoundTask
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig, round_seed

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _devices(msgs: list[Message]) -> set[int]:
    return {
        d
        for m in msgs
        for d in RoundTask.from_message(m, DEFAULT_SPEC.n_params, DEFAULT_SPEC.n_features).devices
    }


def test_a_retried_round_draws_afresh_and_every_attempt_that_reached_the_key_holder_is_charged(
    tmp_path: Path,
) -> None:
    nodes = [1, 2, 3]
    roster = [(nodes[d % 3], d) for d in range(300)]
    cfg = RunConfig(per_round=40, target_epsilon=4.0, run_name="retry", k_min=5)
    state_db = f"sqlite:///{tmp_path / 'state.sqlite'}"
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    first = make_strategy(cfg, roster)
    recovery = Recovery(cfg, state_db)
    recovery.attach(first)
    rng, opt = first.state()
    recovery.save(Checkpoint("retry", 0, init_params(0), "audit", rng, opt, roster=roster), None)
    drawn_before_crash = _devices(list(first.configure_train(1, start, ConfigRecord(), None)))  # type: ignore[arg-type]
    assert first.on_contact is not None
    first.on_contact()  # the key holder answered round 1's cohorts, then the aggregator died

    restarted = make_strategy(cfg, roster)
    again = Recovery(cfg, state_db)
    again.attach(restarted)
    assert again.resume(restarted) == 0
    assert restarted.secure is not None and restarted.secure.accountant.rounds == 1  # the crashed attempt
    redrawn = _devices(list(restarted.configure_train(1, start, ConfigRecord(), None)))  # type: ignore[arg-type]
    # under DP a round is a Poisson sample of rate 40 / 240: its size varies around 40
    assert all(10 <= len(d) <= cfg.round_cap() for d in (redrawn, drawn_before_crash))
    assert redrawn != drawn_before_crash, "the retried round released the same devices' updates again"


def _unmasked(kh: object, blob: bytes, params: object, seed: bytes, n: int) -> np.ndarray:
    """One device's quantised values, as key holder and aggregator together would see them (test only)."""
    from fedchurn.shared.protection import ProtectionParams

    assert isinstance(params, ProtectionParams)
    head = wire.Header.parse(blob)
    resp = kh.mask_sum(  # type: ignore[attr-defined]
        MaskSumRequest(
            head.round_id,
            head.cohort_id,
            head.model_version,
            seed,
            n,
            params,
            (SealedEntry("d", blob[20:100]),),
        )
    )
    m, bits = params.n_coords(n), params.ring_bits
    ring = (wire.unpack_bits(blob[100:], bits, m) - resp.mask_sum) % (1 << bits)
    return np.where(ring >= 1 << (bits - 1), ring.astype(np.int64) - (1 << bits), ring.astype(np.int64))


def test_a_deployed_device_draws_its_rounding_coins_from_the_os(tmp_path: Path) -> None:
    """The same update protected twice by a real device's path rounds differently (OS entropy:
    `DeviceSource.coins` is None for stores); by a simulated device with the same public seed,
    identically."""
    from fedchurn.client.deploy_client import StoreSource
    from fedchurn.client.protect import protect_batch
    from fedchurn.server.keyholder import KeyHolder
    from fedchurn.simulations.flower_client import SimulatedShard

    cfg = RunConfig(k_min=1)
    kh = KeyHolder.generate(k_min=1)
    n = init_params(0).size
    update = np.random.default_rng(1).normal(0, 0.01, (1, n)).astype(np.float32)
    seed = round_seed(cfg.seed, 1, 0)
    params = cfg.train_protection(0.0)

    def upload(cohort: int, rng: np.random.Generator | None) -> np.ndarray:
        (blob,) = protect_batch(update, params, kh.public(), 1, [cohort], 1, [seed], [rng])
        return _unmasked(kh, blob, params, seed, n)

    real = StoreSource()
    deployed = [upload(c, real.coins(cfg, 7, 1)) for c in (1, 2)]
    assert np.any(deployed[0] != deployed[1]), "rounding coins repeat: not from the OS"
    simulated = [upload(c, SimulatedShard().coins(cfg, 7, 1)) for c in (3, 4)]
    np.testing.assert_array_equal(simulated[0], simulated[1])


def test_a_deployed_device_index_is_keyed_by_its_node_secret(tmp_path: Path) -> None:
    dirs, _ = population_stores(tmp_path / "stores", 1, 6, days=20)
    index = list_stores(dirs[0])
    names = sorted(p.stem for p in index.values())
    assert len(index) == 6
    # 806c25c's index was a public hash of the store's name: anyone could test a guessed name.
    unkeyed = {
        int.from_bytes(hashlib.blake2b(f"fedchurn-store|{name}".encode(), digest_size=4).digest(), "little")
        & 0x7FFFFFFF
        for name in names
    }
    assert not unkeyed & set(index)
    secret = dirs[0] / deploy_client.NODE_SECRET_FILE
    assert len(node_secret(dirs[0])) == 32 and (secret.stat().st_mode & 0o777) == 0o600
    assert list_stores(dirs[0]) == index  # stable for this node
    secret.unlink()  # another node (another secret) gives the same users other indices
    assert not set(list_stores(dirs[0])) & set(index)


def test_a_deployed_node_refuses_a_key_holder_it_does_not_pin_before_opening_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = RunConfig(per_round=4, k_min=2, days=30)
    dirs, today = population_stores(tmp_path / "stores", 1, 5, days=30)
    roster = [(1, d) for d in list_stores(dirs[0])]
    strategy = make_strategy(cfg, roster)
    assert strategy.secure is not None
    node_config = {"store-dir": str(dirs[0]), "today": today, **device_pins(strategy)}
    grid = InProcessGrid(deploy_client.app, lambda node: node_config, cfg.to_flower(), run_id=5)
    start = ArrayRecord({PARAMS_KEY: Array(init_params(0))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord(), grid))  # type: ignore[arg-type]
    (reply,) = grid.send_and_receive(msgs)
    assert not reply.has_error(), grid.errors
    asked = RoundTask.from_message(msgs[0], DEFAULT_SPEC.n_params, DEFAULT_SPEC.n_features).devices
    assert NodeReply.from_message(reply).devices == asked

    opened: list[object] = []
    original = EventStore.__init__

    def spy(self: EventStore, *a: object, **k: object) -> None:
        opened.append(a[0] if a else k)
        original(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStore, "__init__", spy)
    msgs = list(strategy.configure_train(2, start, ConfigRecord(), grid))  # type: ignore[arg-type]
    evil = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    msgs[0].content.config_records[TASK_RECORD][K_KEY] = evil
    (reply,) = grid.send_and_receive(msgs)
    assert reply.has_error() and "does not trust" in (reply.error.reason or "")
    assert opened == [], "a store was opened before the key was checked"


def test_a_devices_error_message_never_reaches_the_public_audit_log(tmp_path: Path) -> None:
    """A device's exception text may name it ("device 4711 already uploaded…"): the public audit log
    keeps only the error's class, counted."""
    from fedchurn.server.audit import AuditStore
    from fedchurn.server.round_report import RoundReport
    from fedchurn.server.run_audit import RunAudit

    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    cfg = RunConfig()
    audit = RunAudit(cfg, url, cfg.train_protection(), {"accountant": "none", "delta": cfg.delta})
    flower_reason = (
        "client error: <class 'fedchurn.x.AlreadyEvaluatedError'>:<'device 4711 already uploaded'>"
    )
    record = {
        "round": 1,
        "sampled": 3,
        "received": 1,
        "refused": [
            {"device": "node 9", "reason": flower_reason},
            {"device": "9/4711", "reason": flower_reason},
        ],
        "bytes_received": 10,
        "protection": "secagg",
        "trained": 1,
        "started": 0.0,
        "finished": 1.0,
        "elapsed": 1.0,
    }
    audit.round(RoundReport.from_json(record))
    (row,) = AuditStore(url).list_rounds(audit.run_id).items
    assert row.refused == [{"reason": "client error: AlreadyEvaluatedError", "count": 2}]
    assert "4711" not in str(row)
