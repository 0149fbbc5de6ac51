"""Attacks on the protection, each played through the real code path (issue 19).

Each test plays the attacker the review described: the aggregator (the real strategy's messages,
delivered to the real ClientApp by `InProcessGrid`, then rewritten as a malicious aggregator
would), the key holder (with exactly what it receives), or a malicious device (a valid upload built
by hand). Each one succeeded on 806c25c: the version of this file in commit da59bbb, written
against that protocol, fails there because the attack succeeds (docs/privacy.md quotes what the
attacker got). This version speaks the one-message-per-node protocol of issue 20.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from inprocess_grid import InProcessGrid, device_pins, simulation_grid

from fedchurn.server import keyholder as keyholder_module
from fedchurn.server.sampling import simulation_roster
from fedchurn.server.strategy import EVAL_COHORTS, ChurnFedAvg, make_strategy
from fedchurn.shared import ckks_release, wire
from fedchurn.shared.evaluation import histogram_length
from fedchurn.shared.messages import (
    K_BLOBS,
    K_KEY,
    PARAMS_KEY,
    REPLY_RECORD,
    TASK_RECORD,
    NodeReply,
    Purpose,
    RoundTask,
)
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.protection import ProtectionParams, round_seed_bytes
from fedchurn.shared.run_config import RunConfig, is_eval_device
from fedchurn.simulations.flower_client import app as simulated_node

pytestmark = pytest.mark.usefixtures("serverapp_identity")

NODES = list(range(101, 104))  # 3 simulation nodes, each a shard of the population
N_PARAMS = DEFAULT_SPEC.n_params
ROUND_SEED = bytes(range(32))  # a public round seed for cohorts the tests build themselves
# One cohort of 12 from 40 devices, sampled from the seed (so every node gets a device).
ONE_COHORT = RunConfig(
    devices=40, per_round=12, cohort_size=12, k_min=5, strategy="fedavg", days=60, sampling_source="seeded"
)


def _raw(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _strategy(cfg: RunConfig) -> ChurnFedAvg:
    return make_strategy(cfg, simulation_roster(NODES, cfg.devices))


def _grid(strategy: ChurnFedAvg, run_id: int) -> InProcessGrid:
    return simulation_grid(strategy, NODES, run_id)


def _arrays(seed: int = 0) -> ArrayRecord:
    return ArrayRecord({PARAMS_KEY: Array(init_params(seed))})


def _task(msg: Message) -> RoundTask:
    return RoundTask.from_message(msg, N_PARAMS, DEFAULT_SPEC.n_features)


def _signed(ring: np.ndarray, bits: int) -> np.ndarray:
    v = ring.astype(np.int64)
    return v - np.where(v >= 1 << (bits - 1), 1 << bits, 0)


def _pub(kh: Any) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(kh.public_key())


# --- finding 1: the aggregator names its own sealing key ---------------------------------------


def test_attack_aggregator_substitutes_its_own_sealing_key() -> None:
    """The aggregator puts its own X25519 key in the training task. The device must refuse before
    training; on 806c25c it sealed its mask seed to that key, and the aggregator read every
    coordinate of the quantised update."""
    cfg = ONE_COHORT
    strategy = _strategy(cfg)
    grid = _grid(strategy, run_id=11)
    evil = X25519PrivateKey.generate()

    def substitute(msg: Message) -> Message:
        msg.content.config_records[TASK_RECORD][K_KEY] = _raw(evil.public_key())
        return msg

    grid.on_message = substitute
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs)
    for msg, reply in zip(msgs, replies, strict=True):
        if reply.has_error():
            continue
        task, got = _task(msg), NodeReply.from_message(reply)
        params = cfg.train_protection(task.noise_multiplier)
        for device, blob in zip(got.devices, got.blobs, strict=True):
            seed = task.round_seeds[task.devices.index(device)]
            head, sealed, payload = blob[: wire.HEADER_LEN], blob[20:100], blob[100:]
            info = wire.seal_info(head, params.config_digest(seed, N_PARAMS))
            mask_seed = wire.SEAL_SUITE.decrypt(sealed, evil, info=info)
            m, bits = params.n_coords(N_PARAMS), params.ring_bits
            q = _signed(
                (wire.unpack_bits(payload, bits, m) - wire.mask_stream(mask_seed, m, bits)) % (1 << bits),
                bits,
            )
            pytest.fail(
                f"the aggregator opened device {device}'s seal with its own key and read its quantised "
                f"update: {int(np.count_nonzero(q))} non-zero of {m} coordinates"
            )
    assert len(grid.errors) == len(msgs)
    assert all("UntrustedKeyHolderError" in e and "does not trust" in e for e in grid.errors), grid.errors[:2]


def test_attack_aggregator_substitutes_its_own_ckks_context() -> None:
    """CKKS: the aggregator sends its own public context (and keeps the matching secret key). The
    device must refuse it (its SHA-256 is not the pinned one); on 806c25c it encrypted to it."""
    import tenseal as ts

    cfg = RunConfig(
        devices=40, per_round=12, cohort_size=12, k_min=5, strategy="fedavg", days=60, protection="ckks"
    )
    strategy = _strategy(cfg)
    grid = _grid(strategy, run_id=12)
    evil_ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 49])
    evil_ctx.global_scale = 2.0**40
    public = evil_ctx.copy()
    public.make_context_public()
    evil_public = public.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )

    def substitute(msg: Message) -> Message:
        msg.content.config_records[TASK_RECORD]["keyholder-ckks-context"] = evil_public
        return msg

    grid.on_message = substitute
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))[:1]  # type: ignore[arg-type]
    for reply in grid.send_and_receive(msgs):
        if not reply.has_error():
            got = NodeReply.from_message(reply)
            body = got.blobs[0][wire.HEADER_LEN + wire.SEAL_LEN :]
            values = ts.ckks_vector_from(evil_ctx, wire.parse_ckks_body(body)[0]).decrypt()
            pytest.fail(f"the aggregator decrypted device {got.devices[0]}'s update with its own context")
            del values
    assert grid.errors and all("UntrustedKeyHolderError" in e for e in grid.errors), grid.errors[:2]


# --- finding 2: the key holder alone tests guesses of an evaluation upload ----------------------


class _Recording:
    """A key holder that keeps every request it receives (what an honest-but-curious one sees)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[Any] = []

    def mask_sum(self, request: Any) -> Any:
        self.requests.append(request)
        return self.inner.mask_sum(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _keyholder_guesses(kh: Any, request: Any, horizon: int) -> list[int | None]:
    """The key holder's brute force: derive each device's mask from its seal, then find the one-hot
    histogram (count cell and quantised score) whose masked payload has the digest it was given.
    Returns the recovered count cell per device (None: nothing to test a guess against; wire
    version 2 gives the key holder no digest)."""
    p: ProtectionParams = request.params
    n = histogram_length(horizon)
    half = n // 2
    seed = round_seed_bytes(request.round_seed)
    header = wire.Header(
        wire.Mode.SECAGG, request.round_id, request.cohort_id, request.model_version, p.config_tag(seed, n)
    )
    found: list[int | None] = []
    for e in request.entries:
        digest = getattr(e, "payload_digest", None)
        if digest is None:
            found.append(None)  # the key holder holds nothing computed from the payload
            continue
        info = b"fedchurn/v1/seal" + header.pack() + p.config_digest(seed, n) + digest
        mask = wire.mask_stream(wire.SEAL_SUITE.decrypt(e.sealed_seed, kh._sk, info=info), n, p.ring_bits)
        hit = None
        for cell in range(half):
            for q in range(p.level + 1):
                v = np.zeros(n, dtype=np.uint64)
                v[cell], v[half + cell] = p.level, q
                payload = wire.pack_bits((v + mask) & np.uint64((1 << p.ring_bits) - 1), p.ring_bits)
                if wire.sha256(payload) == digest:
                    hit = cell
        found.append(hit)
    return found


def test_attack_keyholder_alone_recovers_an_evaluation_histogram() -> None:
    """The key holder receives, per device, a sealed seed (and on 806c25c the SHA-256 of the masked
    payload). Deriving the mask from the seal, it tested every possible one-hot evaluation
    histogram against that digest and recovered each held-out device's outcome and score bin."""
    cfg = RunConfig(devices=40, per_round=12, k_min=3, eval_fraction=0.3, strategy="fedavg", days=60, seed=3)
    strategy = _strategy(cfg)
    kh = strategy.secure.keyholder
    grid = _grid(strategy, run_id=21)
    recording = _Recording(kh)
    strategy.secure.keyholder = recording
    metrics = strategy.evaluate_all(grid, _arrays(), 1, 60.0)  # type: ignore[arg-type]
    assert metrics.get("devices", 0) >= cfg.k_min, grid.errors[:3]
    assert recording.requests
    for request in recording.requests:
        recovered = [c for c in _keyholder_guesses(kh, request, cfg.horizon) if c is not None]
        if recovered:
            pytest.fail(f"the key holder alone recovered {len(recovered)} devices' histogram cells")
        assert {f.name for f in fields(request.entries[0])} == {"device_id", "sealed_seed"}


# --- finding 3: two evaluation releases that differ by one device --------------------------------


def test_attack_evaluation_releases_are_differenced() -> None:
    """The aggregator evaluates the held-out devices twice (as 806c25c did before and after
    training) and leaves one device out of the second release: the difference of the two
    positives counts is that device's outcome. Each held-out device now answers one evaluation
    per run, so a second release over any of them does not exist."""
    cfg = RunConfig(devices=60, per_round=12, k_min=3, eval_fraction=0.3, strategy="fedavg", days=60, seed=5)
    strategy = _strategy(cfg)
    grid = _grid(strategy, run_id=31)
    first = strategy.evaluate_all(grid, _arrays(), 0, 60.0)  # type: ignore[arg-type]
    assert first.get("devices", 0) >= cfg.k_min, grid.errors[:3]
    held_out = [d for d in range(cfg.devices) if is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    target = held_out[0]

    # A malicious aggregator does not keep the honest strategy's books: it asks everyone again and
    # leaves the target out of the second release.
    strategy.sampler.evaluated = set()

    def without_target(msg: Message) -> Message:
        conf = msg.content.config_records[TASK_RECORD]
        devices = list(conf["devices"])  # type: ignore[arg-type]
        if target in devices:
            i = devices.index(target)
            for key in ("devices", "cohorts", "round-seeds"):
                values: Any = conf[key]
                conf[key] = values[:i] + values[i + 1 :]
        return msg

    grid.on_message = without_target
    second = strategy.evaluate_all(grid, _arrays(1), 1, 60.0)  # type: ignore[arg-type]
    if second.get("devices"):
        outcome = first["positives"] - second["positives"]
        pytest.fail(
            f"two releases differ by device {target} only ({first['devices']:.0f} vs "
            f"{second['devices']:.0f} devices): its outcome is {'churn' if outcome > 0.5 else 'no churn'}"
        )
    assert not second
    refused = [r for r in strategy.stats.refused if "no upload" in r.reason]
    assert len(refused) >= first["devices"] - 1  # every device refused a second evaluation


# --- finding 4: CKKS, one device's ciphertext scaled into a made-up cohort -----------------------


def test_attack_ckks_single_device_scaled_into_a_fake_cohort() -> None:
    """The aggregator takes one device's CKKS ciphertext, adds it to itself k times and labels it a
    cohort of k. On 806c25c the key holder decrypted it: the value divided by k is that device's
    update (and any DP noise divided by k). Now the key holder removes the masks of the seals it
    opened, so a scaled ciphertext decrypts to mask-dominated values, which it refuses; and made-up
    members have no seals."""
    import tenseal as ts

    cfg = RunConfig(
        devices=40, per_round=12, cohort_size=12, k_min=4, strategy="fedavg", days=60, protection="ckks"
    )
    strategy = _strategy(cfg)
    kh: Any = strategy.secure.keyholder
    grid = _grid(strategy, run_id=41)
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))[:1]  # type: ignore[arg-type]
    (reply,) = grid.send_and_receive(msgs)
    assert not reply.has_error(), grid.errors
    task, got = _task(msgs[0]), NodeReply.from_message(reply)
    params = cfg.train_protection(0.0)

    def sealed_under(i: int) -> tuple[bytes, int, bytes]:
        """Reply i's round seed and cohort (what its device sealed under), and its opened seed."""
        where = task.devices.index(got.devices[i])
        seed, cohort = task.bound_round_seeds(cfg.digest())[where], task.cohorts[where]
        head = got.blobs[i][: wire.HEADER_LEN]
        entry = keyholder_module.SealedEntry(
            "x", got.blobs[i][wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN]
        )
        return seed, cohort, kh._open(entry, wire.seal_info(head, params.config_digest(seed, N_PARAMS)))

    # The victim: a device with a labelled day (one without uploads zeros, which count for nothing).
    victim_at = next(i for i in range(len(got.devices)) if wire.carries_data(sealed_under(i)[2]))
    blob = got.blobs[victim_at]
    seed, cohort, _ = sealed_under(victim_at)
    k = cfg.k_min
    ctx = kh._ckks()
    chunks = [
        ts.ckks_vector_from(ctx, c) for c in wire.parse_ckks_body(blob[wire.HEADER_LEN + wire.SEAL_LEN :])
    ]
    scaled_chunks = []
    for c in chunks:  # k times the same ciphertext, by repeated addition
        total = c.copy()
        for _ in range(k - 1):
            total = total + c
        scaled_chunks.append(total.serialize())
    scaled = wire.pack_ckks_body(scaled_chunks)
    # The device's real seal plus k - 1 seals the aggregator made itself (it knows their seeds).
    head = wire.Header(
        wire.Mode.CKKS, task.round_id, cohort, task.model_version, params.config_tag(seed, N_PARAMS)
    )
    info = wire.seal_info(head.pack(), params.config_digest(seed, N_PARAMS))
    sybils = [
        keyholder_module.SealedEntry(
            f"sybil-{i}",
            wire.SEAL_SUITE.encrypt(wire.with_data_bit(os.urandom(32), True), _pub(kh), info=info),
        )
        for i in range(k - 1)
    ]
    victim = keyholder_module.SealedEntry("victim", blob[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN])
    request = keyholder_module.CkksSumRequest(
        task.round_id, cohort, task.model_version, seed, N_PARAMS, params, (victim, *sybils), scaled
    )
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        kh.ckks_decrypt_sum(request)
    assert e.value.reason is wire.Reason.OUT_OF_RANGE
    assert kh.answered(task.round_id, cohort), "a refused decryption still spends the cohort"


