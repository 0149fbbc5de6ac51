"""Scenarios: the small TOML files that parameterise the simulated population.

A scenario is a frozen dataclass so that it can be hashed into the seed of every device: the
history of device i is a pure function of (population seed, i, scenario knobs). The `name` and
`description` are labels only and do not change the generated data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
SEGMENTS: tuple[str, ...] = ("price_sensitive", "content_dependent", "social", "utility")
# Days of history a population may span: two weeks for one churn horizon, ten years at most.
MIN_DAYS, MAX_DAYS = 14, 3650


class ScenarioError(ValueError):
    """A scenario file is missing, unknown or breaks a rule; the message says which."""


@dataclass(frozen=True)
class Segments:
    """Share of devices in each behaviour segment; the four shares sum to 1."""

    price_sensitive: float = 0.25
    content_dependent: float = 0.30
    social: float = 0.25
    utility: float = 0.20

    def shares(self) -> tuple[float, ...]:
        return tuple(getattr(self, s) for s in SEGMENTS)


@dataclass(frozen=True)
class Engagement:
    """Latent engagement: the per-device level and the daily drift around it."""

    level_min: float = 0.3  # lowest per-device engagement level (1 = typical user)
    level_max: float = 1.8  # highest per-device engagement level
    level_skew: float = 1.5  # in [1, 2]: 1 = levels uniform in [min, max], 2 = skewed low (u**2)
    drift_sd: float = 0.45  # stationary standard deviation of the latent drift z
    drift_persistence: float = 0.96  # AR(1) coefficient of z per day (0.96: drifts last ~25 days)
    events_scale: float = 1.0  # multiplies every per-day event rate (data volume knob)
    night_user_rate: float = 0.10  # share of devices whose sessions fall at local hours 0-5
    weekend_effect: float = 1.0  # scales the segment weekend/weekday contrast (0 = no weekly seasonality)


@dataclass(frozen=True)
class Churn:
    """The hazard process: daily churn probability driven by the latent engagement."""

    base_hazard: float = 0.0008  # daily churn probability of a typical user at typical engagement
    engagement_sensitivity: int = 2  # hazard x ((1.1) / (e + 0.1))**this, e = sqrt(level) x drift multiplier
    segment_hazard: tuple[float, float, float, float] = (1.3, 1.0, 0.8, 1.1)  # per segment, SEGMENTS order
    paid_channel_multiplier: float = 1.4  # users acquired through paid channels churn more
    notifications_off_multiplier: float = 1.25  # users with notifications disabled churn more
    same_category_app_multiplier: float = 0.08  # + this per same-category app installed
    low_tier_multiplier: float = 1.2  # low-end devices churn more
    new_user_hazard_multiplier: float = 5.0  # hazard multiplier during a new user's onboarding days
    onboarding_days: int = 14
    no_warning_rate: float = 0.10  # share of churners whose behaviour does not decay before churn
    stray_event_rate: float = 0.03  # notification dismissals per day after churn (never a session)


@dataclass(frozen=True)
class Triggers:
    """Segment-specific churn triggers (the brief's critical points)."""

    discount_churn_prob: float = 0.06  # price-sensitive: chance a discount end triggers churn
    discount_tolerance_days: int = 3  # ... which happens this many days after the discount ends
    feed_drop_rate: float = 0.30  # content-dependent: chance of a feed-quality drop in the history
    feed_churn_prob: float = 0.45  # ... chance that the drop triggers churn
    feed_reaction_days: int = 7  # ... which happens this many days after the drop
    friends_episode_rate: float = 0.30  # social: chance of an episode where friends leave
    friends_loss_max: float = 0.40  # share of friends lost in an episode is uniform in [0.03, this]
    friends_churn_threshold: float = 0.15  # churn only when more than this share of friends left
    friends_churn_prob: float = 0.70  # ... and then with this probability
    competitor_rate: float = 0.15  # utility: chance a same-category app gets installed
    competitor_churn_prob: float = 0.40  # ... chance that it triggers churn within 5-15 days


@dataclass(frozen=True)
class Decay:
    """Behaviour in the days before churn (warned churners), calibrated to the brief."""

    window_days: int = 7  # the pre-churn window
    predecline_days: int = 14  # before the window, engagement declines gradually over this many days
    predecline_floor: float = 0.75  # ... down to this x the user's engagement
    private_messages_drop: float = 0.62  # pooled drop over all churners, no-warning ones included
    profile_updates_drop: float = 0.81  # same, for profile updates
    content_ratio: float = 0.15  # content minutes per active day in the window, x the user's daily mean
    content_threshold: float = 0.40  # the brief's "below 40% of the historical mean" (report threshold)
    content_days: int = 5  # the brief's "for 5 consecutive days" (report target)
    cart_abandons_per_day: float = 1.5  # price-sensitive churners: abandoned carts per active day
    cart_abandon_streak: int = 3  # the brief's "3 abandoned carts in a row" (report target)
    repeat_view_multiplier: float = 4.0  # price-sensitive churners: repeated product views x this
    activity_floor: float = 0.5  # activity probability falls linearly to this x normal by churn
    notifications_off_prob: float = 0.25  # warned churners that switch notifications off in the window


@dataclass(frozen=True)
class Foolers:
    """Behaviour that looks like churn but is not, and churn that looks like nothing."""

    promo_period_days: int = 28  # one discount opportunity per period
    promo_participation: tuple[float, float, float, float] = (0.85, 0.35, 0.30, 0.25)  # per segment
    promo_days_min: int = 3
    promo_days_max: int = 7
    promo_lull_rate: float = 0.30  # chance of a normal 2-6 day silence right after a discount ends
    promo_lull_days_max: int = 6
    quiet_return_rate: float = 0.12  # share of devices with one quiet spell that ends with a return
    quiet_days_min: int = 4
    quiet_days_max: int = 10  # < 14, so quiet spells are never churn by definition
    holiday_quiet_rate: float = 0.20  # chance a device goes quiet over each holiday
    new_user_rate: float = 0.12  # share of devices whose history starts late (short histories)
    new_user_max_age_days: int = 45  # new users installed 3..this days before today


@dataclass(frozen=True)
class Holiday:
    """A holiday: a date range in which some users go quiet and others consume more."""

    start: str  # ISO date
    days: int
    tz_min: tuple[int, ...] = ()  # only devices in these UTC offsets (empty = everyone)


_DEFAULT_HOLIDAYS = (
    Holiday("2024-12-24", 3),
    Holiday("2024-12-31", 2),
    Holiday("2025-01-28", 7, (480,)),
)
_DEFAULT_TZ = ((480, 0.30), (0, 0.15), (60, 0.15), (-300, 0.15), (-480, 0.10), (330, 0.10), (540, 0.05))


@dataclass(frozen=True)
class Scenario:
    """Every knob of the simulated population; `simulations/scenarios/default.toml` documents each."""

    name: str = "default"
    description: str = ""
    days: int = 120  # length of the history (local days), ending on `today`
    start_date: str = "2024-10-07"  # first local day of the history (ISO date)
    horizon_days: int = 14  # churn is simulated this far beyond today so truth has the 14-day label
    timezones: tuple[tuple[int, float], ...] = _DEFAULT_TZ  # (UTC offset minutes, share)
    segments: Segments = field(default_factory=Segments)
    engagement: Engagement = field(default_factory=Engagement)
    churn: Churn = field(default_factory=Churn)
    triggers: Triggers = field(default_factory=Triggers)
    decay: Decay = field(default_factory=Decay)
    foolers: Foolers = field(default_factory=Foolers)
    holidays: tuple[Holiday, ...] = _DEFAULT_HOLIDAYS

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def start_day(self) -> int:
        """First local day of the history, in days since 1970-01-01."""
        return (dt.date.fromisoformat(self.start_date) - dt.date(1970, 1, 1)).days

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready knobs (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    def knob_hash(self) -> int:
        """64-bit hash of the knobs (not the name or description): part of every device's seed."""
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")

    def with_days(self, days: int | None) -> Scenario:
        if days is not None:
            _check_days(days)
        return self if days is None or days == self.days else dataclasses.replace(self, days=days)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _check_days(days: int) -> None:
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise ScenarioError(f"days must be in {MIN_DAYS}..{MAX_DAYS}, got {days}")


# ---------------------------------------------------------------------------------------------
# Validation: one table of rules, checked on the whole scenario before any generation.
#
# Types come from the dataclass annotations (int: an integer, never a bool or a float; float: an
# integer or a finite float; str; tuples of the declared element type and length; the sections
# and [[holidays]] as tables). Ranges come from `_RULES` below, one entry per numeric knob, and
# the few rules that tie knobs together from `_cross_checks`. Every error reads
# `FILE [section].knob: expected ..., got ...` (top-level knobs have no section).
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Range:
    """Closed (or half-open) interval a number must lie in; `None` = unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, x: float) -> bool:
        lo_ok = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        hi_ok = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return lo_ok and hi_ok

    def text(self, integer: bool) -> str:
        if integer and self.lo is not None and self.hi is not None:
            lo = int(self.lo) + self.lo_open
            hi = int(self.hi) - self.hi_open
            return f"an integer in {lo}..{hi}"
        noun = "an integer" if integer else "a number"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{noun} in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{noun} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return noun


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The evaluated field annotations of a dataclass (this module uses postponed annotations)."""
    return typing.get_type_hints(cls)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_PROB = _Range(0, 1)  # a probability or a share
# A churn risk factor. The hazard is compared with a uniform draw, so past 100x a typical user
# churns within days whatever the other knobs say: larger values only saturate.
_FACTOR = _Range(0, 100)
_TZ_MIN = _Range(-14 * 60, 14 * 60)  # UTC offsets in minutes: UTC-14:00 .. UTC+14:00 cover every zone
# Delays after a trigger: beyond two months (the horizon's bound too) the churn no longer follows
# from the trigger; at least 1-2 days so it never precedes it (see each knob).
_DELAY_MAX = 60
# Never more than this many events of one kind per device-day (population._MAX_PER_CELL).
_MAX_PER_CELL = 40
# The engagement level scales every rate by (0.4 + 0.6 x level); past 10x a typical user it is an
# events_scale beyond that knob's bound.
_LEVEL = _Range(0, 10, lo_open=True)
# events_scale x days: the event volume of the longest history (MAX_DAYS) at the default rate,
# what the generator's memory (a chunk of 512 devices x days x channels) is sized for.
MAX_EVENT_DAYS = MAX_DAYS
MAX_HOLIDAYS = 100  # each holiday is one pass over every device-day; a calendar, not a data set

# (section, knob) -> range of every number in it; section "" = top level, "holidays" = [[holidays]].
# A tuple of ranges gives one per position (timezones: offset, share).
_RULES: dict[tuple[str, str], _Range | tuple[_Range, ...]] = {
    ("", "days"): _Range(MIN_DAYS, MAX_DAYS),
    # Churn is simulated this far past today; 14 gives truth its 14-day label, 60 is plenty.
    ("", "horizon_days"): _Range(0, 60),
    ("", "timezones"): (_TZ_MIN, _Range(0)),  # (offset minutes, share >= 0; shares are normalised)
    **{("segments", s): _PROB for s in SEGMENTS},
    ("engagement", "level_min"): _LEVEL,
    ("engagement", "level_max"): _LEVEL,
    ("engagement", "level_skew"): _Range(1, 2),  # blend of u (1) and u**2 (2)
    # The drift multiplier 1 + z/(1+|z|) saturates at 0 or 2 long before an sd of 10.
    ("engagement", "drift_sd"): _Range(0, 10),
    ("engagement", "drift_persistence"): _Range(0, 1, hi_open=True),  # AR(1): 1 never mixes
    # Every per-day rate x this: past 10 the busiest channels hit the cap of 40 events per
    # device-day, so the knob no longer scales the data, only the memory (see MAX_EVENT_DAYS).
    ("engagement", "events_scale"): _Range(0, 10, lo_open=True),
    ("engagement", "night_user_rate"): _PROB,
    # Weekday factor 1 + this x (w - 1): the lowest w (0.7, utility on Sundays) must stay > 0.
    ("engagement", "weekend_effect"): _Range(0, 3),
    ("churn", "base_hazard"): _PROB,  # a daily probability
    ("churn", "engagement_sensitivity"): _Range(0, 6),  # an exponent, applied by repeated products
    ("churn", "segment_hazard"): _FACTOR,
    ("churn", "paid_channel_multiplier"): _FACTOR,
    ("churn", "notifications_off_multiplier"): _FACTOR,
    ("churn", "same_category_app_multiplier"): _FACTOR,  # added per app (0-5 apps)
    ("churn", "low_tier_multiplier"): _FACTOR,
    ("churn", "new_user_hazard_multiplier"): _FACTOR,
    ("churn", "onboarding_days"): _Range(1, 59),  # onboarding is shorter than two months
    ("churn", "no_warning_rate"): _PROB,
    ("churn", "stray_event_rate"): _PROB,  # dismissals per day after churn: rare by definition
    ("triggers", "discount_churn_prob"): _PROB,
    # Churn falls this (+-1) days after the discount ends: >= 1 so it is never during the discount.
    ("triggers", "discount_tolerance_days"): _Range(1, _DELAY_MAX),
    ("triggers", "feed_drop_rate"): _PROB,
    ("triggers", "feed_churn_prob"): _PROB,
    # Churn falls this (+-2) days after the feed drop: >= 2 so it never precedes the drop.
    ("triggers", "feed_reaction_days"): _Range(2, _DELAY_MAX),
    ("triggers", "friends_episode_rate"): _PROB,
    ("triggers", "friends_loss_max"): _PROB,  # a share of friends
    ("triggers", "friends_churn_threshold"): _PROB,  # a share of friends
    ("triggers", "friends_churn_prob"): _PROB,
    ("triggers", "competitor_rate"): _PROB,
    ("triggers", "competitor_churn_prob"): _PROB,
    ("decay", "window_days"): _Range(2, 14),  # the brief's pre-churn week, two at most
    ("decay", "predecline_days"): _Range(1, 60),
    ("decay", "predecline_floor"): _Range(0, 1, lo_open=True),  # x engagement: a decline, never 0
    ("decay", "private_messages_drop"): _PROB,  # a share of the earlier rate
    ("decay", "profile_updates_drop"): _PROB,
    ("decay", "content_ratio"): _Range(0, 1, lo_open=True),  # also < content_threshold
    ("decay", "content_threshold"): _Range(0, 1, lo_open=True),  # a share of the historical mean
    # Report target, days in a row within the pre-churn window (window_days is at most 14).
    ("decay", "content_days"): _Range(1, 14),
    ("decay", "cart_abandons_per_day"): _Range(0, _MAX_PER_CELL),  # the generator's per-day cap
    # Report target; 3 is the brief's. The window holds at most 14 days x 40 abandons, but past
    # 100 in a row the check could never pass at any rate this knob allows.
    ("decay", "cart_abandon_streak"): _Range(1, 100),
    # Price churners' repeat views (0.35 a day) x this: at 100 they already hit the cap of 40 a day.
    ("decay", "repeat_view_multiplier"): _Range(0, 100),
    ("decay", "activity_floor"): _PROB,  # x the normal session probability
    ("decay", "notifications_off_prob"): _PROB,
    # A discount starts in the first (period - 14) days of its period, so >= 14; at most one a
    # year (set promo_participation to 0 for none): longer periods only push discounts past `today`.
    ("foolers", "promo_period_days"): _Range(14, 365),
    ("foolers", "promo_participation"): _PROB,
    ("foolers", "promo_days_min"): _Range(1, 365),  # also <= promo_days_max < promo_period_days - 8
    ("foolers", "promo_days_max"): _Range(1, 365),
    ("foolers", "promo_lull_rate"): _PROB,
    ("foolers", "promo_lull_days_max"): _Range(2, 10),  # a lull lasts 2..this days, never churn-long
    ("foolers", "quiet_return_rate"): _PROB,
    ("foolers", "quiet_days_min"): _Range(1, 10),
    ("foolers", "quiet_days_max"): _Range(1, 10),  # < 14, so a quiet spell is never churn
    ("foolers", "holiday_quiet_rate"): _PROB,
    ("foolers", "new_user_rate"): _PROB,
    # New users are 3..this days old; it is capped at days - 1, so MAX_DAYS is the most that matters.
    ("foolers", "new_user_max_age_days"): _Range(3, MAX_DAYS),
    ("holidays", "days"): _Range(1, 8),  # a holiday silence plus its margins stays < 14 days
    ("holidays", "tz_min"): _TZ_MIN,
}
# String knobs: labels, or ISO dates (checked by _check_date).
_STRINGS = {("", "name"), ("", "description"), ("", "start_date"), ("holidays", "start")}
# Day numbers count from 1970-01-01 and the truth marks "none" with day -1, and an event's UTC
# timestamp is its local time minus up to 14 hours: so the history starts on 1970-01-02 or later.
_FIRST_START = dt.date(1970, 1, 2)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class _KnobError(ScenarioError):
    """A knob breaks a rule; `scenario_from_dict` prefixes the file it came from."""

    def __init__(self, knob: str, detail: str) -> None:
        super().__init__(f"scenario {knob}: {detail}")
        self.knob = knob
        self.detail = detail


def _got(v: Any) -> str:
    """A value as the error shows it: TOML-like, with its kind when the kind is the problem."""
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, dt.date | dt.time):
        return f"{v.isoformat()} (a TOML date/time, not a string)"
    if isinstance(v, str):
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(v, list | tuple):
        inner = ", ".join(_got(x) for x in v[:6]) + (", ..." if len(v) > 6 else "")
        return f"[{inner}]"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return f"a {type(v).__name__}"


_NOUNS: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a string", "strings"),
}


