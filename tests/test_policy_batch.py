"""`step_batch` is `step` with a batch axis (issue 23, item 3): for many devices side by side, each
device's action, reason code, recall content, episode day and state after every day are exactly what
`step` gives it alone: on the policy golden vectors and on hypothesis-generated histories and
configurations (gaps in days, month boundaries, several answers a day, consent changes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_properties import histories

from fedchurn.client.policy import (
    CONTENT_KINDS,
    REASON_CODES,
    SEGMENTS,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    month_index,
    step,
)
from fedchurn.client.policy_batch import (
    ACTIONS,
    NONE,
    BatchInput,
    BatchState,
    month_indices,
    step_batch,
)
from fedchurn.client.signals import SIGNAL_NAMES

VEC = Path(__file__).parent / "vectors" / "policy"


def _run_side_by_side(devices: list[list[PolicyInput]], cfg: PolicyConfig) -> None:
    """Run every device's history alone with `step` and all together with `step_batch`; compare
    each device's decision and state after each of its days."""
    n = len(devices)
    batch = BatchState.fresh(n)
    alone = [PolicyState() for _ in range(n)]
    for t in range(max(len(h) for h in devices)):
        here = np.array([t < len(h) for h in devices])
        # Devices without a day t take a placeholder input and keep their state.
        filler = PolicyInput(day=10**6 + t, probability=0.0)
        today = [h[t] if t < len(h) else filler for h in devices]
        new, out = step_batch(batch.where(here, BatchState.fresh(n)), BatchInput.of(today), cfg)
        batch = new.where(here, batch)
        for i in np.flatnonzero(here):
            alone[i], d = step(alone[i], today[i], cfg)
            assert ACTIONS[out.action[i]] == d.action, (i, t, d)
            assert REASON_CODES[out.reason[i]] == d.reason_code, (i, t, d)
            assert (CONTENT_KINDS[out.content[i]] if out.content[i] >= 0 else None) == d.content
            assert (int(out.episode_day[i]) or None) == d.episode_day
            assert batch.state(int(i), cfg) == alone[i]


@settings(max_examples=60, deadline=None)
@given(st.lists(histories(), min_size=1, max_size=6))
def test_a_batch_of_devices_decides_as_each_device_alone(devices: list[list[PolicyInput]]) -> None:
    _run_side_by_side(devices, PolicyConfig())


THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.78, 0.85, 0.9, 1.0)


@st.composite
def any_configs(draw: Any) -> PolicyConfig:
    """Every knob `step` reads, triggers overlapping between universal and segment lists."""
    signal_sets = st.lists(st.sampled_from(SIGNAL_NAMES), max_size=3)
    return PolicyConfig(
        episode_send_days=tuple(sorted({1, *draw(st.sets(st.integers(2, 20), max_size=3))})),
        max_recalls_per_month=draw(st.integers(0, 5)),
        rejections_to_opt_out=draw(st.integers(1, 4)),
        cooldown_days=draw(st.integers(0, 10)),
        high_risk=draw(st.sampled_from(THRESHOLDS)),
        high_risk_during_promotion=draw(st.sampled_from(THRESHOLDS)),
        signal_min_probability=draw(st.sampled_from(THRESHOLDS)),
        follow_up_min_probability=draw(st.sampled_from(THRESHOLDS)),
        universal_triggers=tuple(draw(signal_sets)),
        segment_triggers={s: tuple(draw(signal_sets)) for s in SEGMENTS},
        recall_content={s: draw(st.sampled_from(CONTENT_KINDS)) for s in SEGMENTS},
    )


@st.composite
def tied_histories(draw: Any) -> list[PolicyInput]:
    """Histories whose probabilities often sit exactly on a threshold."""
    out = []
    for inp in draw(histories()):
        if draw(st.booleans()):
            inp = replace(inp, probability=draw(st.sampled_from(THRESHOLDS)))
        out.append(inp)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(tied_histories(), min_size=1, max_size=4), any_configs())
def test_any_configuration_batched_decides_as_alone(
    devices: list[list[PolicyInput]], cfg: PolicyConfig
) -> None:
    _run_side_by_side(devices, cfg)


