"""Upload size and speed of every update-protection mode, against Flower's own FedAvg and SecAgg+.

One call, one machine, the same model size (`n_params`, default 2,286). Per device and round:
`upload_bytes` counts every byte the device's protocol sends (for fedchurn: the one upload;
for SecAgg+: its four stage replies); `flower_bodies_bytes` is the protobuf bodies of the Flower
Message reply(s) carrying it (Flower 1.41 object serialisation, measured); `flower_wire_bytes_est`
adds Flower's HTTP framing at the brief's measured ~840 B per request (one request per object,
plus one for the message push) - an estimate, labelled as such. Server and client times are
wall-clock on this machine. `python -m fedchurn.simulations.protection_bench` prints JSON.

Clients are timed one at a time (`protect_update_ms`, what a phone runs) and batched
(`protect_batch_ms_per_device`, a simulation node answering for many devices); the aggregator adds
each cohort's uploads as one batch (`CohortAggregator.add_batch`). `fedchurn_shipped_scale`
measures the aggregator and the in-process key holder at the shipped defaults (no DP) for 1,000
and 10,000 updates, against the targets of 0.1 s and 1 s.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedchurn.client.protect import protect_batch, protect_update, seal_seed
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.secure_sum import CohortAggregator, mean_update
from fedchurn.shared import wire
from fedchurn.shared.protection import CKKS_DEFAULT, DEFAULT, PLAINTEXT_DEFAULT, ProtectionParams
from fedchurn.shared.run_config import RunConfig

FLOWER_HTTP_FRAMING_PER_REQUEST = 840  # the brief's measurement (Flower 1.41 Fleet API, HTTP/1.1)
BENCH_NOISE_MULTIPLIER = 1.0  # the secagg benchmark includes the key holder's DP noise sampling
CKKS_MEASURED_UPDATES = 100  # CKKS aggregation is measured on 100 updates and scaled to 1,000
SECAGGPLUS_CLIENTS = 20  # SecAgg+ is driven for 20 clients; server unmasking scaled per client
# What the aggregator plus an in-process key holder should take at the shipped defaults (no DP).
AGGREGATE_TARGETS_S = {1000: 0.1, 10_000: 1.0}
HPKE_MEASURED = 500  # seals and opens timed alone, to say how much of the server time they are


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _updates(n: int, n_params: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=n_params) * 0.01
    return common + rng.normal(size=(n, n_params)) * 0.01


# --- Flower message accounting ---


def _flower_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("run_id", 1), ("task_id", 1), ("node_id", 1)):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, value)


def flower_reply_bytes(content: Any) -> tuple[int, int]:
    """(protobuf body bytes, object count) of a Flower 1.41 Message reply carrying `content`."""
    from flwr.common import Message, MessageType, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    _flower_identity()
    ins = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    reply = Message(content, reply_to=ins)
    objs = get_all_nested_objects(reply)
    return sum(len(o.deflate()) for o in objs.values()), len(objs)


def _flower_sizes(bodies: int, objects: int) -> dict[str, Any]:
    return {
        "flower_bodies_bytes": bodies,
        "flower_objects": objects,
        "flower_wire_bytes_est": bodies + FLOWER_HTTP_FRAMING_PER_REQUEST * (objects + 1),
    }


def _blob_reply(blob: bytes) -> tuple[int, int]:
    from flwr.common import ConfigRecord, MetricRecord, RecordDict

    return flower_reply_bytes(
        RecordDict({"update": ConfigRecord({"blob": blob}), "metrics": MetricRecord({"num-examples": 100})})
    )


# --- fedchurn modes ---


def _cohorts(n: int, max_cohort: int) -> list[np.ndarray]:
    """Devices 0..n-1 in ceil(n / max_cohort) cohorts of (nearly) equal size, each <= max_cohort."""
    return np.array_split(np.arange(n), max(1, -(-n // max_cohort)))


def _cohort_ids(cohorts: list[np.ndarray], n: int) -> list[int]:
    ids = np.empty(n, dtype=np.int64)
    for c, members in enumerate(cohorts):
        ids[members] = c
    return [int(c) for c in ids]


def _aggregate(
    params: ProtectionParams,
    kh: KeyHolder,
    blobs: list[bytes],
    cohorts: list[np.ndarray],
    round_id: int,
    round_seed: int,
    n_params: int,
    ckks_context: bytes | None = None,
) -> tuple[float, int]:
    """Server seconds for every cohort: add_batch, finalize through the key holder, mean update."""
    t0 = time.perf_counter()
    results = []
    for c, members in enumerate(cohorts):
        agg = CohortAggregator(params, round_id, c, 1, round_seed, n_params, ckks_public_context=ckks_context)
        agg.add_batch([f"d{i}" for i in members], [blobs[i] for i in members])
        results.append(agg.finalize(kh))
    new_model = np.zeros(n_params, dtype=np.float32) + mean_update(results, n_params)
    server_s = time.perf_counter() - t0
    assert np.all(np.isfinite(new_model))
    return server_s, sum(r.count for r in results)


def _bench_fedchurn(params: ProtectionParams, n_updates: int, n_params: int, measured: int) -> dict[str, Any]:
    kh = KeyHolder.generate(k_min=min(10, params.k_min), with_ckks=params.scheme.homomorphic)
    pk = kh.public(ckks=params.scheme.homomorphic)
    ups = _updates(measured, n_params)
    rng = np.random.default_rng(1)
    cohorts = _cohorts(measured, params.max_cohort)
    cohort_ids = _cohort_ids(cohorts, measured)
    t0 = time.perf_counter()
    for i, u in enumerate(ups):
        protect_update(u, params, pk, 1, cohort_ids[i], 1, 77, rng)
    client_ms = (time.perf_counter() - t0) / measured * 1e3
    rngs = [np.random.default_rng([1, i]) for i in range(measured)]
    t0 = time.perf_counter()
    blobs = protect_batch(ups, params, pk, 2, cohort_ids, 1, [77] * measured, rngs)
    batch_ms = (time.perf_counter() - t0) / measured * 1e3
    server_s, _ = _aggregate(params, kh, blobs, cohorts, 2, 77, n_params, pk.ckks_context)
    bodies, objects = _blob_reply(blobs[0])
    out: dict[str, Any] = {
        "label": params.label,
        "upload_bytes": len(blobs[0]),
        "upload_bytes_how": "len() of the device's one upload (header + sealed seed + payload; CKKS: "
        "header + "
        "ciphertexts); nothing else is sent by the device",
        **_flower_sizes(bodies, objects),
        "protect_update_ms": client_ms,
        "protect_batch_ms_per_device": batch_ms,
        "protect_batch_how": f"protect_batch over all {measured} devices at once, per device",
        "aggregate_1000_s": server_s * n_updates / measured,
        "aggregate_measured_updates": measured,
        "cohorts": len(cohorts),
        "params": params.to_dict(),
    }
    if measured != n_updates:
        out["aggregate_note"] = f"measured on {measured} updates, scaled linearly to {n_updates}"
    if params.scheme.ring:
        p = params
        out["upload_breakdown"] = {
            "header": wire.HEADER_LEN,
            "sealed_seed": wire.SEAL_LEN,
            "payload": p.payload_bytes(n_params),
            "coords_per_round": p.n_coords(n_params),
            "ring_bits": p.ring_bits,
        }
        out["aggregate_includes"] = (
            "batched validation (add_batch), ring sums, key holder opening every seal + "
            f"discrete-Gaussian noise (z={p.noise_multiplier}), dequantisation, averaging over "
            f"cohorts of up to {p.max_cohort}"
        )
    if params.scheme.homomorphic:
        out["public_context_download_bytes"] = len(kh.ckks_public_context())
        out["ckks"] = {
            "poly_modulus": params.ckks_poly_modulus,
            "coeff_mod_bits": list(params.ckks_coeff_mod_bits),
            "scale_bits": params.ckks_scale_bits,
            "ciphertexts": math.ceil(params.n_coords(n_params) / (params.ckks_poly_modulus // 2)),
        }
    return out


def _hpke_costs() -> dict[str, float]:
    """Microseconds per HPKE seal and per open on this machine (the part no batching removes)."""
    sk = X25519PrivateKey.generate()
    pk = sk.public_key().public_bytes_raw()
    info = wire.seal_info(bytes(wire.HEADER_LEN), bytes(wire.DIGEST_LEN))
    seeds = [os.urandom(wire.SEED_LEN) for _ in range(HPKE_MEASURED)]
    t0 = time.perf_counter()
    sealed = [seal_seed(s, pk, info) for s in seeds]
    seal_us = (time.perf_counter() - t0) / HPKE_MEASURED * 1e6
    t0 = time.perf_counter()
    opened = [wire.SEAL_SUITE.decrypt(b, sk, info=info) for b in sealed]
    open_us = (time.perf_counter() - t0) / HPKE_MEASURED * 1e6
    assert opened == seeds
    return {"hpke_seal_us": seal_us, "hpke_open_us": open_us}


def bench_shipped_scale(n_small: int = 1000, n_params: int = 2286) -> dict[str, Any]:
    """Aggregator + in-process key holder at the shipped defaults (`RunConfig().train_protection(0.0)`),
    cohorts of up to max_cohort, for n_small and 10 x n_small secagg updates (1,000 and 10,000 by
    default): `aggregate_1000_s` and `aggregate_10000_s` are server seconds for 1,000 and 10,000
    updates, every cohort (scaled linearly, and said so, when measured on other counts)."""
    params = RunConfig().train_protection(0.0)
    kh = KeyHolder.generate(k_min=params.k_min)
    pk = kh.public()
    out: dict[str, Any] = {"label": params.label, "params": params.to_dict()}
    measured: dict[int, float] = {}
    for round_id, target in enumerate(AGGREGATE_TARGETS_S):
        n = n_small * target // 1000
        ups = _updates(n, n_params, seed=round_id)
        cohorts = _cohorts(n, params.max_cohort)
        rngs = [np.random.default_rng([round_id, i]) for i in range(n)]
        t0 = time.perf_counter()
        blobs = protect_batch(ups, params, pk, round_id, _cohort_ids(cohorts, n), 1, [77] * n, rngs)
        out["protect_batch_ms_per_device"] = (time.perf_counter() - t0) / n * 1e3
        out["protect_batch_devices"] = n
        server_s, count = _aggregate(params, kh, blobs, cohorts, round_id, 77, n_params)
        assert count == n, f"{n - count} uploads were refused"
        measured[n] = server_s
        out[f"aggregate_{target}_s"] = server_s * target / n
        out[f"aggregate_{target}_target_s"] = AGGREGATE_TARGETS_S[target]
        out[f"cohorts_{target}"] = len(cohorts)
    out["aggregate_measured"] = {str(n): s for n, s in measured.items()}
    if n_small != 1000:
        out["aggregate_note"] = (
            f"measured on {n_small:,} and {10 * n_small:,} updates, scaled linearly to 1,000 and 10,000"
        )
    out["aggregate_includes"] = (
        "CohortAggregator.add_batch (headers, lengths, payloads of a cohort at once), finalize: the "
        "in-process key holder opens every seal (one HPKE open each), expands and sums the masks at "
        "once, commits its once-only state; unmasking, bounding, dequantisation, mean over cohorts "
        f"of up to {params.max_cohort}; no DP noise (the shipped default)"
    )
    out.update(_hpke_costs())
    return out


# --- Flower baselines ---


def flower_fedavg_reply(n_params: int) -> tuple[int, int]:
    """(body bytes, objects) of Flower's plaintext FedAvg reply for a model of `n_params` float32
    parameters: an ArrayRecord of the model's tensors and a MetricRecord, as the quickstart sends."""
    from flwr.common import ArrayRecord, MetricRecord, RecordDict

    from fedchurn.shared.model_format import DEFAULT_SPEC, unflatten

    vec = _updates(1, n_params)[0].astype(np.float32)
    arrays = unflatten(vec) if n_params == DEFAULT_SPEC.n_params else [vec]
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 100})})
    return flower_reply_bytes(content)