# --- finding 5: who takes part is predictable from the published seed -----------------------------


def test_attack_participation_is_predictable_from_the_published_seed() -> None:
    """The run's seed is public (`/v1/runs/{id}` serves the run config). On 806c25c the strategy drew
    each round's devices with `random.Random(seed)`: anyone could compute who took part, so the
    amplification by sampling the reported epsilon assumed did not hold. The default draw is now
    secret: the same public configuration draws differently, and the seed predicts nothing."""
    cfg = RunConfig(devices=2000, per_round=60, cohort_size=20, k_min=5, strategy="fedavg", days=60)
    assert cfg.sampling_source == "secret"
    draws = []
    for _ in range(2):
        s = _strategy(cfg)
        msgs = s.configure_train(1, _arrays(), ConfigRecord(), None)  # type: ignore[arg-type]
        draws.append({d for m in msgs for d in _task(m).devices})
    train_pool = [d for d in range(cfg.devices) if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    predicted = set(random.Random(cfg.seed).sample(train_pool, cfg.per_round))
    assert draws[0] != predicted, "the published seed predicts who takes part"
    assert draws[0] != draws[1], "the same public configuration draws the same devices"
    assert len(draws[0] & predicted) < cfg.per_round // 2


# --- finding 6: one device wraps the ring ---------------------------------------------------------


def test_attack_one_device_wraps_the_ring_to_move_the_model() -> None:
    """A malicious device sends a valid upload (correct header, a seal that opens, the right length)
    whose payload, once the mask is removed, holds the ring's extreme value everywhere. On 806c25c
    the wrapped cohort sum moved the model by many times what any honest device can; the unmasked
    sum is now bounded by what the cohort's honest devices can produce, so the model moves by at
    most one honest device's largest contribution."""
    cfg = RunConfig(devices=40, per_round=12, cohort_size=12, k_min=5, strategy="fedavg", days=60, seed=2)
    strategy = _strategy(cfg)
    grid = _grid(strategy, run_id=61)
    start = init_params(0)
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs)
    assert not grid.errors, grid.errors[:2]
    task = _task(msgs[0])
    params = cfg.train_protection(task.noise_multiplier)
    blobs = replies[0].content.config_records[REPLY_RECORD][K_BLOBS]
    assert isinstance(blobs, list)
    honest = blobs[0]
    assert isinstance(honest, bytes)
    head = honest[: wire.HEADER_LEN]
    seed = task.bound_round_seeds(cfg.digest())[0]  # the malicious device follows the protocol otherwise
    m, bits = params.n_coords(N_PARAMS), params.ring_bits
    mask_seed = wire.with_data_bit(os.urandom(32), True)  # its upload says it carries data
    extreme = np.full(m, (1 << (bits - 1)) - 1, dtype=np.uint64)
    payload = wire.pack_bits(
        (extreme + wire.mask_stream(mask_seed, m, bits)) & np.uint64((1 << bits) - 1), bits
    )
    info = wire.seal_info(head, params.config_digest(seed, N_PARAMS))
    sealed = wire.SEAL_SUITE.encrypt(mask_seed, _pub(strategy.secure.keyholder), info=info)
    malicious = head + sealed + payload
    assert len(malicious) == len(honest)
    replies[0].content.config_records[REPLY_RECORD][K_BLOBS] = [malicious, *blobs[1:]]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    moved = float(np.linalg.norm(arrays[PARAMS_KEY].numpy().astype(np.float64) - start))
    one_device = params.sensitivity_int(N_PARAMS) / params.scale(
        N_PARAMS
    )  # one honest device's largest update
    assert moved <= one_device * (1 + 1e-6), (  # float32 model
        f"one malicious upload moved the model by {moved:.3g}, {moved / one_device:.1f}x what one honest "
        f"device can ({one_device:.3g})"
    )
    assert strategy.stats.out_of_range > 0 or strategy.stats.norm_clipped > 0  # the cut is recorded


# --- finding 7: aggregator secrets in the run configuration ---------------------------------------


def test_attack_run_config_carries_aggregator_secrets() -> None:
    """On 806c25c the run configuration (sent to every SuperNode, on `flwr run`'s command line, and
    served by `/v1/runs/{id}`) carried the aggregator's database URLs (with their password) and the
    path of its key holder token: `/v1/runs/{id}` published them. The run configuration now refuses
    such keys by name; they live in the aggregator's private settings file."""
    secrets = {
        "state-db": "postgresql://fedchurn:S3CRET-PASSWORD@db.internal/fedchurn",
        "keyholder-token-file": "/srv/aggregator/keyholder.token",
        "audit-db": "sqlite:////srv/aggregator/audit.sqlite",
        "keyholder-url": "https://kh.internal:8443",
    }
    for key, value in secrets.items():
        with pytest.raises(ValueError, match=f"unknown run-config key '{key}'"):
            RunConfig.from_flower({**RunConfig().to_flower(), key: value})
    assert not ({k.replace("-", "_") for k in secrets} & {f.name for f in fields(RunConfig)})
    public = str(RunConfig().to_flower())
    assert "db" not in {k.split("-")[-1] for k in RunConfig().to_flower()} and "token" not in public


def test_accountant_reports_epsilon_against_the_aggregator_without_amplification() -> None:
    """Both figures, and the aggregator's is what dp-accounting gives for every round unsampled."""
    import dp_accounting
    from dp_accounting import rdp

    from fedchurn.server.dp import PrivacyAccountant

    acc = PrivacyAccountant(1.2, 0.03, sampling="fixed", population=10_000)
    acc.step(20)
    outsiders, aggregator = acc.epsilon(1e-6), acc.epsilon_aggregator(1e-6)
    ref = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    ref.compose(dp_accounting.GaussianDpEvent(1.2 / 2), 20)
    assert aggregator == pytest.approx(ref.get_epsilon(1e-6), rel=1e-3)
    assert aggregator > 3 * outsiders  # no amplification is claimed against who knows the sample
    report = acc.report(1e-6)
    assert report["epsilon_outsiders"] == outsiders and report["epsilon_aggregator"] == aggregator
    assert math.isinf(PrivacyAccountant.none().epsilon_aggregator(1e-6))


def test_simulated_devices_get_their_pin_from_provisioning_not_the_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Flower's simulation engine gives a simulated node no node configuration of its own: the
    simulated device reads its pin from the provisioning file, and still refuses another key."""
    from fedchurn.client.device_config import PROVISIONING_ENV

    cfg = ONE_COHORT
    strategy = _strategy(cfg)
    provisioning = tmp_path / "device.toml"
    provisioning.write_text("".join(f'{k} = "{v}"\n' for k, v in device_pins(strategy).items()))
    monkeypatch.setenv(PROVISIONING_ENV, str(provisioning))
    grid = InProcessGrid(
        simulated_node,
        lambda node: {"partition-id": NODES.index(node), "num-partitions": len(NODES)},
        cfg.to_flower(),
        71,
    )
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs[:2])
    assert not grid.errors and all(not r.has_error() for r in replies)
    msgs[2].content.config_records[TASK_RECORD][K_KEY] = _raw(X25519PrivateKey.generate().public_key())
    grid.send_and_receive(msgs[2:3])
    assert len(grid.errors) == 1 and "UntrustedKeyHolderError" in grid.errors[0]


# --- review of 2026-12-07: the aggregator fills a cohort with what it already knows ------------------
#
# The key holder unmasks a sum over at least k seals, but it cannot tell whose seals they are. Two
# independent reviews found ways for a malicious aggregator to make such a "sum" hold one device's
# value alone (decision 132). Each test below fails on 1adf3a0, and the model-binding one also on
# c4ddcf9, this session's intermediate fix.

REVIEW = RunConfig(
    devices=150,
    per_round=12,
    cohort_size=12,
    k_min=5,
    strategy="fedavg",
    days=60,
    eval_fraction=0.5,
    sampling_source="seeded",
)


def _node_devices(grid: InProcessGrid, cfg: RunConfig, node: int) -> dict[int, Any]:
    """Every device a node serves, with its data (what the test needs to choose its victims)."""
    from fedchurn.simulations.flower_client import SimulatedShard

    mine = [d for n, d in simulation_roster(NODES, cfg.devices) if n == node]
    return SimulatedShard().load(grid.context(node), cfg, mine)


def _review_node(run_id: int) -> tuple[RunConfig, Any, InProcessGrid, int, dict[int, Any]]:
    """The review's run: its key holder, a grid to the real ClientApp, one node and its devices."""
    strategy = _strategy(REVIEW)
    grid = _grid(strategy, run_id)
    return REVIEW, strategy.secure.keyholder, grid, NODES[0], _node_devices(grid, REVIEW, NODES[0])


def _seeds_to_try(seed: bytes, *tasks: tuple[RoundTask, RunConfig]) -> list[bytes]:
    """The round seeds an aggregator would try for a cohort: the one it sent, and that seed bound
    to each (model, settings) it sent, as docs/client-spec.md states it and as f8c9d3d did (the
    model only). Written out here so that the test also runs against code that predates them."""
    import dataclasses
    import hashlib
    import json

    out = [seed]
    for t, cfg in tasks:
        for version in (b"v1", b"v2"):
            h = hashlib.sha256(b"fedchurn-task-" + version)
            for part, dtype in ((t.params, "<f4"), (t.input_offset, "<f8")):
                if part is None:
                    h.update(b"\x00")
                else:
                    raw = np.ascontiguousarray(part, dtype=dtype).tobytes()
                    h.update(b"\x01" + len(raw).to_bytes(8, "little") + raw)
            if version == b"v2":
                settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()
                h.update(hashlib.sha256(settings).digest())
            out.append(hashlib.sha256(b"fedchurn-bound-seed-v1" + seed + h.digest()).digest())
    return out


