"""Scoring and retention-policy benchmark over a whole simulated population.

What it measures: how many devices per second the numpy scoring path handles (forward pass alone,
batch feature extraction + forward, and the one-device-at-a-time path a phone runs), and what
the on-device policy does over every device's whole history: recalls sent, recalls per
device-month, the most any device got in one calendar month, opt-outs and decisions by reason.

Users' answers to recalls are simulated with a stated, deliberately pessimistic rule: a recall
sent on day d is "accepted" when the device has a session on days d+1..d+3 and "rejected"
otherwise (silence counted as rejection, so opt-outs are an upper bound), logged on day d+3. No
simulated user opts back in. The policy runs through `step_batch`, the device's `step` with a batch
axis (tests/test_policy_batch.py), one chunk of devices and one day at a time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.client.aggregates import daily_aggregates_batch
from fedchurn.client.features import extract_features
from fedchurn.client.policy import (
    CONTENT_KINDS,
    REASON_CODES,
    SEGMENTS,
    PolicyConfig,
    day_signals,
    infer_segments,
    month_index,
)
from fedchurn.client.policy_batch import ACTIONS, BatchInput, BatchState, signal_bit_arrays, step_batch
from fedchurn.client.scoring import score_device
from fedchurn.shared.feature_spec import CHANNEL_INDEX, FEATURE_INDEX
from fedchurn.shared.model_format import churn_probability

ROOT = Path(__file__).resolve().parents[1]
VECTOR_MODEL = ROOT / "tests" / "vectors" / "policy" / "model_params.json"
RESPONSE_DAYS = 3


def reference_params() -> tuple[np.ndarray, str]:
    """The golden vectors' reference model, shipped with the source tree: the same in every
    checkout. Whatever depends on the model (the what-if lab, `bench-policy`'s counts) scores with
    it unless the user names a run's model; a demo run's model lying in the working directory is
    never picked up (it made a seeded lab's figures depend on where it ran, decision 130)."""
    import json

    if not VECTOR_MODEL.exists():
        raise FileNotFoundError(
            f"the reference model {VECTOR_MODEL} is not here (it ships with the source tree, "
            "not the wheel): name a trained run's model instead"
        )
    doc = json.loads(VECTOR_MODEL.read_text())
    return np.array(doc["params"], dtype=np.float32), f"{VECTOR_MODEL.relative_to(ROOT)} (reference model)"


def _chunk_policy(
    days: np.ndarray,
    present: np.ndarray,
    prob: np.ndarray,
    seg: np.ndarray,
    promo: np.ndarray,
    fired: np.ndarray,
    quieted: np.ndarray,
    sessions: np.ndarray,
    cfg: PolicyConfig,
) -> dict[str, np.ndarray]:
    """Run the policy over a chunk of devices, day by day, with `step_batch` (the device's `step`
    with a batch axis). `present` (n, D) says which days each device runs; fired / quieted are
    signal bitmasks. Answers follow the module docstring's rule, logged RESPONSE_DAYS later."""
    n, D = prob.shape
    state = BatchState.fresh(n)
    pending = np.zeros((n, RESPONSE_DAYS + 1), dtype=np.int64)  # answers due, by day mod (R + 1)
    recalls = np.zeros(n, dtype=np.int64)
    month_of, month_sent, most = np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    reasons = np.zeros(len(REASON_CODES), dtype=np.int64)
    actions = np.zeros(len(ACTIONS), dtype=np.int64)
    contents = np.zeros(len(CONTENT_KINDS), dtype=np.int64)
    no_consent = np.zeros(n, dtype=np.int64)
    for t in range(D):
        here = present[:, t]
        slot = t % (RESPONSE_DAYS + 1)
        inp = BatchInput(
            np.full(n, days[t], dtype=np.int64),
            prob[:, t].astype(np.float64),
            seg[:, t].astype(np.int64),
            promo[:, t],
            fired[:, t],
            quieted[:, t],
            pending[:, slot : slot + 1].copy(),
            no_consent,
        )
        pending[:, slot] = 0
        new, out = step_batch(state, inp, cfg)
        state = new.where(here, state)
        reasons += np.bincount(out.reason[here], minlength=len(REASON_CODES))
        actions += np.bincount(out.action[here], minlength=len(ACTIONS))
        rec = np.flatnonzero(here & (out.action == 1))
        if len(rec) == 0:
            continue
        contents += np.bincount(out.content[rec], minlength=len(CONTENT_KINDS))
        recalls[rec] += 1
        m = month_index(int(days[t]))
        month_sent[rec] = np.where(month_of[rec] == m, month_sent[rec] + 1, 1)
        month_of[rec] = m
        most[rec] = np.maximum(most[rec], month_sent[rec])
        if t + RESPONSE_DAYS < D:  # the answer: a session within RESPONSE_DAYS days, else a rejection
            back = sessions[rec, t + 1 : t + RESPONSE_DAYS + 1].sum(axis=1) > 0
            pending[rec, (t + RESPONSE_DAYS) % (RESPONSE_DAYS + 1)] = np.where(back, 1, 2)
    return {
        "recalls": recalls,
        "most_in_a_month": most,
        "opted_out": state.opted_out,
        "reasons": reasons,
        "actions": actions,
        "contents": contents,
    }


def bench_scoring_policy(
    devices: int = 100_000,
    days: int = 120,
    seed: int = 0,
    params: np.ndarray | None = None,
    chunk: int = 250,
    single_device_sample: int = 500,
    config: PolicyConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score every device on its last day and replay the policy over every device's whole history."""
    from fedchurn.simulations.population import generate_population
    from fedchurn.simulations.scenario import SEGMENTS as TRUE_SEGMENTS
    from fedchurn.simulations.scenario import load_scenario

    cfg = config or PolicyConfig()
    if params is None:
        params, source = reference_params()
    else:
        source = "given"
    t = time.perf_counter()
    pop = generate_population(devices, seed, load_scenario("default"), days)
    gen_s = time.perf_counter() - t
    ev = pop.event_array()
    dev = np.asarray(pop.events["device"])
    start_all = np.asarray(pop.truth["start_day"], dtype=np.int64)
    today_all = np.asarray(pop.truth["today"], dtype=np.int64)
    bounds = np.searchsorted(dev, np.arange(0, devices + chunk, chunk))
    sess_ch = CHANNEL_INDEX["count.sessions"]
    promo_i = FEATURE_INDEX["promo.discount_active"]

    features_s = forward_s = policy_s = 0.0
    reasons: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    contents: Counter[str] = Counter()
    recalls = device_days = opted_out = recalled_devices = recalled_churners = max_month = 0
    tiers = np.zeros(3, dtype=np.int64)
    seg_hits = 0
    for c0 in range(0, devices, chunk):
        c1 = min(c0 + chunk, devices)
        lo, hi = int(bounds[c0 // chunk]), int(bounds[c0 // chunk + 1])
        first, last = int(start_all[c0:c1].min()), int(today_all[c0:c1].max())
        D = last - first + 1
        all_days = np.arange(first, last + 1)
        t = time.perf_counter()
        daily = daily_aggregates_batch(ev[lo:hi], dev[lo:hi] - c0, c1 - c0, first, D)
        feats = extract_features(daily, all_days, start_all[c0:c1])
        last_rows = feats[np.arange(c1 - c0), today_all[c0:c1] - first]
        features_s += time.perf_counter() - t
        t = time.perf_counter()
        p_last = churn_probability(params, last_rows)
        forward_s += time.perf_counter() - t
        tiers += np.bincount(np.where(p_last >= 0.78, 2, np.where(p_last >= 0.40, 1, 0)), minlength=3)

        t = time.perf_counter()
        prob = churn_probability(params, feats)
        seg = infer_segments(feats, cfg.segment_rule)
        fired_d, quiet_d = day_signals(feats, cfg.signals)
        promo = feats[..., promo_i] > 0
        sessions = daily[..., sess_ch]
        rel = np.arange(D)[None, :]
        present = (rel >= (start_all[c0:c1] - first)[:, None]) & (rel <= (today_all[c0:c1] - first)[:, None])
        res = _chunk_policy(
            all_days,
            present,
            prob,
            seg,
            promo,
            signal_bit_arrays(fired_d),
            signal_bit_arrays(quiet_d),
            sessions,
            cfg,
        )
        for k, name in enumerate(REASON_CODES):
            reasons[name] += int(res["reasons"][k])
        for k, name in enumerate(ACTIONS):
            actions[name] += int(res["actions"][k])
        for k, name in enumerate(CONTENT_KINDS):
            if res["contents"][k]:
                contents[name] += int(res["contents"][k])
        recalls += int(res["recalls"].sum())
        max_month = max(max_month, int(res["most_in_a_month"].max(initial=0)))
        opted_out += int(res["opted_out"].sum())
        device_days += int(present.sum())
        got = res["recalls"] > 0
        recalled_devices += int(got.sum())
        recalled_churners += int((got & (pop.truth["churn_day"][c0:c1] >= 0)).sum())
        last_rel = today_all[c0:c1] - first
        seg_last = seg[np.arange(c1 - c0), last_rel]
        seg_hits += int(
            sum(
                SEGMENTS[int(a)] == TRUE_SEGMENTS[int(b)]
                for a, b in zip(seg_last, pop.truth["segment"][c0:c1], strict=True)
            )
        )
        policy_s += time.perf_counter() - t
        if progress is not None:
            progress(c1, devices)

    sample = range(min(single_device_sample, devices))
    t = time.perf_counter()
    for i in sample:
        score_device(params, pop.device_events(i))
    single_s = time.perf_counter() - t
    months = device_days / 30.4375
    return {
        "devices": devices,
        "days": days,
        "seed": seed,
        "model": source,
        "events": int(pop.n_events),
        "device_days": device_days,
        "generate_seconds": round(gen_s, 2),
        "scoring": {
            "forward_only_devices_per_s": round(devices / forward_s) if forward_s else None,
            "features_and_forward_devices_per_s": round(devices / (features_s + forward_s)),
            "features_seconds": round(features_s, 2),
            "forward_seconds": round(forward_s, 4),
            "single_device_path_devices_per_s": round(len(sample) / single_s, 1) if single_s else None,
            "single_device_sample": len(sample),
            "tiers_last_day": {"low": int(tiers[0]), "medium": int(tiers[1]), "high": int(tiers[2])},
        },
        "policy": {
            "seconds": round(policy_s, 2),
            "device_days_per_s": round(device_days / policy_s) if policy_s else None,
            "recalls": recalls,
            "recalls_per_device_month": round(recalls / months, 4) if months else 0.0,
            "devices_recalled": recalled_devices,
            "recalled_devices_that_churn": recalled_churners,
            "max_recalls_in_a_calendar_month": max_month,
            "opted_out_at_end": opted_out,
            "decisions_by_reason": dict(sorted(reasons.items())),
            "decisions_by_action": dict(sorted(actions.items())),
            "recalls_by_content": dict(sorted(contents.items())),
            "segment_inferred_equals_simulated": round(seg_hits / devices, 4) if devices else None,
            "response_model": (
                f"accepted if a session within {RESPONSE_DAYS} days after the recall, else rejected "
                "(an upper bound for opt-outs); nobody opts back in"
            ),
        },
    }


def main() -> None:
    """`python -m fedchurn.simulations.policy_bench`: a manual entry point until the CLI grows a command."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="fedchurn scoring + policy benchmark")
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    res = bench_scoring_policy(args.devices, args.days, args.seed)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