def _bench_flower_fedavg(n_updates: int, n_params: int) -> dict[str, Any]:
    from flwr.server.strategy.aggregate import aggregate

    bodies, objects = flower_fedavg_reply(n_params)
    ups = _updates(n_updates, n_params).astype(np.float32)
    results = [([u], 100) for u in ups]
    t0 = time.perf_counter()
    aggregate(results)
    server_s = time.perf_counter() - t0
    return {
        "label": "PLAINTEXT (Flower FedAvg baseline) - NOT PRIVATE",
        "upload_bytes": bodies,
        "upload_bytes_how": "Flower 1.41 Message reply (ArrayRecord of the 4 float32 tensors + "
        "MetricRecord): "
        "sum of its serialised object bodies (flwr.supercore.inflatable)",
        **_flower_sizes(bodies, objects),
        "protect_update_ms": 0.0,
        "aggregate_1000_s": server_s,
        "aggregate_how": "flwr.server.strategy.aggregate.aggregate (weighted FedAvg) over the numpy updates",
    }


def _bench_flower_secaggplus(
    n_params: int, n_updates: int, share_num: int = 3, threshold: int = 2
) -> dict[str, Any]:
    """Drive Flower's own client mod (secaggplus_mod) through its four stages for a ring of clients.

    The server side is played here with Flower's own primitives (routing as SecAggPlusWorkflow does;
    unmasking with shamir.combine_shares and secaggplus_utils.pseudo_rand_gen); its time is per client.
    """
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import ConfigRecord, Context, Message, MessageType, RecordDict, bytes_to_ndarray
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.common.typing import FitRes, Status
    from flwr.compat.common import recorddict_compat as compat

    _flower_identity()
    n = SECAGGPLUS_CLIENTS
    nids = list(range(1, n + 1))
    ctxs = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in nids}
    mod_range, q_range, clip = 2**32, 2**22, 8.0
    ups = _updates(n, n_params)
    sent: dict[int, int] = dict.fromkeys(nids, 0)
    objects: dict[int, int] = dict.fromkeys(nids, 0)
    client_s: dict[int, float] = dict.fromkeys(nids, 0.0)

    def call(nid: int, cfg: dict[str, Any], fit: np.ndarray | None = None) -> dict[str, Any]:
        msg = Message(
            RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(cfg)}),
            dst_node_id=nid,
            message_type=MessageType.TRAIN,
        )

        def call_next(m: Message, c: Context) -> Message:
            from flwr.common import Code, ndarrays_to_parameters

            res = FitRes(Status(code=Code.OK, message=""), ndarrays_to_parameters([fit]), 100, {})  # type: ignore[list-item]
            return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=m)

        t = time.perf_counter()
        reply = secaggplus_mod(msg, ctxs[nid], call_next)
        client_s[nid] += time.perf_counter() - t
        b, o = flower_reply_bytes(reply.content)
        sent[nid] += b
        objects[nid] += o
        return dict(reply.content.config_records[RECORD_KEY_CONFIGS])

    half = (share_num - 1) // 2
    neigh = {i: [nids[(k + d) % n] for d in range(-half, half + 1)] for k, i in enumerate(nids)}
    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: share_num,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: clip,
        Key.TARGET_RANGE: q_range,
        Key.MOD_RANGE: mod_range,
        Key.MAX_WEIGHT: 1000.0,
    }
    pks = {i: call(i, dict(setup)) for i in nids}
    inbox: dict[int, tuple[list[int], list[bytes]]] = {i: ([], []) for i in nids}
    for i in nids:
        cfg: dict[str, Any] = {str(j): [pks[j][Key.PUBLIC_KEY_1], pks[j][Key.PUBLIC_KEY_2]] for j in neigh[i]}
        cfg[Key.STAGE] = Stage.SHARE_KEYS
        out = call(i, cfg)
        for dst, ct in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True):
            inbox[int(dst)][0].append(i)
            inbox[int(dst)][1].append(ct)
    masked = {}
    for k, i in enumerate(nids):
        cfg = {
            Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
            Key.SOURCE_LIST: inbox[i][0],
            Key.CIPHERTEXT_LIST: inbox[i][1],
        }
        out = call(i, cfg, fit=ups[k].astype(np.float32))
        masked[i] = [bytes_to_ndarray(b) for b in out[Key.MASKED_PARAMETERS]]
    shares: dict[int, list[bytes]] = {i: [] for i in nids}
    for i in nids:
        cfg = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: neigh[i], Key.DEAD_NODE_ID_LIST: []}
        out = call(i, cfg)
        for owner, share in zip(out[Key.NODE_ID_LIST], out[Key.SHARE_LIST], strict=True):
            shares[int(owner)].append(share)
    # Server: sum masked vectors, rebuild each private seed from shares, remove its mask (pairwise cancel).
    t0 = time.perf_counter()
    total = [np.zeros_like(a) for a in masked[nids[0]]]
    for i in nids:
        total = [t + a for t, a in zip(total, masked[i], strict=True)]
    dims = [a.shape for a in total]
    for i in nids:
        seed = combine_shares(shares[i][:threshold])
        total = [t - m for t, m in zip(total, pseudo_rand_gen(seed, mod_range, dims), strict=True)]
    total = parameters_mod(total, mod_range)
    server_per_client = (time.perf_counter() - t0) / n
    per_device = float(np.mean(list(sent.values())))
    objs = float(np.mean(list(objects.values())))
    return {
        "label": f"Flower SecAgg+ ({share_num} shares / threshold {threshold})",
        "upload_bytes": per_device,
        "upload_bytes_how": (
            f"Flower 1.41 secaggplus_mod driven through its 4 stages for {n} clients in a ring of "
            f"{share_num}; mean per device of the serialised object bodies of its 4 Message replies"
        ),
        "flower_bodies_bytes": per_device,
        "flower_objects": objs,
        "flower_wire_bytes_est": per_device + FLOWER_HTTP_FRAMING_PER_REQUEST * (objs + 4),
        "protect_update_ms": float(np.mean(list(client_s.values())) * 1e3),
        "protect_update_how": "client time in secaggplus_mod over all 4 stages (incl. key agreement, shares)",
        "aggregate_1000_s": server_per_client * n_updates,
        "aggregate_how": (
            f"server unmasking with Flower's primitives, measured per client on {n} clients, x{n_updates}; "
            "excludes SecAggPlusWorkflow's routing and the four message round trips"
        ),
        "masked_vector_bytes": int(sum(a.nbytes for a in masked[nids[0]])),
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def bench_protection(
    n_updates: int = 1000, n_params: int = 2286, secagg: ProtectionParams | None = None
) -> dict[str, Any]:
    """Every protection mode's upload size, client time and server time for `n_updates` updates."""
    secagg = secagg or DEFAULT.replace(noise_multiplier=BENCH_NOISE_MULTIPLIER)
    ckks_measured = min(n_updates, CKKS_MEASURED_UPDATES)
    return {
        "n_params": n_params,
        "n_updates": n_updates,
        "machine": machine(),
        "flower_http_framing_per_request": FLOWER_HTTP_FRAMING_PER_REQUEST,
        "fedchurn_default": _bench_fedchurn(secagg, n_updates, n_params, n_updates),
        "fedchurn_ckks": _bench_fedchurn(CKKS_DEFAULT, n_updates, n_params, ckks_measured),
        "fedchurn_plaintext": _bench_fedchurn(PLAINTEXT_DEFAULT, n_updates, n_params, n_updates),
        "fedchurn_shipped_scale": bench_shipped_scale(n_updates, n_params),
        "flower_plain_fedavg": _bench_flower_fedavg(n_updates, n_params),
        "flower_secaggplus": _bench_flower_secaggplus(n_params, n_updates),
    }


def main() -> None:
    import warnings

    from fedchurn.server.secure_sum import PlaintextModeWarning

    warnings.simplefilter("ignore", PlaintextModeWarning)
    print(json.dumps(bench_protection(), indent=1, default=str))


if __name__ == "__main__":
    main()