def _unmask(kh: Any, params: ProtectionParams, n: int, blobs: list[bytes], seeds: list[bytes]) -> Any:
    """The aggregator asks the key holder to unmask these uploads as one cohort, each labelled a
    device, under each candidate round seed until one is answered: (response, seed) or None."""
    head = wire.Header.parse(blobs[0])
    body = wire.HEADER_LEN + wire.SEAL_LEN
    entries = tuple(
        keyholder_module.SealedEntry(f"device-{i}", b[wire.HEADER_LEN : body]) for i, b in enumerate(blobs)
    )
    for seed in seeds:
        request = keyholder_module.MaskSumRequest(
            head.round_id, head.cohort_id, head.model_version, seed, n, params, entries
        )
        try:
            return kh.mask_sum(request), seed
        except keyholder_module.KeyHolderRefusedError:
            continue
    return None


def _released(response: Any, params: ProtectionParams, n: int, blobs: list[bytes]) -> np.ndarray:
    """What the aggregator reads from an answered cohort: the payloads' sum minus the mask sum."""
    m, bits = params.n_coords(n), params.ring_bits
    body = wire.HEADER_LEN + wire.SEAL_LEN
    total = sum(wire.unpack_bits(b[body:], bits, m).astype(np.int64) for b in blobs)
    return _signed((total - response.mask_sum.astype(np.int64)) % (1 << bits), bits).astype(np.float64)


@pytest.mark.parametrize("purpose", ["train", "stats"])
def test_attack_one_device_answers_one_round_k_times_to_fill_a_cohort(purpose: str) -> None:
    """The aggregator sends one device the same round's task k times. On 1adf3a0 it answered each
    time with a fresh seal bound to the same round and cohort; labelled as k devices, the key holder
    opened all k, and the "sum" was k copies of that device's update (its feature summary for the
    stats purpose). A device now answers each round once."""
    cfg, kh, grid, node, data = _review_node(run_id=81)
    target = next(d for d in data if not is_eval_device(cfg.seed, d, cfg.eval_fraction))
    seed = round_seed_bytes(7)
    if purpose == "train":
        task = RoundTask("train", 1, 1, 1, 0.0, (target,), (0,), (seed,), init_params(0), kh.public_key())
        params, n = cfg.train_protection(0.0), N_PARAMS
    else:
        task = RoundTask("stats", 0, 1, 0, 0.0, (target,), (0,), (seed,), keyholder_key=kh.public_key())
        params, n = cfg.stats_protection(0.0), DEFAULT_SPEC.n_features + 1
    blobs: list[bytes] = []
    for _ in range(cfg.k_min):
        blobs += NodeReply.from_message(grid.deliver(task.to_message(node))).blobs
    assert not grid.errors, grid.errors[:2]
    if len(blobs) >= cfg.k_min and (
        answer := _unmask(kh, params, n, blobs, _seeds_to_try(seed, (task, cfg)))
    ):
        pytest.fail(
            f"the key holder unmasked a cohort of {len(answer[0].included)} uploads, every one of them "
            f"device {target}'s {purpose} upload: their sum over {len(blobs)} is that device's value"
        )
    assert len(blobs) == 1