def _describe(tp: Any, plural: bool = False) -> str:
    if tp in _NOUNS:
        return _NOUNS[tp][plural]
    if dataclasses.is_dataclass(tp):
        return "tables" if plural else "a table"
    args = typing.get_args(tp)
    if args and args[-1] is Ellipsis:
        return (
            f"arrays of {_describe(args[0], True)}" if plural else f"an array of {_describe(args[0], True)}"
        )
    if len(set(args)) == 1:
        return (
            f"arrays of {len(args)} {_describe(args[0], True)}"
            if plural
            else f"an array of {len(args)} {_describe(args[0], True)}"
        )
    pair = "[" + ", ".join(_describe(a).split(" ", 1)[1] for a in args) + "]"
    return f"{pair} arrays" if plural else f"a {pair} array"


def _fits(v: Any, tp: Any) -> bool:
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, str)


def _check_type(v: Any, tp: Any, knob: str) -> None:
    """`v` has the annotated type `tp`, recursively; `knob` is the path the error names."""
    if tp in _NOUNS:
        if not _fits(v, tp):
            raise _KnobError(knob, f"expected {_describe(tp)}, got {_got(v)}")
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(v, tp):
            raise _KnobError(knob, f"expected a table, got {_got(v)}")
        hints = _hints(tp)
        for f in fields(tp):
            sub = hints[f.name]
            child = f"{knob}.{f.name}" if knob else f"[{f.name}]" if dataclasses.is_dataclass(sub) else f.name
            _check_type(getattr(v, f.name), sub, child)
        return
    args = typing.get_args(tp)
    if not isinstance(v, tuple):
        raise _KnobError(knob, f"expected {_describe(tp)}, got {_got(v)}")
    if not (args and args[-1] is Ellipsis) and len(v) != len(args):
        n = f"{len(v)} value" + ("s" if len(v) != 1 else "")
        raise _KnobError(knob, f"expected {_describe(tp)}, got {_got(v)} ({n})")
    for i, x in enumerate(v):
        et = args[0] if args[-1] is Ellipsis else args[i]
        _check_type(x, et, f"[[holidays]][{i}]" if et is Holiday else f"{knob}[{i}]")


