"""Property tests: whatever the history, the policy keeps the brief's promises to the user."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.policy import (
    SEGMENTS,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    is_quiet_day,
    month_index,
    run_policy,
    step,
)
from fedchurn.client.signals import SIGNAL_NAMES

START = 20_000  # 2024-10-04


_DAY = st.tuples(
    st.sampled_from([1, 1, 1, 1, 2, 3, 6, 7, 12, 40]),  # days since the policy last ran
    st.floats(0.0, 1.0),
    st.sampled_from(SEGMENTS),
    st.booleans(),
    st.frozensets(st.sampled_from(SIGNAL_NAMES), max_size=3),
    st.frozensets(st.sampled_from(SIGNAL_NAMES), max_size=1),
    st.sampled_from(
        [(), (), (), (), (), (), ("accepted",), ("rejected",), ("rejected", "accepted"), ("rejected",) * 3]
    ),
    st.sampled_from([None] * 12 + ["opt_in", "opt_out"]),
)


@st.composite
def histories(draw: Any) -> list[PolicyInput]:
    day = START + draw(st.integers(0, 400))
    n = draw(st.integers(1, 90))
    out = []
    for gap, p, seg, promo, sig, quiet, resp, consent in draw(st.lists(_DAY, min_size=n, max_size=n)):
        day += gap
        out.append(PolicyInput(day, p, seg, promo, sig, quiet, tuple(resp), consent))
    return out


@st.composite
def configs(draw: Any) -> PolicyConfig:
    extra = draw(st.sets(st.integers(2, 20), max_size=3))
    return PolicyConfig(
        episode_send_days=tuple(sorted({1, *extra})),
        max_recalls_per_month=draw(st.integers(0, 5)),
        rejections_to_opt_out=draw(st.integers(1, 4)),
        cooldown_days=draw(st.integers(0, 10)),
        signal_min_probability=draw(st.sampled_from([0.0, 0.2])),
    )


def _opted_out_reference(inputs: list[PolicyInput], n_reject: int) -> list[bool]:
    """Marketing status after each day, computed independently of the engine."""
    out, rej, status = [], 0, False
    for i in inputs:
        for r in i.responses:
            rej = 0 if r == "accepted" else rej + 1
            status = status or rej >= n_reject
        if i.consent == "opt_out":
            status = True
        elif i.consent == "opt_in":
            status, rej = False, 0
        out.append(status)
    return out


def _check(inputs: list[PolicyInput], cfg: PolicyConfig) -> None:
    decisions = run_policy(inputs, cfg)
    assert len(decisions) == len(inputs)
    per_month = Counter(month_index(d.day) for d in decisions if d.action == "recall")
    assert all(v <= cfg.max_recalls_per_month for v in per_month.values())
    opted = _opted_out_reference(inputs, cfg.rejections_to_opt_out)
    for d, out in zip(decisions, opted, strict=True):
        assert d.basic_service is True
        assert d.marketing_opted_out == out
        if out:
            assert d.action != "recall"
        if d.action == "recall":
            assert d.content is not None and d.episode_day is not None
            assert 1 <= d.episode_day <= cfg.episode_days
    assert run_policy(inputs, cfg) == decisions  # deterministic


@settings(max_examples=150, deadline=None)
@given(histories())
def test_default_policy_keeps_its_promises(inputs: list[PolicyInput]) -> None:
    _check(inputs, PolicyConfig())


@settings(max_examples=100, deadline=None)
@given(histories(), configs())
def test_any_configuration_keeps_its_promises(inputs: list[PolicyInput], cfg: PolicyConfig) -> None:
    _check(inputs, cfg)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_skipping_quiet_days_changes_no_later_decision(inputs: list[PolicyInput]) -> None:
    """The batch replay's shortcut: a day `is_quiet_day` marks can be left out without effect."""
    cfg = PolicyConfig()
    full = {d.day: d for d in run_policy(inputs, cfg)}
    state = PolicyState()
    for inp in inputs:
        if is_quiet_day(state, inp, cfg):
            assert (full[inp.day].action, full[inp.day].reason_code) == ("none", "no_risk")
            continue
        state, d = step(state, inp, cfg)
        assert d == full[inp.day]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(START, START + 800),
    st.lists(st.sampled_from([1, 1, 2, 3]), min_size=20, max_size=120),
    configs(),
)
def test_cap_holds_under_constant_pressure(start: int, gaps: list[int], cfg: PolicyConfig) -> None:
    """Every day at high risk and no answers: recalls go out up to the cap and never beyond."""
    day, inputs = start, []
    for g in gaps:
        day += g
        inputs.append(PolicyInput(day, 0.99, "social", signals=frozenset({"silence_alert"})))
    decisions = run_policy(inputs, cfg)
    per_month = Counter(month_index(d.day) for d in decisions if d.action == "recall")
    assert max(per_month.values(), default=0) <= cfg.max_recalls_per_month
    assert all(d.basic_service for d in decisions)
    # The cap binds exactly when the same history without a cap would send more in some month
    # (found by CI: a 20-day history inside one month never reached a cap of 5, and the old
    # condition asked for a cap hit or a second month regardless).
    uncapped = run_policy(inputs, replace(cfg, max_recalls_per_month=10_000))
    would_send = Counter(month_index(d.day) for d in uncapped if d.action == "recall")
    binds = any(n > cfg.max_recalls_per_month for n in would_send.values())
    assert binds == any(d.reason_code == "monthly_cap" for d in decisions)