def test_attack_devices_asked_out_of_their_role_fill_a_cohort_around_one_device() -> None:
    """On 1adf3a0 a held-out device asked to train uploaded a zero delta and a training device asked
    to evaluate a zero histogram: constants the aggregator knows, which counted towards k. One
    task putting a target among k - 1 of them made the released sum the target's update (or its
    evaluation outcome) alone. Roles are public (a hash of the device), so a device now refuses
    a task out of its role, which tells the aggregator nothing it did not know."""
    cfg, kh, grid, node, data = _review_node(run_id=82)
    held = [d for d in data if is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    training = [d for d in data if d not in held]
    trainer = next(d for d in training if len(data[d].time))
    evaluator = next(d for d in held if data[d].eval_x is not None)
    k, seed = cfg.k_min, round_seed_bytes(9)
    assert len(held) >= k and len(training) >= k, "the population needs them"
    cases: list[tuple[Purpose, int, list[int], ProtectionParams, int]] = [
        ("train", trainer, held[: k - 1], cfg.train_protection(0.0), N_PARAMS),
        ("evaluate", evaluator, [d for d in training if d != trainer][: k - 1], cfg.eval_protection(), 0),
    ]
    for round_id, (purpose, target, known, params, n) in enumerate(cases, start=1):
        devices = (target, *known)
        task = RoundTask(
            purpose, 1, round_id, 1, 0.0, devices, (0,) * k, (seed,) * k, init_params(0), kh.public_key()
        )
        got = NodeReply.from_message(grid.deliver(task.to_message(node)))
        assert not grid.errors, grid.errors[:2]
        n = n or histogram_length(cfg.horizon)
        if len(got.blobs) >= k and (
            answer := _unmask(kh, params, n, list(got.blobs), _seeds_to_try(seed, (task, cfg)))
        ):
            pytest.fail(
                f"{purpose}: the key holder released a cohort of {len(answer[0].included)} in which "
                f"{len(known)} uploads were constants the aggregator knew: the sum is device {target}'s"
            )
        assert got.devices == (target,)


@pytest.mark.parametrize("zeroed_by", ["model", "settings"])
def test_attack_a_cohort_mixes_devices_zeroed_by_what_they_were_sent_with_one_target(zeroed_by: str) -> None:
    """One round, one cohort over three nodes: the aggregator sends the target's node the real
    task (listing the target alone) and the other nodes something that zeroes their updates
    whatever their data: a finite model that overflows their arithmetic, or run settings with a
    learning rate of 1e-40. On c4ddcf9 (after this session's first fix, which made a diverged
    device upload zeros) the key holder opened every seal and the "sum" was the target's update
    alone; with the settings, also on f8c9d3d (whose binding covered the model only). Each
    device's round seed is now bound to the model and the run settings it was sent, so seals made
    from two of either never open in one cohort."""
    from fedchurn.shared.messages import PARAMS_RECORD
    from fedchurn.shared.model_format import flatten, unflatten

    cfg = REVIEW
    strategy = _strategy(cfg)
    kh: Any = strategy.secure.keyholder
    grid = _grid(strategy, run_id=84)
    layers = unflatten(init_params(0))
    layers[0][...] = 3e37
    zeroing = flatten(layers).astype(np.float32)
    slow = replace(cfg, lr=1e-40)  # every step underflows: the update is exactly zero
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    tasks = [_task(m) for m in msgs]
    target_node, target = msgs[0].metadata.dst_node_id, tasks[0].devices[0]
    crafted = []
    for msg, task in zip(msgs, tasks, strict=True):
        node = msg.metadata.dst_node_id
        if node == target_node:
            crafted.append(
                replace(
                    task, devices=(target,), cohorts=task.cohorts[:1], round_seeds=task.round_seeds[:1]
                ).to_message(node)
            )
        elif zeroed_by == "model":
            msg.content.array_records[PARAMS_RECORD] = ArrayRecord({PARAMS_KEY: Array(zeroing)})
            crafted.append(msg)
        else:
            grid.context(node).run_config.update(slow.to_flower())
            crafted.append(msg)
    replies = [grid.deliver(m) for m in crafted]
    assert not grid.errors, grid.errors[:2]
    blobs = [b for r in replies for b in NodeReply.from_message(r).blobs]
    assert len(blobs) == cfg.per_round - len(tasks[0].devices) + 1  # every device answered
    params, seed = cfg.train_protection(0.0), tasks[0].round_seeds[0]
    sent_others = (replace(tasks[1], params=zeroing), cfg) if zeroed_by == "model" else (tasks[1], slow)
    answer = _unmask(kh, params, N_PARAMS, blobs, _seeds_to_try(seed, (tasks[0], cfg), sent_others))
    included = answer[0].included if answer is not None else ()
    if "device-0" in included and len(included) >= cfg.k_min:  # blobs[0] is the target's
        pytest.fail(
            f"the key holder released a cohort of {len(included)}: {len(included) - 1} zeros from the "
            f"{zeroed_by} sent to zero them, and device {target}'s update"
        )


def test_attack_a_crafted_model_reads_a_devices_data_from_its_error_reply() -> None:
    """The aggregator sends a finite model with a huge first-layer weight: a device whose features
    are large enough overflows. On 1adf3a0 that device answered with an error reply, which the
    aggregator reads in the clear (`NonFiniteUpdateError`), and one that did not overflow uploaded:
    a yes/no answer about the device's data per message, a binary search per feature. A device
    whose arithmetic diverges now uploads a zero update like any other upload; a held-out device
    whose score is not a number, a zero histogram."""
    from fedchurn.shared.messages import PARAMS_RECORD
    from fedchurn.shared.model_format import flatten, unflatten

    cfg = REVIEW
    strategy = _strategy(cfg)
    grid = _grid(strategy, run_id=83)
    layers = unflatten(init_params(0))
    layers[0][...] = 3e37  # every first-layer weight: any non-zero feature overflows float32
    crafted = flatten(layers).astype(np.float32)
    assert np.isfinite(crafted).all()

    def craft(msg: Message) -> Message:
        msg.content.array_records[PARAMS_RECORD] = ArrayRecord({PARAMS_KEY: Array(crafted)})
        return msg

    grid.on_message = craft
    arrays = ArrayRecord({PARAMS_KEY: Array(crafted)})
    msgs = list(strategy.configure_train(1, _arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(msgs)
    evaluation = strategy.evaluate_all(grid, arrays, 1, 60.0)  # type: ignore[arg-type]
    leaked = [e for e in grid.errors if "NonFinite" in e or "nan" in e.lower()]
    if leaked:
        pytest.fail(
            f"{len(leaked)} error replies told the aggregator that a device's data overflowed: {leaked[0]}"
        )
    assert not grid.errors and all(not r.has_error() for r in replies)
    for msg, reply in zip(msgs, replies, strict=True):  # every device uploaded
        assert NodeReply.from_message(reply).devices == _task(msg).devices
    # The held-out devices answered too, each with a zero histogram (its score was not a number):
    # uploads that carry nothing do not count towards k (decision 150), so no cohort was released.
    assert evaluation == {}


def test_attack_repeated_rounds_difference_out_one_devices_update_unless_its_uploads_are_capped(
    tmp_path: Any,
) -> None:
    """A sum over k hides a device in one round, not across rounds. The aggregator sends one model
    in k + 1 rounds to k + 1 devices, each round leaving a different one out; each device answers
    each round once, as it should, and each device's update is then a subtraction (the review's
    finding, reproduced here). Only a bound on how many releases a device joins, with the key
    holder's noise, limits that, and only the device can keep it: pinned `max-uploads` = k - 2,
    no device answers k rounds, so no such set of sums exists. On 1adf3a0 nothing capped uploads."""
    from fedchurn.client.flower_app import _train
    from fedchurn.client.protect import selected_clipped

    cfg, kh, grid, node, data = _review_node(run_id=85)
    k = cfg.k_min
    held = {d for d in data if is_eval_device(cfg.seed, d, cfg.eval_fraction)}
    trainers = [d for d, x in data.items() if d not in held and len(x.time)]
    group, seed, params = trainers[: k + 1], round_seed_bytes(11), cfg.train_protection(0.0)
    key, start = kh.public_key(), init_params(0)

    def rounds(grid: InProcessGrid, first_round_id: int) -> tuple[list[np.ndarray], dict[int, int], bytes]:
        sums, uploads, used = [], dict.fromkeys(group, 0), seed
        for j in range(k + 1):
            asked = tuple(d for d in group if d != group[j])
            round_id = first_round_id + j
            task = RoundTask("train", 1, round_id, 1, 0.0, asked, (0,) * k, (seed,) * k, start, key)
            got = NodeReply.from_message(grid.deliver(task.to_message(node)))
            for d in got.devices:
                uploads[d] += 1
            answer = (
                _unmask(kh, params, N_PARAMS, list(got.blobs), _seeds_to_try(seed, (task, cfg)))
                if got.blobs
                else None
            )
            if len(got.blobs) >= k and answer is not None:
                sums.append(_released(answer[0], params, N_PARAMS, list(got.blobs)))
                used = answer[1]
        return sums, uploads, used

    # Without a cap: every round is answered, and device j's update is sum(S) / k - S_j.
    sums, _, used = rounds(grid, first_round_id=100)
    assert len(sums) == k + 1
    target = group[0]
    task = RoundTask("train", 1, 1, 1, 0.0, (target,), (0,), (seed,), start, key)
    update = _train(cfg, task, [data[target]], [target])[0]
    truth = selected_clipped(update, params, used) * params.scale(N_PARAMS)
    recovered = sum(sums) / k - sums[0]
    assert np.corrcoef(recovered, truth)[0, 1] > 0.95  # up to k + 1 sums' stochastic rounding

    # With max-uploads pinned in the devices' own configuration (and a ledger of their own), the
    # same rounds run dry.
    ledger = str(tmp_path / "claims.sqlite")
    capped = InProcessGrid(
        grid.app,
        lambda n: {**grid.node_config(n), "max-uploads": k - 2, "contribution-ledger": ledger},
        grid.run_config,
        run_id=86,
    )
    sums, uploads, _ = rounds(capped, first_round_id=200)
    if len(sums) == k + 1:
        pytest.fail(f"{k + 1} released sums, each missing one device: every device's update by subtraction")
    assert max(uploads.values()) == k - 2, uploads


# --- review 3 (decision 133): the CKKS key holder's answers ----------------------------------------

CKKS_N = 64  # a small vector: the key holder's exact discrete Gaussian costs ~0.1 ms a coordinate


def _ckks_cohort(
    kh: Any, params: ProtectionParams, updates: np.ndarray, round_id: int
) -> tuple[list[bytes], bytes]:
    """Devices' CKKS uploads of `updates` for one cohort under a fresh round seed (`_cohort_uploads`)."""
    seed = os.urandom(32)
    return _cohort_uploads(kh, params, updates, round_id, seed), seed


def _sybil_cohort(
    kh: Any, params: ProtectionParams, updates: np.ndarray, round_id: int
) -> tuple[list[bytes], bytes]:
    """`_ckks_cohort` for devices the aggregator runs itself: the device's code, except that every
    seed carries the data bit whatever the values (its own code would set it; decision 150)."""
    from unittest import mock

    from fedchurn.client import protect

    def all_set(seeds: list[bytes], has_data: np.ndarray, params: ProtectionParams) -> list[bytes]:
        return [wire.with_data_bit(s, True) for s in seeds]

    with mock.patch.object(protect, "_with_data_bits", all_set):
        return _ckks_cohort(kh, params, updates, round_id)


def _ckks_ask(
    kh: Any, params: ProtectionParams, blobs: list[bytes], seed: bytes, round_id: int, extra: np.ndarray
) -> Any:
    """The aggregator's request: the devices' ciphertexts summed, plus an encryption of `extra` it
    makes with the public context every device holds."""
    import tenseal as ts

    ctx = ts.context_from(kh.ckks_public_context())
    slots = params.ckks_poly_modulus // 2
    total: list[Any] = []
    for b in blobs:
        cts = [
            ts.ckks_vector_from(ctx, c) for c in wire.parse_ckks_body(b[wire.HEADER_LEN + wire.SEAL_LEN :])
        ]
        total = cts if not total else [a + c for a, c in zip(total, cts, strict=True)]
    total = [
        t + ts.ckks_vector(ctx, extra[i * slots : (i + 1) * slots].tolist()) for i, t in enumerate(total)
    ]
    entries = tuple(
        keyholder_module.SealedEntry(f"d{i}", b[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN])
        for i, b in enumerate(blobs)
    )
    body = wire.pack_ckks_body([t.serialize() for t in total])
    request = keyholder_module.CkksSumRequest(round_id, 0, 1, seed, CKKS_N, params, entries, body)
    return kh.ckks_decrypt_sum(request)


def _ckks_updates(params: ProtectionParams, n: int, seed: int) -> np.ndarray:
    """n devices' updates inside the clip (so the devices' clipping leaves them as they are)."""
    a = params.coord_clip(CKKS_N)
    u = np.random.default_rng(seed).uniform(-0.6 * a, 0.6 * a, size=(n, CKKS_N))
    return u * np.minimum(1.0, 0.9 * params.clip_norm / np.linalg.norm(u, axis=1))[:, None]


def test_attack_the_ckks_range_check_answers_a_noise_free_bit_per_cohort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key holder refused an unmasked sum outside what honest devices can produce, and checked
    it before adding its noise. The aggregator adds an encryption of an offset of its choice at one
    coordinate: released or refused said whether that coordinate of the exact sum lies below a
    threshold. A binary search over 21 cohorts of the same devices (a model's rounds give the same
    updates) read the noise-free sum to ~1e-8 although each release carries noise of std 2 (a
    helper's attack, review 3: also one device's coordinate with k - 1 Sybil seals). Now the check
    reads the noisy value, so it is part of the noisy release: two searches over the same devices
    end apart by about the noise, where on the old code they ended at the same offset. (A CKKS key
    now also stops decrypting after 16 refusals, which would end the searches early: lifted here
    to test the noisy check alone.)"""
    monkeypatch.setattr(keyholder_module, "CKKS_MAX_REFUSALS", 10**6)
    z = 4.0
    kh = keyholder_module.KeyHolder.generate(k_min=3, min_noise_multiplier=z, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=3, clip_norm=0.5).train_protection(z)
    updates = _ckks_updates(params, 3, seed=3)
    j, round_id = 17, 7000

    def flip_offset() -> float:
        """The offset at coordinate j above which the key holder refuses (binary search)."""
        nonlocal round_id
        lo, hi = 0.0, 50.0  # released at lo (the honest sum), refused at hi (any noise allowed for)
        for _ in range(14):  # to 50 / 2^14 = 0.003
            mid, extra = (lo + hi) / 2, np.zeros(CKKS_N)
            extra[j] = mid
            blobs, seed = _ckks_cohort(kh, params, updates, round_id)
            try:
                _ckks_ask(kh, params, blobs, seed, round_id, extra)
                lo = mid
            except keyholder_module.KeyHolderRefusedError as e:
                assert e.reason is wire.Reason.OUT_OF_RANGE, e
                hi = mid
            round_id += 1
        return (lo + hi) / 2

    first, second = flip_offset(), flip_offset()
    assert first != second, (
        f"two searches over 14 cohorts of the same 3 devices both found the refusal threshold at offset "
        f"{first:.6f} / {second:.6f}: the range check answers a noise-free bit about the sum"
    )
    kh.close()


def test_attack_a_ckks_refusal_or_the_public_audit_log_carries_figures_of_the_sum() -> None:
    """The key holder's out-of-range refusal said "largest coordinate 0.185 > 0.157 or norm 0.362
    > 2.5": the aggregator read ~20 bits of the exact sum per refused cohort, and the public audit
    log published the same text (one malicious device pushing its cohort out of range let an
    outsider read the honest devices' sum). Both helpers of review 3 found it. A refusal now names
    no figure, and the audit log keeps codes only."""
    from fedchurn.server.round_report import public_reason

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=4), 8000)
    extra = np.zeros(CKKS_N)
    extra[3] = 100.0  # far outside what 5 devices clipped to 0.5 can produce
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        _ckks_ask(kh, params, blobs, seed, 8000, extra)
    said = f"{e.value.reason.value}: {e.value.detail}"
    assert not any(ch.isdigit() for ch in said.replace("5 devices", "").replace("5 honest", "")), said
    for reason in (
        said,
        "out_of_range: (largest coordinate 1.08 > 0.314 or norm 1.73 > 5)",
        "seal_invalid: 3 of d7",
    ):
        assert public_reason(reason) == reason.split(":")[0], public_reason(reason)
    assert public_reason("anything else: 0.25") == "refused"
    kh.close()


def test_attack_a_tiny_clip_in_the_request_releases_the_raw_ckks_decryption() -> None:
    """The key holder rounds a CKKS sum to a grid and adds noise, both scaled by the clip norm the
    aggregator's request names. With a clip of 1e-12 the grid was ~1e-18: the release was the
    decryption error itself, unrounded (2,286 distinct values), what a key-recovery attack on CKKS
    (Li-Micciancio) needs. The grid now never goes below 2^-21 (review 3)."""
    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=1e-12).train_protection(0.0)
    updates = np.random.default_rng(5).normal(size=(5, CKKS_N)) * 0.01
    # Honest devices clipped to 1e-12 upload nothing above the grid and say so (decision 150): the
    # aggregator's own devices, which set the data bit, are what would reach the release.
    blobs, seed = _sybil_cohort(kh, params, updates, 9000)
    values = np.asarray(_ckks_ask(kh, params, blobs, seed, 9000, np.zeros(CKKS_N)).values)
    steps = values / 2.0**-21
    assert np.array_equal(steps, np.round(steps)), (
        f"released values off the 2^-21 grid (max |v| {np.abs(values).max():.3g}, "
        f"{len(np.unique(values))} distinct of {values.size}): a raw decryption"
    )
    kh.close()


def test_attack_a_small_clip_rounds_the_ckks_noise_away() -> None:
    """With the grid kept at 2^-21 (above), a clip of 1e-7 under a noise floor of z = 1 made the
    noise a fifth of a grid step: the discrete Gaussian almost always drew 0, the release was the
    exact rounding of the sum, and an offset of half a step read its sign; with k - 1 Sybil seals
    one device's, 40 rounds out of 40 (review 4, against the first fix). The key holder now
    refuses noise under 2^10 grid steps, before anything is opened."""
    kh = keyholder_module.KeyHolder.generate(k_min=5, min_noise_multiplier=1.0, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=1e-7).train_protection(1.0)
    updates = np.random.default_rng(6).normal(size=(5, CKKS_N)) * 1e-9
    blobs, seed = _ckks_cohort(kh, params, updates, 9100)
    grid = ckks_release.ckks_grid(params)
    try:
        answer = _ckks_ask(kh, params, blobs, seed, 9100, np.full(CKKS_N, grid / 2))
    except keyholder_module.KeyHolderRefusedError as e:
        assert e.reason is wire.Reason.DP_POLICY, e
        assert not kh.answered(9100, 0), "refused before any seal was opened"
    else:
        pytest.fail(
            f"released with noise of std {answer.noise_std:.3g} = {answer.noise_std / grid:.2f} steps of the "
            f"{grid:.3g} grid: the release is the sum's exact rounding"
        )
    kh.close()


def test_attack_rounding_before_the_noise_lets_one_device_count_for_more_than_the_floor_allows() -> None:
    """The key holder rounds the exact sum to its grid and then adds noise. With k - 1 Sybil seals
    and an offset per coordinate that puts a rounding boundary where the target's value decides,
    one device moves the release by its clip plus up to one grid step per coordinate: at the
    smallest clip a floor of z = 4 accepted, that made the effective multiplier 3.57, and no floor
    could give more than 1024 / sqrt(m) = 21.4 (review 5). The noise now covers the rounding."""
    z = 4.0
    kh = keyholder_module.KeyHolder.generate(k_min=5, min_noise_multiplier=z, with_ckks=True)
    grid = ckks_release.CKKS_MIN_GRID
    clip = ckks_release.CKKS_MIN_NOISE_STEPS * grid / z  # the smallest clip accepted before
    params = RunConfig(protection="ckks", k_min=5, clip_norm=clip).train_protection(z)
    updates = np.random.default_rng(7).normal(size=(5, CKKS_N)) * clip / 100
    blobs, seed = _ckks_cohort(kh, params, updates, 9200)
    answer = _ckks_ask(kh, params, blobs, seed, 9200, np.zeros(CKKS_N))
    reach = clip + math.sqrt(params.n_coords(CKKS_N)) * grid  # one device's reach through the rounding
    assert answer.noise_std >= z * reach * (1 - 1e-12), (
        f"noise of std {answer.noise_std:.3g} for a device that moves the release by up to {reach:.3g}: "
        f"an effective multiplier of {answer.noise_std / reach:.2f} under a floor of {z}"
    )
    kh.close()


def _varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def _with_field(blob: bytes, field: int, content: bytes) -> bytes:
    """A serialized TenSEAL vector (protobuf: 1 sizes, 2 ciphertexts, 3 scale) with one
    length-delimited field's content replaced: the aggregator's own bytes, rewritten by hand."""
    out, i = b"", 0
    while i < len(blob):
        start, key, shift = i, 0, 0
        while True:  # the field's key, a varint
            key, shift, i = key | (blob[i] & 0x7F) << shift, shift + 7, i + 1
            if not blob[i - 1] & 0x80:
                break
        if key & 7 == 1:  # the scale, a double
            i += 8
            out += blob[start:i]
            continue
        length, shift = 0, 0
        while True:
            length, shift, i = length | (blob[i] & 0x7F) << shift, shift + 7, i + 1
            if not blob[i - 1] & 0x80:
                break
        i += length
        out += _varint(key) + _varint(len(content)) + content if key >> 3 == field else blob[start:i]
    return out


def _with_size(blob: bytes, size: int) -> bytes:
    return _with_field(blob, 1, _varint(size))


def _cohort_request(
    kh: Any, params: ProtectionParams, blobs: list[bytes], seed: bytes, round_id: int, total: Any
) -> Any:
    """The aggregator's request for a cohort's sum `total`, naming the cohort's seals."""
    entries = tuple(
        keyholder_module.SealedEntry(f"d{i}", b[wire.HEADER_LEN : wire.HEADER_LEN + wire.SEAL_LEN])
        for i, b in enumerate(blobs)
    )
    body = wire.pack_ckks_body([total.serialize()])
    return keyholder_module.CkksSumRequest(round_id, 0, 1, seed, CKKS_N, params, entries, body)


def _summed(ctx: Any, blobs: list[bytes]) -> Any:
    """The devices' one-chunk ciphertexts summed, as the aggregator does."""
    import tenseal as ts

    total: Any = None
    for b in blobs:
        (ct,) = [
            ts.ckks_vector_from(ctx, c) for c in wire.parse_ckks_body(b[wire.HEADER_LEN + wire.SEAL_LEN :])
        ]
        total = ct if total is None else total + ct
    return total


def _vector_of(ctx: Any, vector: Any, ciphertext: Any) -> Any:
    """`vector` with its ciphertext replaced by `ciphertext` (one the aggregator computed with SEAL
    directly, which TenSEAL's own operations would not produce)."""
    import tempfile

    import tenseal as ts

    with tempfile.NamedTemporaryFile() as f:
        ciphertext.save(f.name)
        return ts.ckks_vector_from(ctx, _with_field(vector.serialize(), 2, Path(f.name).read_bytes()))


def _assert_refused(
    kh: Any, params: ProtectionParams, blobs: list[bytes], seed: bytes, round_id: int, total: Any, reason: Any
) -> None:
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        kh.ckks_decrypt_sum(_cohort_request(kh, params, blobs, seed, round_id, total))
    assert e.value.reason is reason
    kh.close()


def test_attack_a_ckks_sum_multiplied_by_a_plaintext_moves_the_wrap_point() -> None:
    """With the public context alone the aggregator multiplies a cohort's sum by a plaintext
    constant: the ciphertext decrypts to the same values at a larger scale, so every check
    passed and the key holder released it, while the decryption's wrap point fell into the
    honest range, where Sybil masks put the target's update on it (an effective multiplier of
    2.96 under a floor of 4: review 7). Only ciphertexts at the devices' scale and level pass."""

    import tenseal as ts
    from tenseal import sealapi

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=10), 9500)
    ctx = ts.context_from(kh.ckks_public_context())
    total = _summed(ctx, blobs)
    (ct,) = total.ciphertext()
    seal, plain = ctx.seal_context().data, sealapi.Plaintext()
    sealapi.CKKSEncoder(seal).encode(1.0, ct.parms_id(), 16.0, plain)  # 16 at scale 16: times 16
    sealapi.Evaluator(seal).multiply_plain_inplace(ct, plain)
    _assert_refused(kh, params, blobs, seed, 9500, _vector_of(ctx, total, ct), wire.Reason.MALFORMED_PAYLOAD)


def test_attack_sybil_masks_and_an_honest_sum_reach_the_ckks_wrap_point() -> None:
    """Decryption wraps at q0 / 2^(scale bits + 1), about 2^19 for the pinned context: exactly the
    bound the masks of a full cohort could reach. 127 Sybil seeds ground for large masks, plus an
    honest-range offset, put a coordinate on the wrap point and the target's update decided
    whether it wrapped (13 of 200 against 0 of 200: review 7). Masks and room now stay below it."""
    import tenseal.sealapi  # noqa: F401  (registers the SEAL types the modulus query returns)

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    ctx = kh._ckks()
    q0 = ctx.seal_context().data.first_context_data().parms().coeff_modulus()[0].value()
    wrap = q0 / 2 ** (RunConfig(protection="ckks").train_protection(0.0).ckks_scale_bits + 1)
    reach = wire.CKKS_MASK_SUM_BOUND + ckks_release.CKKS_MAX_ROOM
    assert reach < wrap, f"masks and room reach {reach:g}, the decryption wraps at {wrap:g}"
    kh.close()


def test_attack_values_hidden_in_slots_the_key_holder_never_reads_reach_its_decryption() -> None:
    """TenSEAL decrypts only the first `size` slots of a vector, and the size is a field of the
    bytes the aggregator sends. The aggregator added to a cohort's sum a vector of zeros in the
    read slots and large values in the others: the key holder released as usual, although those
    values moved what it decrypted (pushed to the decryption's wrap point, whether it wrapped
    depended on the target's update, beyond any noise: review 6). Hidden values are now refused."""
    import tenseal as ts

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=8), 9300)
    ctx = ts.context_from(kh.ckks_public_context())
    hidden = np.zeros(params.ckks_poly_modulus // 2)
    hidden[CKKS_N:] = 1000.0
    extra = ts.ckks_vector_from(ctx, _with_size(ts.ckks_vector(ctx, hidden.tolist()).serialize(), CKKS_N))
    assert extra.size() == CKKS_N
    request = _cohort_request(kh, params, blobs, seed, 9300, _summed(ctx, blobs) + extra)
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        kh.ckks_decrypt_sum(request)
    assert e.value.reason is wire.Reason.OUT_OF_RANGE  # one reason for every refusal after decryption
    kh.close()


def test_attack_imaginary_parts_of_the_ckks_slots_reach_the_wrap_point() -> None:
    """CKKS slots are complex and the key holder read only their real parts. An encryption (public
    key only) of slots with real parts 0 and large imaginary parts passed every check and put the
    aggregator's value on two of the polynomial's coefficients, up to the wrap point, where the
    target's update decided whether it wrapped (13 of 300 refusals for +C, 0 of 300 for -C, each
    one certain: review 8). Every upload's imaginary parts are ~0; others are refused."""

    import tenseal as ts
    from tenseal import sealapi

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=11), 9600)
    ctx = ts.context_from(kh.ckks_public_context())
    total = _summed(ctx, blobs)
    seal, plain = ctx.seal_context().data, sealapi.Plaintext()
    push = sealapi.Ciphertext(seal)
    slots = [complex(0.0, 1000.0)] * (params.ckks_poly_modulus // 2)
    sealapi.CKKSEncoder(seal).encode(slots, seal.first_parms_id(), ctx.global_scale, plain)
    sealapi.Encryptor(seal, ctx.public_key().data).encrypt(plain, push)
    (ct,) = total.ciphertext()
    sealapi.Evaluator(seal).add_inplace(ct, push)
    _assert_refused(kh, params, blobs, seed, 9600, _vector_of(ctx, total, ct), wire.Reason.OUT_OF_RANGE)


def test_attack_a_training_device_is_declared_held_out_in_another_run_to_read_its_evaluation() -> None:
    """Which devices are held out is a hash of the run's seed and evaluation fraction, both the
    aggregator's. A device that trained in one run (under differential privacy, say) was declared
    held out in a second run (evaluation fraction 0.999) and evaluated there: the key holder
    releases evaluations without its noise floor (counts must stay exact), so beside k - 1 Sybil
    seals the device's score bin and outcome came out exact (a helper's attack, review 3). A device
    now keeps the role of its first task for a key holder, and the other way round."""
    from fedchurn.simulations.flower_client import app

    cfg, kh, grid, node, data = _review_node(run_id=91)
    other = replace(cfg, eval_fraction=0.999)
    second = InProcessGrid(app, grid.node_config, other.to_flower(), 92)
    target = next(
        d
        for d in data
        if not is_eval_device(cfg.seed, d, cfg.eval_fraction)
        and is_eval_device(other.seed, d, other.eval_fraction)
        and len(data[d].time)
        and data[d].eval_x is not None
    )
    seed = round_seed_bytes(11)
    trains = RoundTask("train", 1, 1, 1, 0.0, (target,), (0,), (seed,), init_params(0), kh.public_key())
    assert NodeReply.from_message(grid.deliver(trains.to_message(node))).devices == (target,)
    evaluates = RoundTask("evaluate", 1, 2, 1, 0.0, (target,), (0,), (seed,), init_params(0), kh.public_key())
    got = NodeReply.from_message(second.deliver(evaluates.to_message(node)))
    assert not second.errors, second.errors[:2]
    assert got.devices == (), (
        f"device {target} trained in run 91 and evaluated in run 92, where the aggregator declared it "
        "held out: its evaluation is released without the noise floor"
    )
    # ... and a device that evaluated first never trains for this key holder.
    evaluator = next(d for d in data if is_eval_device(cfg.seed, d, cfg.eval_fraction) and d != target)
    first = RoundTask("evaluate", 1, 3, 1, 0.0, (evaluator,), (0,), (seed,), init_params(0), kh.public_key())
    assert NodeReply.from_message(grid.deliver(first.to_message(node))).devices == (evaluator,)
    third = InProcessGrid(app, grid.node_config, replace(cfg, eval_fraction=0.0).to_flower(), 93)
    late = RoundTask("train", 1, 4, 1, 0.0, (evaluator,), (0,), (seed,), init_params(0), kh.public_key())
    assert NodeReply.from_message(third.deliver(late.to_message(node))).devices == ()


def test_a_ckks_clip_whose_honest_sums_could_reach_the_wrap_point_is_refused_before_anything_opens() -> None:
    """The other half of review 6's wrap attack: with a clip in the thousands an honest-looking sum
    could itself sit near the decryption's wrap point (the helper's runs used 5,000). The key
    holder refuses a clip whose largest cohort may exceed a quarter of the masks' range, before
    any seal is opened."""
    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=5000.0).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=9), 9400)
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        _ckks_ask(kh, params, blobs, seed, 9400, np.zeros(CKKS_N))
    assert e.value.reason is wire.Reason.BAD_REQUEST and not kh.answered(9400, 0)
    kh.close()