def test_a_signal_listed_twice_counts_once() -> None:
    """A segment trigger that is also universal (found by review: the batch mask added the bit
    twice and fired on another signal)."""
    cfg = PolicyConfig.from_dict({"segment_triggers": {"utility": ["silence_alert"]}})
    alone = [PolicyInput(20_000, 0.5, "utility", signals=frozenset({s})) for s in SIGNAL_NAMES]
    for inp in alone:
        _run_side_by_side([[inp]], cfg)


def test_codes_outside_the_encoding_and_too_many_send_days_are_refused() -> None:
    one = BatchInput.of([PolicyInput(100, 0.1)])
    for bad in (replace(one, responses=np.array([[3]])), replace(one, consent=np.array([7]))):
        with pytest.raises(ValueError, match="unknown"):
            step_batch(BatchState.fresh(1), bad)
    with pytest.raises(ValueError, match="at most"):
        step_batch(BatchState.fresh(1), one, PolicyConfig(episode_send_days=tuple(range(1, 70))))


def test_the_policy_golden_vectors_batched() -> None:
    """The port's vectors (explicit inputs; the 131-day history) decide the same in a batch of two."""
    only = json.loads((VEC / "policy_only.json").read_text())
    hist = json.loads((VEC / "history.json").read_text())
    a = [PolicyInput.from_dict(d) for d in only["inputs"]]
    b = [PolicyInput.from_dict(d["input"]) for d in hist["expected"]["days"]]
    _run_side_by_side([a, b], PolicyConfig())
    state = BatchState.fresh(1)
    for inp in a:
        state, _ = step_batch(state, BatchInput.of([inp]))
    assert state.state(0, PolicyConfig()).to_dict() == only["expected"]["final_state"]


def test_month_indices_follow_the_calendar() -> None:
    days = np.arange(-400, 30_000, 37)
    assert month_indices(days).tolist() == [month_index(int(d)) for d in days]


def test_a_day_not_after_the_last_is_refused() -> None:
    state, _ = step_batch(BatchState.fresh(2), BatchInput.of([PolicyInput(100, 0.1), PolicyInput(100, 0.1)]))
    assert NONE not in state.last_day.tolist()
    try:
        step_batch(state, BatchInput.of([PolicyInput(101, 0.1), PolicyInput(100, 0.1)]))
    except ValueError as e:
        assert "not after" in str(e)
    else:
        raise AssertionError("a repeated day was accepted")


def test_a_simulated_populations_device_days_decide_as_alone() -> None:
    """On real inputs (a generated block scored by the reference model: probabilities, inferred
    segments, promotions, signals), a random sample of devices decides day by day in the batch as
    each does alone with `step`."""
    from fedchurn.client.signals import SIGNAL_NAMES
    from fedchurn.shared.model_format import DEFAULT_SPEC
    from fedchurn.simulations.policy_bench import reference_params
    from fedchurn.simulations.whatif import WARMUP_DAYS, _block, _thresholds_key

    cfg = PolicyConfig()
    params, _ = reference_params()
    blk = _block(9, 2000, 2256, 90, params, DEFAULT_SPEC, [cfg])
    key = _thresholds_key(cfg)
    sample = np.random.default_rng(0).choice(256, 40, replace=False)

    def names(bits: int) -> frozenset[str]:
        return frozenset(n for j, n in enumerate(SIGNAL_NAMES) if bits >> j & 1)

    histories = [
        [
            PolicyInput(
                day=int(blk.days[t]),
                probability=float(blk.prob[i, t]),
                segment=SEGMENTS[int(blk.inferred[key][i, t])],
                promotion=bool(blk.promo[i, t]),
                signals=names(int(blk.fired[key][i, t])),
                quieted=names(int(blk.quieted[key][i, t])),
            )
            for t in range(WARMUP_DAYS, len(blk.days))
        ]
        for i in sample
    ]
    assert any(p.probability >= cfg.high_risk for h in histories for p in h)  # recalls do happen
    _run_side_by_side(histories, cfg)
