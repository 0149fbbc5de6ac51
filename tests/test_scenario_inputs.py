"""Scenario TOML files are checked completely before any generation (review of `--scenario`).

Before, a decimal where a whole number is needed passed and crashed later (`days = 120.5`), wrong
shapes gave tracebacks (`holidays = 5`, `timezones = [[0]]`, a TOML date for `start_date`),
infinite or absurd values were accepted (`events_scale = inf`, `promo_period_days = 100000000`)
and range errors named neither the file nor the section. Now every error reads
`FILE [section].knob: expected ..., got ...` and is a ScenarioError (a ValueError).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedchurn.simulations import scenario as scn
from fedchurn.simulations.scenario import (
    Scenario,
    ScenarioError,
    known_scenarios,
    load_scenario,
    scenario_from_dict,
)

# (TOML text, the knob the error names, a fragment of what it expected)
BAD: list[tuple[str, str, str]] = [
    # a decimal where a whole number is needed
    ("days = 120.5", "days", "expected an integer"),
    ("days = 120.0", "days", "expected an integer"),
    ("horizon_days = 7.5", "horizon_days", "expected an integer"),
    ("[churn]\nengagement_sensitivity = 2.5", "[churn].engagement_sensitivity", "expected an integer"),
    ('[[holidays]]\nstart = "2024-12-24"\ndays = 2.5', "[[holidays]][0].days", "expected an integer"),
    ("[churn]\nonboarding_days = 7.5", "[churn].onboarding_days", "expected an integer"),
    ("[foolers]\nquiet_days_max = 9.5", "[foolers].quiet_days_max", "expected an integer"),
    ("[foolers]\nnew_user_max_age_days = 45.5", "[foolers].new_user_max_age_days", "expected an integer"),
    ("timezones = [[30.5, 1.0]]", "timezones[0][0]", "expected an integer"),
    ("days = true", "days", "expected an integer"),
    # wrong shapes
    ("holidays = 5", "holidays", "expected an array of tables"),
    ("[[holidays]]\ndays = 2", "[[holidays]][0].start", "expected an ISO date"),
    ('[[holidays]]\nstart = "2024-12-24"', "[[holidays]][0].days", "expected an integer"),
    ("timezones = [[0]]", "timezones[0]", "expected a [integer, finite number] array"),
    ("timezones = [[0, 1.0, 2]]", "timezones[0]", "expected a [integer, finite number] array"),
    (
        '[[holidays]]\nstart = "2024-12-24"\ndays = 2\ntz_min = "abc"',
        "[[holidays]][0].tz_min",
        "expected an array",
    ),
    ('[[holidays]]\nstart = "2024-12-24"\ndays = 2\ntz_min = [1.5]', "[[holidays]][0].tz_min[0]", "integer"),
    ('[churn]\nsegment_hazard = "abc"', "[churn].segment_hazard", "expected an array of 4 finite numbers"),
    ("[churn]\nsegment_hazard = [1.0, 1.0]", "[churn].segment_hazard", "expected an array of 4"),
    ('days = "x"', "days", "expected an integer, got 'x'"),
    ("start_date = 2024-10-07", "start_date", "expected a string, got 2024-10-07 (a TOML date"),
    ('start_date = "2024-13-01"', "start_date", "expected an ISO date"),
    ('start_date = "20241007"', "start_date", "expected an ISO date"),
    ('start_date = "1969-12-31"', "start_date", "from 1970-01-02"),
    ("timezones = 5", "timezones", "expected an array of [integer, finite number] arrays, got 5"),
    ("timezones = []", "timezones", "share > 0"),
    ("timezones = [[0, 0.0]]", "timezones", "share > 0"),
    ("churn = 5", "[churn]", "expected a table, got 5"),
    ("[churn]\nbase_hazard = [0.1]", "[churn].base_hazard", "expected a finite number"),
    ('[churn]\nbase_hazard = "0.1"', "[churn].base_hazard", "expected a finite number"),
    ("holidays = [5]", "[[holidays]][0]", "expected a table"),
    ("name = 5", "name", "expected a string"),
    ("description = [1]", "description", "expected a string"),
    # infinite, out of range or absurd
    ("[engagement]\nevents_scale = inf", "[engagement].events_scale", "finite"),
    ("[engagement]\nevents_scale = nan", "[engagement].events_scale", "finite"),
    ("[engagement]\ndrift_sd = inf", "[engagement].drift_sd", "finite"),
    ("[churn]\nbase_hazard = inf", "[churn].base_hazard", "finite"),
    ("[churn]\nbase_hazard = 1.5", "[churn].base_hazard", "in [0, 1]"),
    ("[churn]\npaid_channel_multiplier = -5.0", "[churn].paid_channel_multiplier", "in [0, 100]"),
    ("[churn]\nsegment_hazard = [-1.0, 1.0, 1.0, 1.0]", "[churn].segment_hazard[0]", "in [0, 100]"),
    ("[triggers]\ndiscount_tolerance_days = -100", "[triggers].discount_tolerance_days", "1..60"),
    ("[decay]\ncontent_days = 1000", "[decay].content_days", "1..14"),
    ("[foolers]\npromo_period_days = 100000000", "[foolers].promo_period_days", "14..365"),
    ("[decay]\ncart_abandons_per_day = inf", "[decay].cart_abandons_per_day", "finite"),
    ("[decay]\ncart_abandons_per_day = 1000.0", "[decay].cart_abandons_per_day", "in [0, 40]"),
    ("[decay]\nrepeat_view_multiplier = 1e12", "[decay].repeat_view_multiplier", "in [0, 100]"),
    ("[engagement]\nevents_scale = 1e6", "[engagement].events_scale", "in (0, 10]"),
    ("[engagement]\nevents_scale = 0.0", "[engagement].events_scale", "in (0, 10]"),
    (
        "days = 3650\n[engagement]\nevents_scale = 5.0",
        "[engagement].events_scale",
        "events_scale x days <= 3650",
    ),
    ("[engagement]\nweekend_effect = 10.0", "[engagement].weekend_effect", "in [0, 3]"),
    ("[engagement]\nlevel_max = 0.2", "[engagement].level_max", ">= level_min (0.3)"),
    ("[engagement]\nlevel_min = 0.0", "[engagement].level_min", "in (0, 10]"),
    ("[churn]\nengagement_sensitivity = 7", "[churn].engagement_sensitivity", "0..6"),
    ("[churn]\nstray_event_rate = 2.0", "[churn].stray_event_rate", "in [0, 1]"),
    ("[engagement]\ndrift_persistence = 1.0", "[engagement].drift_persistence", "in [0, 1)"),
    ("[foolers]\npromo_participation = [0.5, 0.5, 0.5, 1.5]", "[foolers].promo_participation[3]", "[0, 1]"),
    ("[foolers]\npromo_days_max = 25", "[foolers].promo_days_max", "promo_period_days - 8 = 20"),
    ("[foolers]\nquiet_days_min = 8\nquiet_days_max = 6", "[foolers].quiet_days_max", ">= quiet_days_min"),
    ("[decay]\ncontent_ratio = 0.5", "[decay].content_ratio", "< content_threshold"),
    ("days = 100000", "days", "an integer in 14..3650, got 100000"),
    ("timezones = [[900, 1.0]]", "timezones[0][0]", "an integer in -840..840"),
    ("timezones = [[0, -1.0]]", "timezones[0][1]", "a number >= 0"),
    ('[[holidays]]\nstart = "2024-12-24"\ndays = 9', "[[holidays]][0].days", "1..8, got 9"),
    (
        '[[holidays]]\nstart = "2024-12-24"\ndays = 2\ntz_min = [2000]',
        "[[holidays]][0].tz_min[0]",
        "-840..840",
    ),
    ('[[holidays]]\nstart = "abc"\ndays = 2', "[[holidays]][0].start", "expected an ISO date"),
    ("[segments]\nsocial = 0.9", "[segments]", "sum to 1"),
    ("[segments]\nsocial = -0.1\nutility = 0.55", "[segments].social", "in [0, 1]"),
]


def _load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return load_scenario(path)


@pytest.mark.parametrize(("text", "knob", "expected"), BAD, ids=[t for t, _, _ in BAD])
def test_bad_knob_is_refused_naming_file_and_knob(
    tmp_path: Path, text: str, knob: str, expected: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        _load(tmp_path, text)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert msg.startswith(f"{tmp_path / 'bad.toml'} {knob}: expected "), msg
    assert expected in msg, msg
    assert "got " in msg, msg


def test_many_holidays_are_refused(tmp_path: Path) -> None:
    text = "\n".join('[[holidays]]\nstart = "2024-12-24"\ndays = 1' for _ in range(scn.MAX_HOLIDAYS + 1))
    with pytest.raises(ScenarioError, match=r"bad\.toml holidays: expected at most 100"):
        _load(tmp_path, text)


@pytest.mark.parametrize("name", ["default", "stress", "clean"])
def test_every_shipped_scenario_still_loads_unchanged(name: str) -> None:
    assert name in known_scenarios()
    sc = load_scenario(name)
    assert scenario_from_dict(sc.to_dict()) == sc
    if name == "default":
        assert sc.knob_hash() == Scenario().knob_hash()


def test_every_numeric_knob_has_a_rule() -> None:
    """A new numeric knob needs a range in `_RULES` (the validator raises KeyError without one)."""
    for cls, section in [
        (Scenario, ""),
        *((c, s) for s, c in scn._SECTIONS.items()),
        (scn.Holiday, "holidays"),
    ]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (section, f.name) in scn._STRINGS or dataclasses.is_dataclass(hints[f.name]):
                continue
            if cls is Scenario and f.name == "holidays":
                continue
            assert (section, f.name) in scn._RULES, (section, f.name)


def test_with_days_checks_the_event_volume_before_generation() -> None:
    sc = scenario_from_dict({"engagement": {"events_scale": 10.0}})
    assert sc.with_days(365).days == 365
    with pytest.raises(ScenarioError, match=r"\[engagement\]\.events_scale: expected events_scale x days"):
        sc.with_days(366)
    with pytest.raises(ScenarioError, match=r"^days must be in 14\.\.3650, got 5$"):
        sc.with_days(5)


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ScenarioError, match=r"^scenario \[churn\]\.onboarding_days: expected an integer"):
        Scenario(churn=scn.Churn(onboarding_days=7.5))  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match=r"^scenario days: expected an integer"):
        dataclasses.replace(Scenario(), days=120.5)  # type: ignore[arg-type]


_FLOAT_KNOBS = [
    (section, f.name)
    for section, cls in scn._SECTIONS.items()
    for f in dataclasses.fields(cls)
    if typing.get_type_hints(cls)[f.name] is float
]
_INT_KNOBS = [
    (section, f.name)
    for section, cls in scn._SECTIONS.items()
    for f in dataclasses.fields(cls)
    if typing.get_type_hints(cls)[f.name] is int
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    knob=st.sampled_from(_FLOAT_KNOBS),
    value=st.one_of(
        st.sampled_from([math.inf, -math.inf, math.nan, -1.0, -1e-9, 1e300]),
        st.floats(min_value=-1e12, max_value=1e12),
    ),
)
def test_any_float_knob_is_finite_and_in_range_or_refused(knob: tuple[str, str], value: float) -> None:
    section, name = knob
    try:
        sc = scenario_from_dict({section: {name: value}}, where="f.toml")
    except ScenarioError as err:
        assert str(err).startswith("f.toml [")
        assert "expected" in str(err) and "got" in str(err)
        return
    got = getattr(getattr(sc, section), name)
    assert math.isfinite(got)
    rule = scn._RULES[(section, name)]
    assert isinstance(rule, scn._Range) and rule.holds(got)


@settings(max_examples=100, deadline=None)
@given(
    knob=st.sampled_from(_INT_KNOBS), value=st.floats(allow_nan=False).filter(lambda x: not x.is_integer())
)
def test_any_int_knob_refuses_a_decimal(knob: tuple[str, str], value: float) -> None:
    section, name = knob
    with pytest.raises(ScenarioError, match=rf"^f\.toml \[{section}\]\.{name}: expected an integer"):
        scenario_from_dict({section: {name: value}}, where="f.toml")