def _check_date(knob: str, value: str, first: dt.date | None) -> None:
    want = "an ISO date string (YYYY-MM-DD)" + (f" from {first} on" if first else "")
    try:
        ok = bool(_ISO_DATE.fullmatch(value)) and (first is None or dt.date.fromisoformat(value) >= first)
    except ValueError:
        ok = False
    if not ok:
        raise _KnobError(knob, f"expected {want}, got {_got(value)}")


def _check_numbers(knob: str, value: Any, rule: _Range | tuple[_Range, ...], integer: bool) -> None:
    if isinstance(value, tuple):
        for i, x in enumerate(value):
            if isinstance(x, tuple):  # timezones: one rule per position
                assert isinstance(rule, tuple)
                for j, (y, r) in enumerate(zip(x, rule, strict=True)):
                    _check_numbers(f"{knob}[{i}][{j}]", y, r, isinstance(y, int) and j == 0)
            else:
                _check_numbers(f"{knob}[{i}]", x, rule, integer)
        return
    assert isinstance(rule, _Range)
    if not rule.holds(value):
        raise _KnobError(knob, f"expected {rule.text(integer)}, got {_got(value)}")


def _sections(s: Scenario) -> list[tuple[str, str, Any]]:
    """(rule section, error prefix, object holding the knobs): the top level, tables, holidays."""
    return [
        ("", "", s),
        *((name, f"[{name}]", getattr(s, name)) for name in _SECTIONS),
        *(("holidays", f"[[holidays]][{i}]", h) for i, h in enumerate(s.holidays)),
    ]


