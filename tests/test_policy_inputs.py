"""A retention-policy TOML file is checked completely before anything runs: every knob's kind and
range, each refusal naming the file and the key as `FILE [policy.section].key: expected …, got …`
(found by review: `policy = 5` and `social = 5` raised tracebacks, negative days, NaN ratios and
a send day of 10⁹ ran to exit 0, a string of triggers was split into letters)."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedchurn.client.policy import (
    POLICY_RULES,
    SECTIONS,
    SEGMENT_RULE_RULES,
    SIGNAL_RULES,
    PolicyConfig,
    Rule,
    SegmentRule,
)
from fedchurn.client.signals import SignalThresholds
from fedchurn.simulations.whatif import POLICY_DIR, Arm, WhatIfError, check_lab, known_policies, load_arm


def _refused(tmp_path: Path, text: str) -> str:
    f = tmp_path / "mine.toml"
    f.write_text(text)
    with pytest.raises(WhatIfError) as e:
        load_arm(str(f))
    return str(e.value)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def _file(section: str, key: str, value: Any) -> str:
    return f"[{section}]\n{key} = {_toml(value)}\n"


# ---- what the reviewer found, each refused naming the file and the key ---------------------------
@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("policy = 5\n", "mine.toml [policy]: expected a table"),
        (
            "[policy.segment_triggers]\nsocial = 5\n",
            "mine.toml [policy.segment_triggers].social: expected a list",
        ),
        ("[policy.signals]\nsilence_days = -5\n", "mine.toml [policy.signals].silence_days: expected"),
        (
            "[policy.signals]\ncontent_drop_ratio = nan\n",
            "mine.toml [policy.signals].content_drop_ratio: expected",
        ),
        (
            "[policy.segment_rule]\ndiscount_dependence = -5.0\n",
            "mine.toml [policy.segment_rule].discount_dependence: expected",
        ),
        (
            "[policy.segment_rule]\ncontent_per_active_day = nan\n",
            "mine.toml [policy.segment_rule].content_per_active_day: expected",
        ),
        ("[policy]\nepisode_send_days = [1, 1000000000]\n", "mine.toml [policy].episode_send_days: expected"),
        ("[policy]\ncooldown_days = 99999999999\n", "mine.toml [policy].cooldown_days: expected"),
        (
            '[policy.segment_triggers]\nsocial = "silence_alert"\n',
            "mine.toml [policy.segment_triggers].social: expected a list of signal names",
        ),
        ("[policy]\nsignals = 3\n", "mine.toml [policy.signals]: expected a table"),
        ("[policy.recall_content]\nutility = 5\n", "mine.toml [policy.recall_content].utility: expected one"),
        (
            '[policy]\nuniversal_triggers = "silence_alert"\n',
            "mine.toml [policy].universal_triggers: expected",
        ),
        ('[policy]\nuniversal_triggers = ["silence"]\n', "mine.toml [policy].universal_triggers: expected"),
        ("[policy]\nepisode_send_days = [1, 7, 7]\n", "mine.toml [policy].episode_send_days: expected"),
        ("[policy]\nepisode_send_days = []\n", "mine.toml [policy].episode_send_days: expected"),
        ("[policy]\nhigh_risk = true\n", "mine.toml [policy].high_risk: expected"),
        (
            "[policy.signals]\ncontent_drop_ratio = 0\n",
            "mine.toml [policy.signals].content_drop_ratio: expected",
        ),
        ("[policy.signals]\nbogus = 1\n", "mine.toml [policy.signals]: unknown policy knob 'bogus'"),
        ("name = 5\n", "mine.toml name: expected a non-empty string"),
        ('targeting = "none"\npolicy = 0\n', "mine.toml: a control (targeting = none) sends nothing"),
    ],
)
def test_each_bad_input_the_review_found_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, where: str
) -> None:
    msg = _refused(tmp_path, text)
    assert where in msg, msg
    assert "got" in msg or "unknown" in msg or "sends nothing" in msg


# ---- every knob, every class of bad value -------------------------------------------------------
def _numeric_knobs() -> list[tuple[str, str, Rule]]:
    return [
        (section, key, rule)
        for section, (_, rules) in SECTIONS.items()
        for key, rule in rules.items()
        if rule.kind in ("int", "float")
    ]


NUMERIC = _numeric_knobs()
WRONG_KINDS = ["three", True, [1], math.nan, math.inf, -math.inf]


@pytest.mark.parametrize(("section", "key", "rule"), NUMERIC, ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
@pytest.mark.parametrize("value", WRONG_KINDS, ids=repr)
def test_a_number_of_the_wrong_kind_or_not_finite_is_refused(
    tmp_path: Path, section: str, key: str, rule: Rule, value: Any
) -> None:
    msg = _refused(tmp_path, _file(section, key, value))
    assert f"mine.toml [{section}].{key}: expected " in msg and ", got " in msg, msg


@pytest.mark.parametrize(("section", "key", "rule"), NUMERIC, ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
def test_a_number_just_outside_its_range_is_refused_and_its_ends_accepted(
    tmp_path: Path, section: str, key: str, rule: Rule
) -> None:
    step = 1 if rule.kind == "int" else 1e-9
    below = rule.lo if rule.lo_open else rule.lo - step
    for bad in (below, rule.hi + step, -5):
        value = int(bad) if rule.kind == "int" else float(bad)
        msg = _refused(tmp_path, _file(section, key, value))
        assert f"mine.toml [{section}].{key}: expected " in msg and f"got {value!r}" in msg, msg
    f = tmp_path / "ok.toml"
    for good in ([] if rule.lo_open else [rule.lo]) + [rule.hi]:
        f.write_text(_file(section, key, int(good) if rule.kind == "int" else float(good)))
        load_arm(str(f))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_out_of_range_number_is_refused_naming_the_knob(tmp_path: Path, data: st.DataObject) -> None:
    section, key, rule = data.draw(st.sampled_from(NUMERIC))
    if rule.kind == "int":
        value: Any = data.draw(
            st.one_of(
                st.integers(min_value=-(2**63), max_value=int(rule.lo) - (0 if rule.lo_open else 1)),
                st.integers(min_value=int(rule.hi) + 1, max_value=2**63 - 1),
            )
        )
    else:
        value = data.draw(
            st.one_of(
                st.floats(max_value=rule.lo, exclude_max=not rule.lo_open),
                st.floats(min_value=rule.hi, exclude_min=True),
            ).filter(lambda x: not ((x > rule.lo if rule.lo_open else x >= rule.lo) and x <= rule.hi))
        )  # (-0.0 is not below 0)
    msg = _refused(tmp_path, _file(section, key, value))
    assert f"mine.toml [{section}].{key}: expected " in msg, msg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    days=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=6),
)
def test_send_days_outside_a_30_day_episode_or_out_of_order_are_refused(
    tmp_path: Path, days: list[int]
) -> None:
    ok = days[0] == 1 and all(1 <= d <= 30 for d in days) and all(b > a for a, b in itertools.pairwise(days))
    f = tmp_path / "mine.toml"
    f.write_text(_file("policy", "episode_send_days", days))
    if ok:
        assert load_arm(str(f)).config.episode_send_days == tuple(days)  # type: ignore[union-attr]
    else:
        with pytest.raises(WhatIfError, match=re.escape("mine.toml [policy].episode_send_days: expected")):
            load_arm(str(f))


@pytest.mark.parametrize("key", ["segment_triggers", "recall_content"])
@pytest.mark.parametrize("value", [5, "x", ["social"]], ids=repr)
def test_a_per_segment_knob_must_be_a_table_keyed_by_segment(tmp_path: Path, key: str, value: Any) -> None:
    msg = _refused(tmp_path, _file("policy", key, value))
    assert f"mine.toml [policy].{key}: expected a table keyed by segment, got" in msg, msg


# ---- the rules cover everything; the defaults and the shipped policies pass them -----------------
def test_every_knob_of_every_section_has_exactly_one_rule() -> None:
    assert set(SECTIONS) == {"policy", "policy.signals", "policy.segment_rule"}
    nested = {"signals", "segment_rule"}
    assert {f.name for f in fields(PolicyConfig)} == set(POLICY_RULES) | nested
    assert {f.name for f in fields(SignalThresholds)} == set(SIGNAL_RULES)
    assert {f.name for f in fields(SegmentRule)} == set(SEGMENT_RULE_RULES)


def test_the_devices_defaults_are_the_brief_and_pass_every_rule() -> None:
    cfg = PolicyConfig()
    assert cfg.episode_send_days == (1, 7, 14)
    assert cfg.max_recalls_per_month == 3 and cfg.rejections_to_opt_out == 3
    assert PolicyConfig.from_dict(cfg.as_dict(), where="defaults") == cfg


@pytest.mark.parametrize("name", known_policies())
def test_every_shipped_policy_loads_within_the_rules(name: str) -> None:
    arm = load_arm(name)
    assert arm.source == str(POLICY_DIR / f"{name}.toml")
    if arm.config is not None:
        assert PolicyConfig.from_dict(arm.config.as_dict(), where=arm.source) == arm.config
        for key, rule in POLICY_RULES.items():  # a shipped value sits inside its range
            v = getattr(arm.config, key)
            if rule.kind in ("int", "float"):
                assert rule.lo <= v <= rule.hi, (name, key)


def test_two_arms_of_one_name_are_refused_naming_both_files(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text('name = "default"\n')
    with pytest.raises(WhatIfError) as e:
        check_lab([load_arm(str(f)), load_arm("default")], 50, 120)
    msg = str(e.value)
    assert "'default'" in msg and str(f) in msg and str(POLICY_DIR / "default.toml") in msg, msg
    with pytest.raises(WhatIfError, match="share the name 'x'"):
        check_lab([Arm("x", "model", PolicyConfig()), Arm("x", "none")], 50, 120)