def test_attack_a_ckks_sum_counts_the_target_twice_and_only_its_mask_hides_it() -> None:
    """The aggregator adds the target's ciphertext to its cohort's sum a second time (review 8's
    k-fold sum, public operations only). The devices' scale and level are kept and the key holder
    removes the target's mask once, so the release carries 2x + the mask: the noise floor no longer
    bounds the target's reach, only the mask's width does. On 5d675e4 that release was answered
    whenever the room of the range check was wide next to the masks (a large clip; the helper read
    45 of 600 trials confidently). The key holder now refuses, before any seal opens, requests
    whose range check would let a leftover mask through with odds above 2^-64."""
    import tenseal as ts

    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=2700.0).train_protection(0.0)
    assert ckks_release.ckks_leftover_bits(params, CKKS_N) < ckks_release.CKKS_LEFTOVER_BITS
    updates = np.zeros((5, CKKS_N))
    updates[0, 0] = 0.3 * params.coord_clip(CKKS_N)  # the target
    blobs, seed = _ckks_cohort(kh, params, updates, 9700)
    ctx = ts.context_from(kh.ckks_public_context())
    twice = _summed(ctx, blobs) + _summed(ctx, blobs[:1])
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        kh.ckks_decrypt_sum(_cohort_request(kh, params, blobs, seed, 9700, twice))
    assert e.value.reason is wire.Reason.BAD_REQUEST, e.value
    assert not kh.answered(9700, 0), "nothing is opened or spent for a request refused on its settings"
    kh.close()