def _validate(s: Scenario) -> None:
    """Every knob's type (the annotations), then its range (`_RULES`), then `_cross_checks`."""
    _check_type(s, Scenario, "")
    for section, prefix, obj in _sections(s):
        hints = _hints(obj.__class__)
        for f in fields(obj):
            key = (section, f.name)
            if key in _STRINGS or (obj is s and f.name in (*_SECTIONS, "holidays")):
                continue
            knob = f"{prefix}.{f.name}" if prefix else f.name
            # KeyError: a numeric knob without a rule (tests/test_scenario_inputs.py checks there is none)
            _check_numbers(
                knob, getattr(obj, f.name), _RULES[key], int in (hints[f.name], *_leaves(hints[f.name]))
            )
    _check_date("start_date", s.start_date, _FIRST_START)
    for i, h in enumerate(s.holidays):
        _check_date(f"[[holidays]][{i}].start", h.start, None)
    _cross_checks(s)


def _leaves(tp: Any) -> tuple[Any, ...]:
    """The element types of a tuple annotation (one level)."""
    return tuple(a for a in typing.get_args(tp) if a is not Ellipsis)


def _need(cond: bool, knob: str, detail: str) -> None:
    if not cond:
        raise _KnobError(knob, detail)


def _cross_checks(s: Scenario) -> None:
    shares = s.segments.shares()
    _need(
        abs(sum(shares) - 1) < 1e-6,
        "[segments]",
        f"expected shares that sum to 1, got {' + '.join(map(str, shares))} = {sum(shares):g}",
    )
    _need(
        any(w > 0 for _, w in s.timezones),
        "timezones",
        f"expected at least one [offset minutes, share] pair with a share > 0, got {_got(s.timezones)}",
    )
    _need(
        len(s.holidays) <= MAX_HOLIDAYS,
        "holidays",
        f"expected at most {MAX_HOLIDAYS} [[holidays]], got {len(s.holidays)}",
    )
    e, d, f = s.engagement, s.decay, s.foolers
    _need(
        e.events_scale * s.days <= MAX_EVENT_DAYS,
        "[engagement].events_scale",
        f"expected events_scale x days <= {MAX_EVENT_DAYS} (the volume of {MAX_DAYS} days at the "
        f"default rate), got {_num(e.events_scale)} x {s.days} days",
    )
    _need(
        e.level_max >= e.level_min,
        "[engagement].level_max",
        f"expected >= level_min ({_num(e.level_min)}), got {_num(e.level_max)}",
    )
    _need(
        d.content_ratio < d.content_threshold,
        "[decay].content_ratio",
        f"expected < content_threshold ({_num(d.content_threshold)}), got {_num(d.content_ratio)}",
    )
    _need(
        f.quiet_days_max >= f.quiet_days_min,
        "[foolers].quiet_days_max",
        f"expected >= quiet_days_min ({f.quiet_days_min}), got {f.quiet_days_max}",
    )
    _need(
        f.promo_days_max >= f.promo_days_min,
        "[foolers].promo_days_max",
        f"expected >= promo_days_min ({f.promo_days_min}), got {f.promo_days_max}",
    )
    _need(
        f.promo_days_max < f.promo_period_days - 8,
        "[foolers].promo_days_max",
        f"expected < promo_period_days - 8 = {f.promo_period_days - 8} (a discount and the days "
        f"after it fit in one period), got {f.promo_days_max}",
    )


