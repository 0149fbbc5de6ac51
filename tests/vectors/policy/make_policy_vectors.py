"""Regenerate the policy golden vectors: `python tests/vectors/policy/make_policy_vectors.py`.

Files written next to this script:
  model_params.json  the reference model: 2,286 float32 parameters (W1, b1, W2, b2), trained
                     centrally on a simulated population (only with `--retrain`; otherwise the
                     committed file is reused, so regenerating the vectors keeps the model)
  history.json       events -> features -> score -> signals -> policy input -> decision, per day,
                     over a 131-day history (silence -> recall episode on days 1/7/14, monthly cap,
                     three rejections -> opt-out, opt back in, a promotion holding back a silence)
  policy_only.json   explicit policy inputs -> decisions and the final state, for a port that
                     implements the policy before the rest (gaps in days, month boundaries, ...)

Run it only when the policy or the specification changes on purpose; the tests check the
committed files against the code (scores to 1e-6, decisions exactly).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.client.pipeline import device_features
from fedchurn.client.policy import (
    Consent,
    PolicyConfig,
    PolicyInput,
    inputs_from_features,
    replay,
    responses_by_day,
)
from fedchurn.client.signals import SIGNAL_NAMES
from fedchurn.client.store import EventStore
from fedchurn.shared.events import Event, from_array, to_array
from fedchurn.shared.feature_spec import FEATURE_NAMES
from fedchurn.shared.model_format import DEFAULT_SPEC, hazards, survival

HERE = Path(__file__).parent
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z = local day 20454
DAY0 = T0 // 86_400
H = 3600
DAY = 86_400


def ev(day: float, hour: float, cat: str, action: str, value: float = 1.0, tz: int = 0) -> Event:
    """An event at local `hour` of local `day` (days after 2026-01-01) on a clock at UTC+tz minutes."""
    return Event(int(T0 + day * DAY + hour * H - tz * 60), tz, cat, action, value)


def load_params() -> np.ndarray:
    doc = json.loads((HERE / "model_params.json").read_text())
    return np.array(doc["params"], dtype=np.float32)


def train_reference_model(
    devices: int = 3000, seed: int = 0, epochs: int = 8
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the reference model centrally on a simulated population (torch, fixed seeds)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from fedchurn.shared.model import ChurnNet, survival_nll
    from fedchurn.shared.model_format import churn_probability, init_params
    from fedchurn.shared.run_config import RunConfig
    from fedchurn.simulations.dataset import build_dataset
    from fedchurn.simulations.population import generate_population
    from fedchurn.simulations.scenario import load_scenario

    pop = generate_population(devices, seed, load_scenario("default"), 120)
    names = ("ts", "tz_min", "cat", "action", "value")
    events = np.empty(pop.n_events, dtype=[(n, pop.events[n].dtype) for n in names])
    for n in names:
        events[n] = pop.events[n]
    ds = build_dataset(
        events,
        np.asarray(pop.events["device"]),
        np.asarray(pop.truth["start_day"]),
        np.asarray(pop.truth["today"]),
        RunConfig(seed=seed),
    )
    torch.manual_seed(seed)
    net = ChurnNet()
    net.set_vector(init_params(seed))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = torch.from_numpy(ds.train.x)
    t = torch.from_numpy(ds.train.time.astype(np.int64))
    e = torch.from_numpy(ds.train.event.astype(bool))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(len(x), generator=gen), 512):
            opt.zero_grad()
            survival_nll(net(x[idx]), t[idx], e[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    params = net.get_vector()
    p = churn_probability(params, ds.test.x)
    auc = float(roc_auc_score(ds.test.churn, p)) if len(set(ds.test.churn.tolist())) == 2 else float("nan")
    info = {
        "devices": devices,
        "seed": seed,
        "epochs": epochs,
        "train_rows": len(x),
        "test_devices": len(ds.test.x),
        "test_roc_auc": round(auc, 4),
    }
    return params, info


def history_events() -> tuple[list[Event], dict[int, Consent]]:
    """A utility-app user over Dec 1, 2025 .. Apr 26, 2026 (days -31..115 after 2026-01-01)."""

    def active(d: int) -> list[Event]:
        out = [ev(d, 9.5, "sessions", "session", 600), ev(d, 19, "sessions", "session", 300)]
        out += [ev(d, 9.6 + k / 10, "feature_usage", "feature_used") for k in range(3)]
        out += [ev(d, 10, "search", "search")]
        return out

    events = [
        ev(-31, 9, "device_context", "device_tier", 2),
        ev(-31, 9, "device_context", "registration_channel", 0),
        ev(-31, 9, "device_context", "same_category_apps", 2),
        ev(-31, 9, "device_context", "notifications_enabled", 1),
    ]
    for d in [*range(-31, -5), *range(31, 56), *range(86, 105), *range(109, 116)]:
        events += active(d)
    # Answers to the recalls the policy sends (the app logs them as `notifications` events).
    events += [
        ev(8, 12, "notifications", "recall_accepted"),  # to the recall of day 7: the episode ends
        ev(67, 12, "notifications", "recall_rejected"),  # second silence: episode day 1 (day 66)
        ev(73, 12, "notifications", "recall_rejected"),  # episode day 7 (day 72)
        ev(80, 12, "notifications", "recall_rejected"),  # episode day 14 (day 79): 3 in a row -> opt-out
    ]
    # A discount runs from day 100 to day 111; the user is quiet on days 105..108 meanwhile.
    events += [ev(100, 8, "promotions", "discount_started"), ev(111, 8, "promotions", "discount_ended")]
    consent: dict[int, Consent] = {
        DAY0 + 92: "opt_in"
    }  # the user opts back in from the settings screen on day 92
    return events, consent


def history_case(params: np.ndarray, cfg: PolicyConfig) -> dict[str, Any]:
    events, consent = history_events()
    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "device.sqlite") as store:
        store.append(events)
        stored = store.events()
        first = store.first_day()
    res = device_features(stored, first)
    inputs = inputs_from_features(params, res.features, res.days, responses_by_day(stored), consent, cfg)
    decisions, state = replay(inputs, cfg)
    h = hazards(params, res.features)
    s = survival(h)
    days = []
    for k, (inp, dec) in enumerate(zip(inputs, decisions, strict=True)):
        p = float(1.0 - s[k, -1])
        days.append(
            {
                "day": int(res.days[k]),
                "features": [float(v) for v in res.features[k]],
                "survival": [float(v) for v in s[k]],
                "probability": p,
                "score": round(100 * p),
                "tier": dec.tier,
                "input": inp.to_dict(),
                "decision": dec.to_dict(),
            }
        )
    return {
        "name": "history",
        "description": (
            "A utility-app user, active Dec 1-26. Silent from Dec 27: silence alert from Dec 29, alert "
            "only while the model's probability is below 0.2; recall episode day 1 on Jan 7, accepted "
            "Jan 9 (episode ends, 7-day cooldown); a new episode Jan 17 (day 1) and Jan 23 (day 7); its "
            "day 14 (Jan 30) is skipped: 3 recalls in January already. Back Feb 1; silent from Feb 26: "
            "episode on Mar 8, 14 and 21 (days 1, 7, 14), each rejected the next day; the third "
            "rejection (Mar 22) takes the user off the marketing list, alerts only afterwards, basic "
            "service throughout. Back Mar 28, opts in again Apr 3. A discount from Apr 10 to Apr 21 "
            "keeps a 4-day silence (Apr 15-18) quiet."
        ),
        "events": [
            {
                "ts": e.ts,
                "tz_offset_min": e.tz_offset_min,
                "category": e.category,
                "action": e.action,
                "value": e.value,
            }
            for e in from_array(to_array(events))
        ],
        "consent": {str(k): v for k, v in consent.items()},
        "config": cfg.as_dict(),
        "feature_names": list(FEATURE_NAMES),
        "signal_names": list(SIGNAL_NAMES),
        "expected": {"first_day": int(res.first_day), "days": days, "final_state": state.to_dict()},
    }


def policy_only_inputs() -> list[PolicyInput]:
    """Hand-written days that reach every rule, with gaps (the device did not run every day)."""

    def on(month: int, dom: int) -> int:
        return (date(2026, month, dom) - date(1970, 1, 1)).days

    P = PolicyInput
    soc, price = "social", "price_sensitive"
    return [
        P(on(1, 20), 0.10),  # no risk
        P(on(1, 21), 0.15, signals=frozenset({"silence_alert"})),  # a signal, probability below 0.2
        P(on(1, 22), 0.80),  # high risk -> episode day 1, recall (January: 1)
        P(on(1, 23), 0.80),  # episode day 2: between sends -> alert only
        P(on(1, 29), 0.50),  # the device skipped days; episode day 8 >= 7: late follow-up (January: 2)
        P(on(1, 31), 0.20),  # between sends, no risk -> none
        P(on(2, 4), 0.30),  # episode day 14 due but no risk left -> episode ends (recovered)
        P(on(2, 5), 0.90),  # at risk within 7 days of the end -> cooldown
        P(on(2, 12), 0.90),  # new episode (February: 1)
        P(on(2, 13), 0.90, responses=("rejected",)),  # 1 rejection
        P(on(2, 18), 0.90),  # episode day 7 (February: 2)
        P(on(2, 19), 0.90, responses=("rejected", "accepted")),  # 2, then accepted: reset, episode ends
        P(on(2, 27), 0.30, segment=soc, signals=frozenset({"social_friends_leaving"})),  # (February: 3)
        P(on(2, 28), 0.95, segment=soc),  # between sends
        P(on(3, 5), 0.95, segment=soc),  # episode day 7 (March: 1)
        P(on(3, 12), 0.95, segment=soc),  # episode day 14 (March: 2)
        P(on(3, 20), 0.95, segment=soc),  # cooldown over: new episode (March: 3)
        P(on(3, 26), 0.95, segment=soc),  # episode day 7: the month's cap is reached -> skipped
        P(on(4, 2), 0.95, segment=soc),  # episode day 14, a new month (April: 1)
        P(on(4, 3), 0.95, segment=soc, responses=("rejected", "rejected", "rejected")),  # off the list
        P(on(4, 4), 0.95, segment=soc),  # off the list: alert only, basic service continues
        P(on(4, 5), 0.10, consent="opt_out"),  # an explicit opt-out while already out: no change
        P(on(4, 6), 0.10, consent="opt_in"),  # back on the list, rejections reset
        P(on(4, 7), 0.80, promotion=True),  # 0.80 is below the promotion's 0.85: held back
        P(on(4, 8), 0.10, promotion=True, segment=price, quieted=frozenset({"silence_alert"})),
        P(
            on(4, 10),
            0.30,
            segment=price,
            signals=frozenset({"price_discount_ended", "content_feed_drop"}),
        ),  # only the price trigger counts for this segment -> episode (April: 2), offers
        P(on(4, 11), 0.10, consent="opt_out"),  # the user opts out: the episode is cancelled
        P(on(4, 12), 0.30, signals=frozenset({"silence_alert"})),  # at risk, opted out -> alert only
        P(on(4, 13), 0.10, signals=frozenset({"silence_alert"})),  # a signal below 0.2: alert only
    ]


def policy_only_case(cfg: PolicyConfig) -> dict[str, Any]:
    inputs = policy_only_inputs()
    decisions, state = replay(inputs, cfg)
    return {
        "name": "policy_only",
        "description": "Explicit policy inputs (days may be skipped) -> decisions, with the default config.",
        "config": cfg.as_dict(),
        "inputs": [i.to_dict() for i in inputs],
        "expected": {"decisions": [d.to_dict() for d in decisions], "final_state": state.to_dict()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--retrain", action="store_true", help="retrain the reference model (torch)")
    args = ap.parse_args(argv)
    if args.retrain or not (HERE / "model_params.json").exists():
        params, info = train_reference_model()
        doc = {
            "description": "fedchurn reference churn model for the policy golden vectors and benchmarks",
            "spec": DEFAULT_SPEC.to_dict(),
            "order": "W1 (16x127 row-major), b1 (16), W2 (14x16 row-major), b2 (14); float32",
            "training": info,
            "params": [float(v) for v in params],
        }
        (HERE / "model_params.json").write_text(json.dumps(doc, indent=0) + "\n")
        print(f"wrote model_params.json ({info})")
    params = load_params()
    cfg = PolicyConfig()
    for case in (history_case(params, cfg), policy_only_case(cfg)):
        (HERE / f"{case['name']}.json").write_text(json.dumps(case, indent=1) + "\n")
        print(f"wrote {case['name']}.json")


if __name__ == "__main__":
    main(sys.argv[1:])