def test_the_shipped_ckks_settings_refuse_a_leftover_mask_with_room_to_spare() -> None:
    """Every CKKS upload fedchurn ships (training with and without noise, evaluation histograms,
    the feature mean) passes the key holder's leftover-mask rule with room to spare; the feature
    mean only since its per-coordinate bound is the features' own clip (it was 3x that, and its
    requests would now be refused). A clip whose room nears the masks is refused."""
    from fedchurn.shared.ckks_release import ckks_release_problem

    for z in (0.0, 1.0):
        cfg = RunConfig(protection="ckks")
        spec = cfg.model_spec()
        for params, n in (
            (cfg.train_protection(z), spec.n_params),
            (cfg.eval_protection(), histogram_length(cfg.outputs)),
            (cfg.stats_protection(z), spec.n_features + 1),
        ):
            assert ckks_release_problem(params, n) is None
            assert ckks_release.ckks_leftover_bits(params, n) > 1.3 * ckks_release.CKKS_LEFTOVER_BITS, (z, n)
    wide = RunConfig(protection="ckks", clip_norm=100.0).train_protection(1.0)
    assert ckks_release.ckks_leftover_bits(wide, N_PARAMS) == 0.0
    assert ckks_release_problem(wide, N_PARAMS) is not None


# --- review 9 (decision 143): the CKKS secret key, two requests away -----------------------------


def _ckks_words(ct: Any) -> tuple[bytes, bytes, np.ndarray]:
    """A SEAL ciphertext's serialization split into (header, members, coefficient words): SEAL
    compresses with zstd; the aggregator reads every byte of what it relays."""
    import tempfile

    import zstandard

    with tempfile.NamedTemporaryFile() as f:
        ct.save(f.name)
        raw = Path(f.name).read_bytes()
    assert raw[:2] == b"\x5e\xa1" and raw[5] == 2, raw[:8].hex()  # SEAL magic, zstd
    body = zstandard.ZstdDecompressor().decompressobj().decompress(raw[16:])
    n = ct.size() * ct.poly_modulus_degree() * ct.coeff_modulus_size()
    return raw[:16], body[: -8 * n], np.frombuffer(body[-8 * n :], dtype="<u8").copy()


def _with_key_multiple(ctx: Any, ct: Any, power: int, c: int) -> Any:
    """`ct` with c * X^power added to its second polynomial (public data only): it decrypts to
    what it did plus c * X^power * s, s the key holder's secret key; size, scale and level stay."""
    import struct
    import tempfile

    from tenseal import sealapi

    seal = ctx.seal_context().data
    evaluator = sealapi.Evaluator(seal)
    q0 = seal.first_context_data().parms().coeff_modulus()[0].value()
    evaluator.transform_from_ntt_inplace(ct)
    header, members, words = _ckks_words(ct)
    n = ct.poly_modulus_degree()
    words[n + power] = np.uint64((int(words[n + power]) + c) % q0)
    body = members + words.astype("<u8").tobytes()
    head = bytearray(header)
    head[5] = 0  # stored uncompressed
    head[8:16] = struct.pack("<Q", 16 + len(body))
    out = sealapi.Ciphertext(seal)
    with tempfile.NamedTemporaryFile() as f:
        Path(f.name).write_bytes(bytes(head) + body)
        out.load(seal, f.name)
    evaluator.transform_to_ntt_inplace(out)
    return out


def test_attack_a_multiple_of_the_secret_key_in_a_released_ckks_sum_gives_the_key_away() -> None:
    """The aggregator adds c * X^k to the second polynomial of a Sybil cohort's summed ciphertext:
    the decryption carries c * X^k * s, whose slots (~3e-4 for c = 2^21) passed the copy and
    imaginary checks (tolerance 1e-3) and the range, and an evaluation (released without the noise
    floor) rounded them to a grid of 1.4e-6. Two requests (k = 0 and N/2) gave the real and
    imaginary parts of s in every slot, so s itself: every coefficient within 0.02 of an integer,
    and a target's upload decrypted with it matched the key holder's to 1e-12 (review 9). The
    checks now tolerate 2^-20, about 20 times what honest sums of 128 uploads show; what fits
    under that is 2^16 times below the noise every release now carries."""
    import tenseal as ts

    cfg = RunConfig(protection="ckks", k_min=5)
    # An evaluation's parameters for a histogram of CKKS_N values: each coordinate clipped to 1.
    params = cfg.eval_protection().replace(
        coord_clip_factor=math.sqrt(CKKS_N) / cfg.eval_protection().clip_norm
    )
    kh = keyholder_module.KeyHolder.generate(
        k_min=5, min_noise_multiplier=4.0, with_ckks=True, noise_exempt=[(params, CKKS_N)]
    )
    ctx = ts.context_from(kh.ckks_public_context())
    n_poly = params.ckks_poly_modulus

    def ask(power: int, c: int, round_id: int) -> np.ndarray:
        blobs, seed = _sybil_cohort(kh, params, np.zeros((5, CKKS_N)), round_id)  # Sybils
        total = _summed(ctx, blobs)
        (ct,) = total.ciphertext()
        total = _vector_of(ctx, total, _with_key_multiple(ctx, ct, power, c))
        return np.asarray(
            kh.ckks_decrypt_sum(_cohort_request(kh, params, blobs, seed, round_id, total)).values
        )

    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        real = ask(0, 2**21, 9800)
        imag = ask(n_poly // 2, 2**21, 9801)
        # What the helper did with them (the slots are the roots exp(i pi 3^j / N)):
        e_j = np.array([pow(3, j, 2 * n_poly) for j in range(CKKS_N)])
        raise AssertionError(
            f"released twice: {CKKS_N} slots of sigma(s), real {real[:2]} and imaginary {imag[:2]} "
            f"parts (x 2^19), at roots {e_j[:2]}: with all {n_poly // 2} slots, the secret key"
        )
    assert e.value.reason is wire.Reason.OUT_OF_RANGE
    # What still fits under the tolerance is drowned: each release's noise is at least
    # CKKS_FLOOD_STD, 2^16 times the most a key multiple may put in a slot unrefused.
    assert ckks_release.CKKS_FLOOD_STD >= 2**16 * keyholder_module.CKKS_COPY_TOLERANCE
    assert ckks_release.ckks_release_std(params, CKKS_N) >= ckks_release.CKKS_FLOOD_STD
    assert params.noise_multiplier == 0  # an evaluation: no DP noise, the flood alone
    kh.close()


def test_a_ckks_key_stops_decrypting_after_its_refusals_and_remembers_it(tmp_path: Path) -> None:
    """The copy and imaginary checks must be exact to be tight, so each refusal after decryption
    is a noise-free bit about what decrypted, and a key multiple is part of that (review 9). A key
    answers at most CKKS_MAX_REFUSALS of them; then it decrypts nothing more, across restarts,
    before any seal opens."""
    key, state = tmp_path / "kh.key", tmp_path / "kh.sqlite"
    keyholder_module.KeyHolder.provision(key)
    kh = keyholder_module.KeyHolder.open(key, state, k_min=5)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    extra = np.zeros(CKKS_N)
    extra[3] = 100.0  # out of range: refused after decryption
    for round_id in range(9900, 9900 + keyholder_module.CKKS_MAX_REFUSALS):
        blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=round_id), round_id)
        with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
            _ckks_ask(kh, params, blobs, seed, round_id, extra)
        assert e.value.reason is wire.Reason.OUT_OF_RANGE
    kh.close()
    kh = keyholder_module.KeyHolder.open(key, state, k_min=5)  # a restart
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=1), 9990)
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        _ckks_ask(kh, params, blobs, seed, 9990, np.zeros(CKKS_N))  # an honest cohort
    assert e.value.reason is wire.Reason.MODE_DISABLED and not kh.answered(9990, 0)
    kh.close()


def test_two_processes_on_one_state_never_exceed_the_ckks_refusal_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 22: the budget was checked under a lock of one process and recorded after the
    decryption, so two key holders on one state file (a restart overlapping the old process)
    recorded 17 refusals against 16. The check is now in the transaction that records the cohort:
    here two instances decrypt at the same moment (a barrier) with 15 refusals recorded."""
    import threading

    key, state = tmp_path / "kh.key", tmp_path / "kh.sqlite"
    keyholder_module.KeyHolder.provision(key)
    first = keyholder_module.KeyHolder.open(key, state, k_min=5)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    extra = np.zeros(CKKS_N)
    extra[3] = 100.0  # out of range: refused after decryption
    budget = keyholder_module.CKKS_MAX_REFUSALS
    for round_id in range(9700, 9700 + budget - 1):
        blobs, seed = _ckks_cohort(first, params, _ckks_updates(params, 5, seed=round_id), round_id)
        with pytest.raises(keyholder_module.KeyHolderRefusedError):
            _ckks_ask(first, params, blobs, seed, round_id, extra)
    second = keyholder_module.KeyHolder.open(key, state, k_min=5)
    asks = [
        (kh, *_ckks_cohort(kh, params, _ckks_updates(params, 5, seed=r), r), r)
        for kh, r in ((first, 9800), (second, 9801))
    ]
    both = threading.Barrier(2, timeout=60)
    decrypt = keyholder_module._decrypt_slots

    def together(ctx: Any, vectors: list[Any]) -> Any:
        both.wait()  # both have passed the budget's first check and decrypt now
        return decrypt(ctx, vectors)

    monkeypatch.setattr(keyholder_module, "_decrypt_slots", together)
    reasons: list[wire.Reason] = []

    def ask(kh: Any, blobs: list[bytes], seed: bytes, round_id: int) -> None:
        try:
            _ckks_ask(kh, params, blobs, seed, round_id, extra)
        except keyholder_module.KeyHolderRefusedError as e:
            reasons.append(e.reason)

    threads = [threading.Thread(target=ask, args=a) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = first._state.refusals()
    assert recorded <= budget, f"{recorded} refusals recorded against a budget of {budget}: {reasons}"
    assert sorted(r.value for r in reasons) == sorted(["mode_disabled", "out_of_range"])


def test_a_ckks_release_whose_state_write_fails_stays_counted_as_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 22: with the refusal mark failing (a full disk), out-of-range requests were decrypted
    and spent but no refusal was counted, so the budget never ran out. A cohort is now recorded as
    refused before anything is released and marked released only after: a failing write leaves
    it counted (fail closed)."""
    key, state = tmp_path / "kh.key", tmp_path / "kh.sqlite"
    keyholder_module.KeyHolder.provision(key)
    kh = keyholder_module.KeyHolder.open(key, state, k_min=5)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)

    def disk_full(*_: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(kh._state, "refuse", disk_full, raising=False)  # the old code's refusal mark
    monkeypatch.setattr(kh._state, "release", disk_full)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=3), 9600)
    with pytest.raises((keyholder_module.KeyHolderRefusedError, sqlite3.OperationalError)):
        _ckks_ask(kh, params, blobs, seed, 9600, np.zeros(CKKS_N))  # honest; its write fails: not released
    extra = np.zeros(CKKS_N)
    extra[3] = 100.0
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=4), 9601)
    with pytest.raises((keyholder_module.KeyHolderRefusedError, sqlite3.OperationalError)):
        _ckks_ask(kh, params, blobs, seed, 9601, extra)
    assert kh._state.refusals() == 2, "a decryption whose state write failed went uncounted"


def test_attack_rounding_to_nearest_turns_a_sub_grid_term_into_a_whole_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key holder rounded each released coordinate to the nearest grid step before its noise.
    An aggregator that adds an offset of half a step to every coordinate makes the rounding
    follow the sign of whatever else is there, however small: a key multiple of ~2^-10 steps
    became a whole step on 99.7 % of 8,192 coordinates (review 10), worth 2^10 times more to it
    per release than the noise alone allows. Rounding is now random and unbiased, on the key
    holder's own coins. Shown with the noise switched off, so the rounding is what is read."""
    monkeypatch.setattr(keyholder_module, "discrete_gaussian", lambda _s, m: np.zeros(m, dtype=np.int64))
    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    grid = ckks_release.ckks_grid(params)
    ups = []
    for round_id, offset in ((9950, 0.75), (9951, 0.25)):  # half a step plus or minus a quarter
        blobs, seed = _sybil_cohort(kh, params, np.zeros((5, CKKS_N)), round_id)  # Sybils
        got = _ckks_ask(kh, params, blobs, seed, round_id, np.full(CKKS_N, offset * grid))
        steps = np.asarray(got.values) / grid
        assert np.all(np.isin(np.round(steps, 3), [0.0, 1.0])), steps[:4]
        ups.append(float(np.mean(steps > 0.5)))
    above, below = ups
    # Unbiased: each rounds up with the chance of its fractional part (0.75 and 0.25), not always
    # and never, which is what told the sign of the quarter step.
    assert 0.45 < above < 0.98 and 0.02 < below < 0.55, (above, below)
    kh.close()