_SECTIONS: dict[str, type] = {
    "segments": Segments,
    "engagement": Engagement,
    "churn": Churn,
    "triggers": Triggers,
    "decay": Decay,
    "foolers": Foolers,
}


def known_scenarios() -> list[str]:
    """Names of the scenarios shipped in `simulations/scenarios/`."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def _tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _section(cls: type, table: Any, where: str, knob: str) -> Any:
    """The dataclass `cls` from one TOML table; types and ranges are checked on the whole scenario."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{where} {knob}: expected a table, got {_got(table)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(
            f"{where} {knob}: unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for f in fields(cls):
        if (
            f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in table
        ):
            hint = _hints(cls)[f.name]
            want = "an ISO date string (YYYY-MM-DD)" if hint is str else _describe(hint)
            raise ScenarioError(f"{where} {knob}.{f.name}: expected {want} (required), got nothing")
    return cls(**{k: _tuples(v) for k, v in table.items()})


def scenario_from_dict(data: dict[str, Any], where: str = "scenario") -> Scenario:
    """Build a scenario from parsed TOML (or `Scenario.to_dict()` output); unset knobs keep defaults.
    Every knob is checked (type, range, the rules between knobs) before this returns; a
    ScenarioError reads `WHERE [section].knob: expected ..., got ...`."""
    kwargs: dict[str, Any] = {}
    top = {f.name for f in fields(Scenario)}
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _section(_SECTIONS[key], value, where, f"[{key}]")
        elif key == "holidays":
            if not isinstance(value, list | tuple):
                raise ScenarioError(
                    f"{where} holidays: expected an array of tables ([[holidays]]), got {_got(value)}"
                )
            kwargs[key] = tuple(
                _section(Holiday, h, where, f"[[holidays]][{i}]") for i, h in enumerate(value)
            )
        elif key in top:
            kwargs[key] = _tuples(value)
        else:
            raise ScenarioError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(top))}")
    try:
        return Scenario(**kwargs)
    except _KnobError as err:
        raise ScenarioError(f"{where} {err.knob}: {err.detail}") from None


def read_named_toml(name_or_path: str | Path, folder: Path, kind: str) -> tuple[Path, dict[str, Any]]:
    """A shipped TOML file by name (`folder/<name>.toml`) or any TOML file by path, parsed; a
    ValueError names the file (or the unknown name and the shipped ones) for anything else."""
    shipped = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = folder / f"{name_or_path}.toml"
        if not path.is_file():
            raise ValueError(f"unknown {kind} {str(name_or_path)!r}; known: {shipped}")
    elif not path.is_file():
        raise ValueError(f"{kind} file {str(path)!r} not found; shipped: {shipped}")
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def load_scenario(name_or_path: str | Path = "default") -> Scenario:
    """Load a shipped scenario by name, or any scenario TOML file by path."""
    try:
        path, data = read_named_toml(name_or_path, SCENARIO_DIR, "scenario")
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    data.setdefault("name", path.stem)
    return scenario_from_dict(data, where=str(path))