def test_a_refusal_after_decryption_comes_after_the_same_work_as_a_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every refusal after decryption gives one reason and one message (review 8), but the copy
    and imaginary checks refused in 4 ms while the range check came after the noise, ~300 ms
    later: the time said which check failed (review 10). The noise is now drawn whatever the
    outcome, before anything is decided."""
    import tenseal as ts

    drawn: list[int] = []
    from fedchurn.server.dp import discrete_gaussian as real_draw

    def recording(sigma: float, m: int) -> np.ndarray:
        drawn.append(m)
        return real_draw(sigma, m)

    monkeypatch.setattr(keyholder_module, "discrete_gaussian", recording)
    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=12), 9960)
    ctx = ts.context_from(kh.ckks_public_context())
    hidden = np.zeros(params.ckks_poly_modulus // 2)
    hidden[CKKS_N:] = 1.0  # fails the copy check
    extra = ts.ckks_vector_from(ctx, _with_size(ts.ckks_vector(ctx, hidden.tolist()).serialize(), CKKS_N))
    request = _cohort_request(kh, params, blobs, seed, 9960, _summed(ctx, blobs) + extra)
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        kh.ckks_decrypt_sum(request)
    assert e.value.reason is wire.Reason.OUT_OF_RANGE
    assert drawn == [CKKS_N], "refused before the noise was drawn"
    kh.close()


def test_any_failure_after_decryption_is_the_one_counted_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """After decryption every outcome but a release must be the same refusal, counted against the
    key: an exception of another kind would reach the aggregator as another answer (the service
    answers a ValueError with bad_request), a bit outside the budget (review 11)."""

    def failing(*_: Any) -> Any:
        raise ValueError("a figure of the sum: 0.123")

    monkeypatch.setattr(keyholder_module, "ckks_rooms", failing)
    kh = keyholder_module.KeyHolder.generate(k_min=5, with_ckks=True)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    blobs, seed = _ckks_cohort(kh, params, _ckks_updates(params, 5, seed=13), 9970)
    with pytest.raises(keyholder_module.KeyHolderRefusedError) as e:
        _ckks_ask(kh, params, blobs, seed, 9970, np.zeros(CKKS_N))
    assert e.value.reason is wire.Reason.OUT_OF_RANGE and "0.123" not in str(e.value)
    assert kh._state.refusals() == 1
    kh.close()


def _store_node(
    tmp_path: Path, kh: Any, cfg: RunConfig, pinned: dict[str, object] | None = None
) -> tuple[InProcessGrid, Path, int]:
    """One deployed node of 200 stores (the real ClientApp, `StoreSource`, `FileLedger`), with
    `pinned` settings in its node configuration."""
    from fedchurn.client import deploy_client
    from fedchurn.server.deploy import population_stores

    (store_dir,), today = population_stores(tmp_path / "stores", 1, 200, days=120)
    conf = {"store-dir": str(store_dir), "today": today, **dict(kh.pin().to_node_config()), **(pinned or {})}
    grid = InProcessGrid(deploy_client.app, lambda node: dict(conf), cfg.to_flower(), run_id=7)
    return grid, store_dir, today


def _mask_sum_request(
    cfg: RunConfig, task: RoundTask, blobs: tuple[bytes, ...], params: ProtectionParams, n: int
) -> Any:
    """The aggregator's request for one cohort a node's reply uploaded (every blob, one cohort)."""
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    head = wire.Header.parse(blobs[0])
    entries = tuple(
        keyholder_module.SealedEntry(f"d{i}", b[wire.HEADER_LEN : cut]) for i, b in enumerate(blobs)
    )
    seed = task.bound_round_seeds(cfg.digest())[0]
    return keyholder_module.MaskSumRequest(
        head.round_id, head.cohort_id, head.model_version, seed, n, params, entries
    )


def _enrol(store_dir: Path, today: int, n: int, first: int = 0) -> None:
    """`n` users who installed the app 8 days ago: too new for a labelled or a scored day (stores
    new-<first>.. onwards)."""
    from fedchurn.client.store import EventStore
    from fedchurn.shared.events import SECONDS_PER_DAY
    from fedchurn.simulations.population import generate_device
    from fedchurn.simulations.scenario import load_scenario

    scenario = load_scenario("default")
    for j in range(first, first + n):
        ev = generate_device(0, 500 + j, scenario, 120).events
        day = (ev["ts"] + ev["tz_min"].astype(np.int64) * 60) // SECONDS_PER_DAY
        with EventStore(store_dir / f"new-{j:03d}.sqlite") as store:
            store.append(ev[day >= today - 8])


@pytest.mark.parametrize(
    ("purpose", "noise"),
    [("train", 0.0), ("evaluate", 0.0), ("train", 1e-300), ("stats", 1e-300), ("evaluate", 1e-300)],
)
def test_attack_newly_enrolled_devices_fill_a_cohort_around_one_device(
    tmp_path: Path, purpose: Purpose, noise: float
) -> None:
    """Review 13: a device without data (for its first 27 days no labelled and no scored day)
    uploads exact zeros under any honest model, and the aggregator sees devices enrol (a node's
    roster grows). One old device and k-1 new ones, each in its role, sent the same honest task,
    passed every rule; on 402d6ea the key holder released the cohort, which was the old device's
    update (training) or its score bin and churn outcome (evaluation, exempt from any noise
    floor) alone. Uploads that carry nothing no longer count towards k (decision 150).
    Review 18: the same with a noise multiplier of 1e-300 (the task's, or the run's eval-noise),
    which the key holder draws as exact zeros, once made every device set its data bit (review
    16's rule under noise): the release was the old device's update, feature means or outcome,
    in the default deployment. Only noise that protects one device now sets every bit."""
    from fedchurn.client.deploy_client import StoreSource
    from fedchurn.shared.messages import RosterReply, roster_query

    held = purpose == "evaluate"
    cfg = RunConfig(days=120, k_min=10, eval_noise=noise if held else 0.0)
    k, n_params = cfg.k_min, cfg.model_spec().n_params
    kh = keyholder_module.KeyHolder.generate(k_min=k)
    grid, store_dir, today = _store_node(tmp_path, kh, cfg)
    before = set(RosterReply.from_message(grid.deliver(roster_query(1))).devices)
    fillers: list[int] = []
    for first in range(0, 400, 40):  # which new devices are held out is a hash of their keyed index
        if len(fillers) >= k - 1:
            break
        _enrol(store_dir, today, 40, first)
        new = sorted(set(RosterReply.from_message(grid.deliver(roster_query(1))).devices) - before)
        fillers = [d for d in new if is_eval_device(cfg.seed, d, cfg.eval_fraction) == held][: k - 1]
    truth = StoreSource().load(grid.context(1), cfg, sorted(before))  # to pick a target, only
    target = next(
        d
        for d in sorted(before)
        if is_eval_device(cfg.seed, d, cfg.eval_fraction) == held
        and (truth[d].eval_x is not None if held else len(truth[d].x) > 0)
    )
    assert len(fillers) == k - 1
    devices = (target, *fillers)
    cohort = EVAL_COHORTS if held else 0
    stats = purpose == "stats"
    task = RoundTask(
        purpose, 1, 1, 1, 0.0 if held else noise, devices, (cohort,) * k, (bytes(32),) * k,
        None if stats else init_params(0), kh.public_key(),
    )  # fmt: skip
    reply = NodeReply.from_message(grid.deliver(task.to_message(1)))
    assert not grid.errors and reply.devices == devices  # every device answered, in its role
    if held:
        params, n = cfg.eval_protection(), cfg.eval_length
    elif stats:
        params, n = cfg.stats_protection(noise), cfg.model_spec().n_features + 1
    else:
        params, n = cfg.train_protection(noise), n_params
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    request = _mask_sum_request(cfg, task, reply.blobs, params, n)
    try:
        resp = kh.mask_sum(request)
    except keyholder_module.KeyHolderRefusedError as e:
        assert e.reason is wire.Reason.COHORT_TOO_SMALL and str(k) in str(e)
        return
    m, bits = params.n_coords(n), params.ring_bits
    total = sum(wire.unpack_bits(b[cut:], bits, m).astype(np.int64) for b in reply.blobs)
    ring = (total - resp.mask_sum.astype(np.int64)) % (1 << bits)
    nonzero = int(np.count_nonzero(ring))
    pytest.fail(
        f"{purpose} at noise {noise:g} (std {resp.noise_std_int:g}): the key holder released a "
        f"cohort of {len(resp.included)} (k={k}) in which "
        f"{k - 1} devices enrolled 8 days ago uploaded zeros: the release is device {target}'s "
        f"upload alone ({nonzero} non-zero of {m} values)"
    )


def test_a_task_no_upload_can_be_protected_for_is_refused_before_it_spends_a_budget(tmp_path: Path) -> None:
    """Review 18: a run configuration under which no upload can be protected (a 40-bit ring, or
    k-min above max-cohort) was refused only after each listed device's claim, so it spent a round
    and an upload of every device's `max-uploads` on a task that could never be released. Its
    protection is now built before the claim."""
    from fedchurn.client.device_config import MAX_UPLOADS_KEY
    from fedchurn.shared.messages import RosterReply, roster_query

    cfg = RunConfig(days=120, k_min=10)
    kh = keyholder_module.KeyHolder.generate(k_min=cfg.k_min)
    grid, _, _ = _store_node(tmp_path, kh, cfg, {MAX_UPLOADS_KEY: 1})
    roster = RosterReply.from_message(grid.deliver(roster_query(1))).devices
    trainers = tuple(d for d in roster if not is_eval_device(cfg.seed, d, cfg.eval_fraction))[:3]

    def train(run: RunConfig, round_id: int) -> Message:
        grid.contexts.clear()
        grid.run_config = run.to_flower()
        cohorts, seeds, model = (0,) * 3, (bytes(32),) * 3, init_params(0)
        task = RoundTask("train", 1, round_id, 1, 0.0, trainers, cohorts, seeds, model, kh.public_key())
        return grid.deliver(task.to_message(1))

    for round_id, bad in enumerate((replace(cfg, ring_bits=40), replace(cfg, k_min=1000)), start=1):
        train(bad, round_id)
        assert grid.errors[-1].startswith("ValueError"), grid.errors[-1]  # named, not the fixed error
    answered = NodeReply.from_message(train(cfg, 3)).devices
    assert answered == trainers, (
        f"after two tasks no upload could be protected for, {len(answered)} of 3 devices pinning "
        f"{MAX_UPLOADS_KEY}=1 could still answer: the refused tasks spent their budget"
    )


def _cohort_uploads(
    kh: Any, params: ProtectionParams, updates: np.ndarray, round_id: int, round_seed: bytes = ROUND_SEED
) -> list[bytes]:
    """The devices' own uploads of `updates` (one cohort, cohort id 0), secagg or CKKS."""
    from fedchurn.client.protect import protect_batch
    from fedchurn.shared.keyholder_pin import KeyHolderPublic

    ctx = kh.ckks_public_context() if params.scheme.homomorphic else None
    public = KeyHolderPublic(kh.public_key(), ctx)
    n = len(updates)
    return protect_batch(updates, params, public, round_id, [0] * n, 1, [round_seed] * n, [None] * n)


def _opened_seeds(kh: Any, params: ProtectionParams, blobs: list[bytes], n_params: int) -> list[bytes]:
    """What the key holder reads in each upload's seal (the test plays the key holder)."""
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    info = wire.seal_info(blobs[0][: wire.HEADER_LEN], params.config_digest(ROUND_SEED, n_params))
    return [kh._open(keyholder_module.SealedEntry("x", b[wire.HEADER_LEN : cut]), info) for b in blobs]


@pytest.mark.parametrize("protection", ["secagg", "ckks"])
def test_attack_a_crafted_model_makes_devices_set_the_data_bit_yet_upload_nothing(protection: Any) -> None:
    """Review 14: the data bit was set from the clipped values before rounding. A crafted model
    (a unit alive on every device at 1e-12) gave devices with data updates of ~3e-33: the bit
    was set, and stochastic rounding made the upload exact zeros, which the aggregator predicts;
    nine such devices around one target released its update alone (in CKKS, plus only the flood
    noise). The bit now follows what is uploaded: the rounded integers (secagg), values at or
    above the release grid (CKKS)."""
    ckks = protection == "ckks"
    kh = keyholder_module.KeyHolder.generate(k_min=2, with_ckks=ckks)
    params = RunConfig(protection=protection, k_min=2).train_protection(0.0)
    n = CKKS_N if ckks else N_PARAMS
    updates = np.full((3, n), 3e-33)
    updates[2] = np.random.default_rng(3).normal(size=n) * 0.01  # an honest update
    blobs = _cohort_uploads(kh, params, updates, 9800 + ckks)
    bits = [wire.carries_data(s) for s in _opened_seeds(kh, params, blobs, n)]
    if bits[:2] != [False, False]:
        pytest.fail(
            f"{protection}: devices whose values were 3e-33 set the data bit ({bits[:2]}), yet what "
            "they uploaded is nothing the release can show: they count towards k as fillers"
        )
    assert bits[2]


def test_attack_a_cohort_refused_for_want_of_data_is_asked_again_with_a_subset() -> None:
    """Review 14: a refusal for too few devices with data consumed nothing, so the aggregator could
    ask again for the same round and cohort with subsets of its seals: the first subset that is
    released says whether the one device added last carries data (a held-out user with no scored
    day has churned), in one round, without Sybils and whatever `max-uploads` is. The refusal now
    consumes the cohort and its seals as an answer would."""
    kh = keyholder_module.KeyHolder.generate(k_min=10)
    params = RunConfig().train_protection(0.0)
    updates = np.random.default_rng(4).normal(size=(20, N_PARAMS)) * 0.01
    updates[10:] = 0.0  # ten devices without data
    blobs = _cohort_uploads(kh, params, updates, 9900)
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    entries = [keyholder_module.SealedEntry(f"d{i}", b[wire.HEADER_LEN : cut]) for i, b in enumerate(blobs)]

    def ask(members: list[int]) -> Any:
        chosen = tuple(entries[i] for i in members)
        return kh.mask_sum(keyholder_module.MaskSumRequest(9900, 0, 1, ROUND_SEED, N_PARAMS, params, chosen))

    with pytest.raises(keyholder_module.KeyHolderRefusedError) as first:
        ask([0, *range(11, 20)])  # one device with data and nine without
    assert first.value.reason is wire.Reason.COHORT_TOO_SMALL
    try:
        answer = ask(list(range(10)))  # the ten with data, same round and cohort
    except keyholder_module.KeyHolderRefusedError as second:
        assert second.reason is wire.Reason.ALREADY_ANSWERED
        return
    pytest.fail(
        f"after a refusal for want of data, the same cohort was asked again and released "
        f"({len(answer.included)} devices): subsets of one cohort's seals read one device's data bit"
    )


@pytest.mark.parametrize("spoiler", ["a seal that does not open", "a ciphertext that does not parse"])
def test_attack_a_ckks_refusal_that_spends_nothing_reads_whether_a_device_carries_data(spoiler: str) -> None:
    """Review 22: the CKKS key holder counted the data bits (a refusal that spends the cohort)
    before it refused, spending nothing, a seal that does not open or a ciphertext that does not
    parse. One bad entry in a request made "do k of these carry data?" a free answer, asked again
    with subsets of the same real devices' seals until the one that spends came without the
    target: 12 of 12 targets read, no Sybils, default noise. Every refusal that spends nothing now
    comes first, so the answer to such a request does not depend on any device's data."""
    import tenseal as ts

    kh = keyholder_module.KeyHolder.generate(k_min=5)
    params = RunConfig(protection="ckks", k_min=5, clip_norm=0.5).train_protection(0.0)
    ctx = ts.context_from(kh.ckks_public_context())
    answers = {}
    for round_id, target_has_data in ((81_000, True), (81_001, False)):
        updates = _ckks_updates(params, 5, seed=round_id)
        if not target_has_data:
            updates[0] = 0.0  # the target (device 0) has no labelled day: it uploads zeros
        blobs = _cohort_uploads(kh, params, updates, round_id, ROUND_SEED)
        request = _cohort_request(kh, params, blobs, ROUND_SEED, round_id, _summed(ctx, blobs))
        if spoiler == "a seal that does not open":
            garbage = keyholder_module.SealedEntry("nobody", os.urandom(wire.SEAL_LEN))
            request = replace(request, entries=(*request.entries, garbage))
        else:
            request = replace(request, ciphertext=b"\x00")
        with pytest.raises(keyholder_module.KeyHolderRefusedError) as refused:
            kh.ckks_decrypt_sum(request)
        answers[target_has_data] = refused.value.reason
    if answers[True] != answers[False]:
        pytest.fail(
            f"with {spoiler}, the key holder answered {answers[True].value!r} when the target carried "
            f"data and {answers[False].value!r} when it did not: a bit of its data, asked for free"
        )
    assert answers[True] is not wire.Reason.COHORT_TOO_SMALL  # a refusal that spends nothing


def test_attack_an_exact_evaluation_shows_a_held_out_device_alone_in_its_score_bin(tmp_path: Path) -> None:
    """Review 15: an evaluation histogram is released exact (counts must be), and evaluations are
    exempt from the key holder's noise floor; a model crafted so that one held-out device scores
    alone in a bin showed its churn day in that bin's row, even with a floor of z = 4 and
    `max-uploads = 1`. A node whose devices pin `min-noise` now refuses an exact evaluation before
    anything is claimed or read; with `eval-noise` at its pin it answers, and the key holder's
    release carries that noise on every cell (decision 151)."""
    from fedchurn.client.deploy_client import LEDGER_FILE, StoreSource
    from fedchurn.client.device_config import MIN_NOISE_KEY
    from fedchurn.client.flower_app import _histograms
    from fedchurn.shared.messages import RosterReply, roster_query

    exact = RunConfig(days=120, k_min=10)
    noised = replace(exact, eval_noise=1.0)
    exempt = [(c.eval_protection(), c.eval_length) for c in (exact, noised)]  # the floor spares both
    kh = keyholder_module.KeyHolder.generate(k_min=exact.k_min, min_noise_multiplier=4.0, noise_exempt=exempt)
    grid, store_dir, _ = _store_node(tmp_path, kh, exact, {MIN_NOISE_KEY: 1.0})
    roster = sorted(RosterReply.from_message(grid.deliver(roster_query(1))).devices)
    held = [d for d in roster if is_eval_device(exact.seed, d, exact.eval_fraction)]
    data = StoreSource().load(grid.context(1), exact, held)  # the test's own look, to pick scored devices
    devices = tuple(d for d in held if data[d].eval_x is not None)[: exact.k_min]
    assert len(devices) == exact.k_min
    k = len(devices)

    def ask(cfg: RunConfig, round_id: int) -> RoundTask:
        task = RoundTask(
            "evaluate", 1, round_id, 1, 0.0, devices, (EVAL_COHORTS,) * k, (bytes(32),) * k,
            init_params(0), kh.public_key(),
        )  # fmt: skip
        grid.run_config, grid.contexts = cfg.to_flower(), {}  # the run's configuration, as Flower gives it
        return task

    task = ask(exact, 1)
    reply = grid.deliver(task.to_message(1))
    if not reply.has_error():
        pytest.fail(f"a node pinning {MIN_NOISE_KEY}=1 answered an exact evaluation of {k} held-out devices")
    reason = reply.error.reason or ""
    assert MIN_NOISE_KEY in reason and "eval-noise" in reason
    ledger = store_dir / LEDGER_FILE
    if ledger.exists():  # nothing claimed: the devices may still evaluate once in this run
        import sqlite3

        with sqlite3.connect(ledger) as conn:
            assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0

    task = ask(noised, 2)
    answered = NodeReply.from_message(grid.deliver(task.to_message(1)))
    assert answered.devices == devices
    params, n = noised.eval_protection(), noised.eval_length
    cut = wire.HEADER_LEN + wire.SEAL_LEN
    resp = kh.mask_sum(_mask_sum_request(noised, task, answered.blobs, params, n))
    bits = params.ring_bits
    total = sum(wire.unpack_bits(b[cut:], bits, n).astype(np.int64) for b in answered.blobs)
    release = _signed(((total - resp.mask_sum.astype(np.int64)) % (1 << bits)).astype(np.uint64), bits)
    truth = _histograms(noised, task, [data[d] for d in devices]).sum(axis=0)
    # Before the noise a count is the level times the devices in its cell, a score sum the level
    # times their scores give or take one rounding step per device: what remains is the noise.
    noise = release - params.level * truth
    expected = params.noise_std_int(n)
    assert noise.std() == pytest.approx(expected, rel=0.25)  # 160 cells: ~4.5 standard errors
    assert abs(noise.mean()) < 5 * expected / math.sqrt(n)


def test_attack_sybils_read_whether_a_held_out_device_has_data_from_a_refusal_under_noise(
    tmp_path: Path,
) -> None:
    """Review 16: under `eval-noise` (or DP training) the key holder's noise protects a release
    whoever else is in the cohort, but its refusal for want of data (decision 150) is an answer
    without noise. One target's real upload beside k − 1 seals the aggregator made itself (it knows
    the key holder's key), each carrying data: released if the target had a scored day, refused if
    not: 17 of 17 targets, through a node pinning `min-noise` = 1; with a model crafted to give a
    NaN score (zeros) above a feature threshold, any threshold (16 of 16). Under noise every seed
    now carries the data bit, so the answer no longer depends on the target's data."""
    from fedchurn.client.deploy_client import StoreSource
    from fedchurn.client.device_config import MIN_NOISE_KEY
    from fedchurn.client.protect import protect_batch
    from fedchurn.shared.evaluation import device_histogram
    from fedchurn.shared.keyholder_pin import KeyHolderPublic
    from fedchurn.shared.messages import RosterReply, roster_query

    cfg = RunConfig(days=120, k_min=10, eval_noise=1.0)
    params, n = cfg.eval_protection(), cfg.eval_length
    kh = keyholder_module.KeyHolder.generate(
        k_min=cfg.k_min, min_noise_multiplier=1.0, noise_exempt=[(params, n)]
    )
    grid, store_dir, today = _store_node(tmp_path, kh, cfg, {MIN_NOISE_KEY: 1.0})
    for first in range(0, 200, 20):  # new users (no scored day) until one of them is held out
        _enrol(store_dir, today, 20, first)
        roster = sorted(RosterReply.from_message(grid.deliver(roster_query(1))).devices)
        held = [d for d in roster if is_eval_device(cfg.seed, d, cfg.eval_fraction)]
        data = StoreSource().load(grid.context(1), cfg, held)  # the test's own look, to pick targets
        if any(data[d].eval_x is None for d in held):
            break
    with_day = next(d for d in held if data[d].eval_x is not None)
    without = next(d for d in held if data[d].eval_x is None)
    sybil_rows = np.tile(
        device_histogram(0.5, 0, False, cfg.eval_outcomes, cfg.eval_bins), (cfg.k_min - 1, 1)
    )
    answers = {}
    for round_id, target in enumerate((with_day, without), start=1):
        task = RoundTask(
            "evaluate", 1, round_id, 1, 0.0, (target,), (EVAL_COHORTS,), (bytes(32),), init_params(0),
            kh.public_key(),
        )  # fmt: skip
        reply = NodeReply.from_message(grid.deliver(task.to_message(1)))
        assert reply.devices == (target,)
        bound = task.bound_round_seeds(cfg.digest())[0]
        k = len(sybil_rows)
        sybils = protect_batch(
            sybil_rows, params, KeyHolderPublic(kh.public_key(), None), round_id, [EVAL_COHORTS] * k, 1,
            [bound] * k, [None] * k,
        )  # fmt: skip
        try:
            kh.mask_sum(_mask_sum_request(cfg, task, (*reply.blobs, *sybils), params, n))
            answers[target] = "released"
        except keyholder_module.KeyHolderRefusedError as e:
            answers[target] = e.reason.value
    if answers[without] != answers[with_day]:
        pytest.fail(
            f"beside {cfg.k_min - 1} Sybil seals the key holder answered {answers[with_day]!r} for a "
            f"held-out device with a scored day and {answers[without]!r} for one without: a "
            "noise-free bit of its data"
        )
    assert answers[with_day] == "released"
