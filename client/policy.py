"""The retention policy on the device: a deterministic state machine, one decision per local day.

`step(state, day_input, config)` is a pure function, so the same history always gives the same
decisions: a Kotlin/Swift port checks itself against the golden vectors, and property tests explore
arbitrary histories. The defaults are the brief's figures (recall episode sending on days 1, 7 and
14; at most 3 recalls per calendar month; 3 consecutive rejections take the user off the marketing
list until they opt back in; high risk at 0.78; quieter thresholds while a discount runs). Basic
service never depends on a decision: every decision says `basic_service=True`.

Numpy alone. The decisions are kept by `client.decision_log`; `client.policy_batch` runs this
state machine over many devices at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import Any, Literal, NamedTuple

import numpy as np

from fedchurn.client.pipeline import device_features
from fedchurn.client.signals import SIGNAL_NAMES, SignalThresholds, signals
from fedchurn.shared.catalogue import BY_ID
from fedchurn.shared.events import local_day
from fedchurn.shared.feature_spec import BASE_FEATURES, FEATURE_INDEX, N_FEATURES, RECENCY_CAP
from fedchurn.shared.model_format import HIGH_RISK, MEDIUM_RISK, churn_probability

SEGMENTS: tuple[str, ...] = ("price_sensitive", "content_dependent", "social", "utility")
Action = Literal["none", "recall", "alert_only"]
Response = Literal["accepted", "rejected"]
Consent = Literal["opt_in", "opt_out"]
TIERS = ("low", "medium", "high")

# Reason codes: exactly one per decision, machine-readable (the text beside it is for people).
R_NO_RISK = "no_risk"  # none: nothing fired
R_PROMOTION_QUIET = "promotion_quiet"  # none: a risk that would fire outside a promotion is held back
R_EPISODE_START = "episode_start"  # recall: day 1 of a new recall episode
R_FOLLOW_UP = "episode_follow_up"  # recall: a scheduled follow-up (days 7, 14)
R_BETWEEN_SENDS = "episode_between_sends"  # none / alert_only: an episode runs, no send due today
R_RECOVERED = "episode_ended_recovered"  # none: a follow-up was due but the user is no longer at risk
R_COOLDOWN = "episode_cooldown"  # alert_only: at risk, but an episode ended less than cooldown_days ago
R_MONTHLY_CAP = "monthly_cap"  # alert_only: a recall was due, the calendar month's cap is reached
R_OPTED_OUT = "marketing_opt_out"  # alert_only: at risk, the user is off the marketing list
R_SIGNAL_LOW_RISK = "signal_low_risk"  # alert_only: a signal fired, the model's probability is too low
REASON_CODES: tuple[str, ...] = (
    R_NO_RISK,
    R_PROMOTION_QUIET,
    R_EPISODE_START,
    R_FOLLOW_UP,
    R_BETWEEN_SENDS,
    R_RECOVERED,
    R_COOLDOWN,
    R_MONTHLY_CAP,
    R_OPTED_OUT,
    R_SIGNAL_LOW_RISK,
)

# State changes a day can bring, listed in `Decision.notes` in the order they happened.
N_REJECTED = "recall_rejected"
N_ACCEPTED = "recall_accepted"
N_EPISODE_ENDED_ACCEPTED = "episode_ended_accepted"
N_OPT_OUT_REJECTIONS = "opted_out_after_rejections"
N_OPT_OUT_USER = "opted_out_by_user"
N_OPT_IN = "opted_in"
N_EPISODE_CANCELLED = "episode_cancelled_opt_out"
N_EPISODE_COMPLETE = "episode_complete"

HIGH_RISK_TRIGGER = "high_risk"


def _default_segment_triggers() -> dict[str, tuple[str, ...]]:
    return {
        "price_sensitive": ("price_discount_ended", "commerce_abandoned_carts", "commerce_repeat_views"),
        "content_dependent": ("content_feed_drop", "content_below_mean"),
        "social": ("social_friends_leaving",),
        "utility": (),
    }


# What a recall can carry; the default gives each segment the kind that speaks to it.
CONTENT_KINDS: tuple[str, ...] = ("offers", "content", "friend_activity", "new_features")


def _default_recall_content() -> dict[str, str]:
    return {
        "price_sensitive": "offers",
        "content_dependent": "content",
        "social": "friend_activity",
        "utility": "new_features",
    }


@dataclass(frozen=True)
class SegmentRule:
    """How a device infers its own segment from its features (no label ever arrives from outside).

    Rates are events per active day over the last 28 days (`expm1` of the log1p window count
    divided by `active_days_28d`). Checked in order: price-sensitive, social, content-dependent,
    otherwise utility.
    """

    discount_dependence: float = 0.5  # share of purchases made during a discount
    commerce_per_active_day: float = 1.5  # commerce_browsing + purchases events
    social_per_active_day: float = 1.5  # private_messages + social_graph + comments events
    content_per_active_day: float = 1.5  # content_consumption events


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's knobs; the defaults are the brief's figures."""

    episode_send_days: tuple[int, ...] = (1, 7, 14)  # days of a recall episode on which a recall goes
    max_recalls_per_month: int = 3  # per calendar month of the device's local days
    rejections_to_opt_out: int = 3  # consecutive rejected recalls -> off the marketing list
    high_risk: float = HIGH_RISK  # churn probability that triggers a recall episode
    high_risk_during_promotion: float = 0.85  # quieter while a discount runs
    signal_min_probability: float = 0.2  # a signal counts as a trigger only at or above this probability
    follow_up_min_probability: float = MEDIUM_RISK  # a follow-up needs a trigger or at least this
    cooldown_days: int = 7  # after an episode ends, days before a new one may start
    signals: SignalThresholds = field(default_factory=SignalThresholds)
    universal_triggers: tuple[str, ...] = ("silence_alert",)
    segment_triggers: Mapping[str, tuple[str, ...]] = field(default_factory=_default_segment_triggers)
    recall_content: Mapping[str, str] = field(default_factory=_default_recall_content)
    segment_rule: SegmentRule = field(default_factory=SegmentRule)

    def __post_init__(self) -> None:
        days = self.episode_send_days
        if not days or days[0] != 1 or list(days) != sorted(set(days)):
            raise ValueError("episode_send_days must be increasing and start at day 1")
        if self.max_recalls_per_month < 0 or self.rejections_to_opt_out < 1 or self.cooldown_days < 0:
            raise ValueError("max_recalls_per_month >= 0, rejections_to_opt_out >= 1, cooldown_days >= 0")
        for seg in SEGMENTS:
            if seg not in self.segment_triggers or seg not in self.recall_content:
                raise ValueError(f"segment {seg!r} needs triggers and a recall content kind")
        for seg, kind in self.recall_content.items():
            if kind not in CONTENT_KINDS:
                raise ValueError(
                    f"recall_content.{seg}: unknown content {kind!r}; known: {', '.join(CONTENT_KINDS)}"
                )
        for name in (
            "high_risk",
            "high_risk_during_promotion",
            "signal_min_probability",
            "follow_up_min_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability: between 0 and 1, got {getattr(self, name)}")
        for names in (self.universal_triggers, *self.segment_triggers.values()):
            unknown = set(names) - set(SIGNAL_NAMES)
            if unknown:
                raise ValueError(f"unknown signals {sorted(unknown)}")

    @property
    def episode_days(self) -> int:
        return self.episode_send_days[-1]

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> PolicyConfig:
        """The inverse of `as_dict`, for a config a person wrote (a what-if policy file): unset
        knobs keep their defaults; every knob is checked against its rule (`POLICY_RULES`,
        `SIGNAL_RULES`, `SEGMENT_RULE_RULES`) and a bad one refused before anything runs, as
        `ValueError("<where> [policy.<section>].<knob>: expected …, got …")`."""
        knobs = _check_section("policy", d, where)
        defaults = cls()
        if "signals" in knobs:
            knobs["signals"] = SignalThresholds(**knobs["signals"])
        if "segment_rule" in knobs:
            knobs["segment_rule"] = SegmentRule(**knobs["segment_rule"])
        for key in ("segment_triggers", "recall_content"):
            if key in knobs:  # a partial table overrides some segments
                knobs[key] = {**getattr(defaults, key), **knobs[key]}
        try:
            return cls(**knobs)
        except ValueError as e:  # the rules above leave nothing for these checks; kept as a backstop
            raise ValueError(f"{where} [policy]: {e}".strip()) from None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segment_triggers"] = {k: list(v) for k, v in self.segment_triggers.items()}
        d["recall_content"] = dict(self.recall_content)
        d["episode_send_days"] = list(self.episode_send_days)
        d["universal_triggers"] = list(self.universal_triggers)
        return d


# ---------------------------------------------------------------------------------------------
# What a person may write in a policy file: one rule per knob, checked before anything runs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """The kind and range of one knob a person may write (a what-if policy file).

    `kind`: "int", "float" (an int is taken as a float), "days" (a list of ints, increasing and
    starting at 1), "names" (a list of names among `choices`) or "name" (one of `choices`);
    `per_segment`: a table keyed by segment, each value of that kind. Numbers must be finite and in
    `lo..hi` (`lo_open`: strictly above `lo`); a boolean is never a number.
    """

    kind: Literal["int", "float", "days", "names", "name"]
    lo: float = 0.0
    hi: float = math.inf
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    per_segment: bool = False
    why: str = ""  # what the value is, said in the error (for names: "signal names", ...)

    def expected(self) -> str:
        span = (
            f"above {self.lo:g} and at most {self.hi:g}" if self.lo_open else f"in {self.lo:g}..{self.hi:g}"
        )
        what = {
            "int": f"an integer {span}",
            "float": f"a finite number {span}",
            "days": f"a list of increasing integers {span}, starting at 1",
            "names": f"a list of {self.why} ({', '.join(self.choices)})",
            "name": f"one {self.why} ({', '.join(self.choices)})",
        }[self.kind]
        return what + (f" ({self.why})" if self.why and self.kind not in ("names", "name") else "")


# Day and count bounds: the policy decides once per local day and caps recalls per calendar month,
# so a recall episode lives inside a 30-day recall window; each bound below says why a larger value
# means nothing. A knob of the device's own defaults (the brief's figures) sits well inside every range.
_PROBABILITY = Rule("float", 0.0, 1.0, why="a probability")
_SHARE = Rule("float", 0.0, 1.0, why="a share")
# A streak of quiet days longer than a year only ever fires for users long gone.
_STREAK_DAYS = Rule("int", 0, 365, why="days in a row, at most a year")
# Carts abandoned in a row, views of one product in a week: above 1,000 it is no person's behaviour.
_EVENTS = Rule("int", 0, 1000, why="a count of events")
# Events per active day (the segment rule): above 1,000 no person qualifies for the segment.
_RATE = Rule("float", 0.0, 1000.0, why="events per active day; above 1,000 no person qualifies")
POLICY_RULES: dict[str, Rule] = {
    # Send days fall within the 30-day recall window: day 1 starts the episode, later sends follow
    # it up, and the monthly cap counts them (the brief: days 1, 7, 14).
    "episode_send_days": Rule("days", 1, 30, why="days of a 30-day recall episode"),
    # One decision a day: a calendar month never holds more than 31 recalls (the brief: 3; 0: none).
    "max_recalls_per_month": Rule("int", 0, 31, why="one recall a day at most"),
    # At least one rejection; at most one recall a day, so more than a year of rejected recalls in a
    # row is no opt-out rule at all (the brief: 3).
    "rejections_to_opt_out": Rule("int", 1, 365, why="consecutive rejected recalls"),
    "high_risk": _PROBABILITY,
    "high_risk_during_promotion": _PROBABILITY,
    "signal_min_probability": _PROBABILITY,
    "follow_up_min_probability": _PROBABILITY,
    # "Never again" is `max_recalls_per_month = 0` or `targeting = "none"`; a cooldown longer than a
    # few years outlives any user of the app (the lab itself runs at most 10 years).
    "cooldown_days": Rule("int", 0, 3 * 365, why="days; at most three years"),
    "universal_triggers": Rule("names", choices=SIGNAL_NAMES, why="signal names"),
    "segment_triggers": Rule("names", choices=SIGNAL_NAMES, per_segment=True, why="signal names"),
    "recall_content": Rule("name", choices=CONTENT_KINDS, per_segment=True, why="content kind"),
}
SIGNAL_RULES: dict[str, Rule] = {
    "silence_days": _STREAK_DAYS,
    "silence_days_during_promotion": _STREAK_DAYS,
    "content_below_days": _STREAK_DAYS,
    # `promo.days_since_discount_end` is capped at RECENCY_CAP (90): a tolerance at or past it would
    # fire for every user who never saw a discount.
    "price_tolerance_days": Rule("int", 0, RECENCY_CAP - 1, why="days; the feature stops at 90"),
    "price_window_days": Rule("int", 0, RECENCY_CAP, why="days; the feature stops at 90"),
    # The signal compares the content trend with log(ratio): 0 has no log, and above 1 it is no drop.
    "content_drop_ratio": Rule("float", 0.0, 1.0, lo_open=True, why="a share of the usual week"),
    "friends_lost_share": _SHARE,
    "abandoned_carts": _EVENTS,
    "repeat_views_7d": _EVENTS,
}
SEGMENT_RULE_RULES: dict[str, Rule] = {
    "discount_dependence": _SHARE,
    "commerce_per_active_day": _RATE,
    "social_per_active_day": _RATE,
    "content_per_active_day": _RATE,
}
# Every section of a policy file: the dataclass it builds and the rules of its knobs. A test checks
# that every field of each dataclass has exactly one rule.
SECTIONS: dict[str, tuple[type, dict[str, Rule]]] = {
    "policy": (PolicyConfig, POLICY_RULES),
    "policy.signals": (SignalThresholds, SIGNAL_RULES),
    "policy.segment_rule": (SegmentRule, SEGMENT_RULE_RULES),
}


def _check_value(rule: Rule, value: Any, at: str) -> Any:
    """`value` checked against `rule` and converted (lists to tuples, ints to floats), or a
    ValueError `at: expected …, got …`."""

    def bad() -> ValueError:
        return ValueError(f"{at}: expected {rule.expected()}, got {value!r}")

    def number(v: Any, integer: bool) -> bool:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return False
        if not math.isfinite(v):
            return False
        return (v > rule.lo if rule.lo_open else v >= rule.lo) and v <= rule.hi

    if rule.kind in ("int", "float"):
        if not number(value, rule.kind == "int"):
            raise bad()
        return int(value) if rule.kind == "int" else float(value)
    if rule.kind == "days":
        if not (isinstance(value, list) and value and all(number(v, True) for v in value)):
            raise bad()
        if value[0] != 1 or any(b <= a for a, b in itertools.pairwise(value)):
            raise bad()
        return tuple(int(v) for v in value)
    if rule.kind == "names":
        if not (isinstance(value, list) and all(isinstance(v, str) and v in rule.choices for v in value)):
            raise bad()
        return tuple(value)
    if not (isinstance(value, str) and value in rule.choices):  # "name"
        raise bad()
    return value


def _check_section(section: str, table: Any, where: str) -> dict[str, Any]:
    """The knobs of one section of a policy file, each checked against its rule (unknown knobs,
    wrong kinds and values out of range refused naming `where [section].knob`)."""
    at = f"{where} [{section}]".strip()
    if not isinstance(table, Mapping):
        raise ValueError(f"{at}: expected a table of knobs, got {table!r}")
    _, rules = SECTIONS[section]
    out: dict[str, Any] = {}
    for key, value in table.items():
        if f"{section}.{key}" in SECTIONS:
            out[key] = _check_section(f"{section}.{key}", value, where)
            continue
        if key not in rules:
            known = sorted(rules) + sorted(
                s.rsplit(".", 1)[1] for s in SECTIONS if s.startswith(f"{section}.")
            )
            raise ValueError(f"{at}: unknown policy knob {key!r}; known: {', '.join(known)}")
        rule = rules[key]
        if rule.per_segment:
            sub = f"{where} [{section}.{key}]".strip()
            if not isinstance(value, Mapping):
                raise ValueError(f"{at}.{key}: expected a table keyed by segment, got {value!r}")
            unknown = sorted(set(value) - set(SEGMENTS))
            if unknown:
                raise ValueError(f"{sub}: unknown segment(s) {unknown}; known: {', '.join(SEGMENTS)}")
            out[key] = {seg: _check_value(rule, v, f"{sub}.{seg}") for seg, v in value.items()}
        else:
            out[key] = _check_value(rule, value, f"{at}.{key}")
    return out


@dataclass(frozen=True)
class PolicyInput:
    """What the device knows on one local day, after scoring."""

    day: int  # local day number (days since 1970-01-01 on the device's clock)
    probability: float  # churn probability within the horizon
    segment: str = "utility"
    promotion: bool = False  # `promo.discount_active`
    signals: frozenset[str] = frozenset()  # on-device signals firing today (SignalThresholds)
    quieted: frozenset[str] = frozenset()  # signals that would fire today if no discount were running
    responses: tuple[Response, ...] = ()  # answers to earlier recalls logged today, in time order
    consent: Consent | None = None  # the user's marketing choice made today, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "probability": self.probability,
            "segment": self.segment,
            "promotion": self.promotion,
            "signals": sorted(self.signals),
            "quieted": sorted(self.quieted),
            "responses": list(self.responses),
            "consent": self.consent,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyInput:
        return cls(
            day=int(d["day"]),
            probability=float(d["probability"]),
            segment=str(d["segment"]),
            promotion=bool(d["promotion"]),
            signals=frozenset(d["signals"]),
            quieted=frozenset(d["quieted"]),
            responses=tuple(d["responses"]),
            consent=d["consent"],
        )


@dataclass(frozen=True)
class PolicyState:
    """Everything the policy remembers between days (persisted in the decision log)."""

    last_day: int | None = None
    month: int = -1  # year × 12 + month − 1 of `last_day`
    month_recalls: int = 0  # recalls sent in that calendar month
    episode_start: int | None = None  # local day of the current episode's day 1
    episode_handled: tuple[int, ...] = ()  # scheduled send days already sent or skipped
    cooldown_until: int | None = None  # no new episode on or before this day
    consecutive_rejections: int = 0
    opted_out: bool = False  # off the marketing list (basic service continues)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["episode_handled"] = list(self.episode_handled)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyState:
        return cls(**{**d, "episode_handled": tuple(d["episode_handled"])})


@dataclass(frozen=True)
class Decision:
    """One day's decision, with its reason; what the device logs."""

    day: int
    date: str  # the local day as an ISO date
    action: Action
    reason_code: str
    reason: str
    content: str | None  # recall content kind (recall only)
    episode_day: int | None  # 1-based day of the running episode, None when none runs
    triggers: tuple[str, ...]  # risk triggers that fired today
    notes: tuple[str, ...]  # state changes today, in order
    probability: float
    tier: str
    segment: str
    recalls_this_month: int  # after today's decision
    marketing_opted_out: bool  # after today's decision
    basic_service: bool = True  # never switched off by the policy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["triggers"] = list(self.triggers)
        d["notes"] = list(self.notes)
        return d


def month_index(day: int) -> int:
    """Calendar month of a local day number: year × 12 + month − 1."""
    d = date(1970, 1, 1) + timedelta(days=int(day))
    return d.year * 12 + d.month - 1


def _iso(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(day))).isoformat()


def _tier(p: float, high: float) -> str:
    return TIERS[2 if p >= high else 1 if p >= MEDIUM_RISK else 0]


class Risk(NamedTuple):
    """Today's risk as the policy sees it."""

    fired: tuple[str, ...]  # triggers that may start or continue a recall episode
    quiet: tuple[str, ...]  # risks a running promotion holds back
    low: tuple[str, ...]  # signals firing while the probability is below `signal_min_probability`


def triggers_for(inp: PolicyInput, cfg: PolicyConfig) -> Risk:
    """Today's triggers for this user's segment, in a fixed order (high risk first, then config order)."""
    high = cfg.high_risk_during_promotion if inp.promotion else cfg.high_risk
    relevant = list(dict.fromkeys([*cfg.universal_triggers, *cfg.segment_triggers.get(inp.segment, ())]))
    firing = [s for s in relevant if s in inp.signals]
    confirmed = inp.probability >= cfg.signal_min_probability
    fired = ([HIGH_RISK_TRIGGER] if inp.probability >= high else []) + (firing if confirmed else [])
    quiet = [HIGH_RISK_TRIGGER] if inp.promotion and cfg.high_risk <= inp.probability < high else []
    quiet += [s for s in relevant if s in inp.quieted and s not in inp.signals]
    return Risk(tuple(fired), tuple(quiet), () if confirmed else tuple(firing))


def step(
    state: PolicyState, inp: PolicyInput, cfg: PolicyConfig | None = None
) -> tuple[PolicyState, Decision]:
    """Decide one day. Days must increase; days the device did not run may be skipped."""
    cfg = cfg or PolicyConfig()
    if state.last_day is not None and inp.day <= state.last_day:
        raise ValueError(f"day {inp.day} is not after the last decided day {state.last_day}")
    if inp.segment not in SEGMENTS:
        raise ValueError(f"unknown segment {inp.segment!r}")
    day = inp.day
    month = month_index(day)
    month_recalls = state.month_recalls if month == state.month else 0
    ep_start, handled = state.episode_start, state.episode_handled
    cooldown, rejections, opted_out = state.cooldown_until, state.consecutive_rejections, state.opted_out
    notes: list[str] = []

    def end_episode(end_day: int) -> None:
        nonlocal ep_start, handled, cooldown
        ep_start, handled, cooldown = None, (), end_day + cfg.cooldown_days

    # 1. An episode past its last day is over.
    if ep_start is not None and day - ep_start + 1 > cfg.episode_days:
        end_episode(ep_start + cfg.episode_days - 1)
        notes.append(N_EPISODE_COMPLETE)

    # 2. The user's answers to earlier recalls, then today's explicit marketing choice.
    for r in inp.responses:
        if r == "accepted":
            notes.append(N_ACCEPTED)
            rejections = 0
            if ep_start is not None:
                end_episode(day)
                notes.append(N_EPISODE_ENDED_ACCEPTED)
        elif r == "rejected":
            notes.append(N_REJECTED)
            rejections += 1
            if rejections >= cfg.rejections_to_opt_out and not opted_out:
                opted_out = True
                notes.append(N_OPT_OUT_REJECTIONS)
        else:
            raise ValueError(f"unknown response {r!r}")
    if inp.consent == "opt_out":
        if not opted_out:
            notes.append(N_OPT_OUT_USER)
        opted_out = True
    elif inp.consent == "opt_in":
        if opted_out:
            notes.append(N_OPT_IN)
        opted_out, rejections = False, 0
    elif inp.consent is not None:
        raise ValueError(f"unknown consent {inp.consent!r}")
    if opted_out and ep_start is not None:
        ep_start, handled = None, ()
        notes.append(N_EPISODE_CANCELLED)

    # 3. Today's risk, and the decision.
    fired, quiet, low = triggers_for(inp, cfg)
    at_risk = bool(fired)
    action: Action = "none"
    content: str | None = None
    ep_day: int | None = None
    why: str
    if opted_out:
        code = R_OPTED_OUT if at_risk or low else R_NO_RISK
        why = (
            "off the marketing list: no recall" if code == R_OPTED_OUT else "no risk; off the marketing list"
        )
    elif ep_start is not None:
        ep_day = day - ep_start + 1
        due = tuple(s for s in cfg.episode_send_days if s <= ep_day and s not in handled)
        if not due:
            code = R_BETWEEN_SENDS
            nxt = next(s for s in cfg.episode_send_days if s > ep_day)
            why = f"episode day {ep_day}; next recall on episode day {nxt}"
        elif not at_risk and inp.probability < cfg.follow_up_min_probability:
            end_episode(day)
            code, why = (
                R_RECOVERED,
                f"follow-up due on episode day {ep_day}, but no risk remains: episode ends",
            )
            ep_day = None
        elif month_recalls >= cfg.max_recalls_per_month:
            handled = handled + due
            code = R_MONTHLY_CAP
            why = f"follow-up due on episode day {ep_day}, but {month_recalls} recalls this month already"
        else:
            handled = handled + due
            action, code = "recall", R_FOLLOW_UP
            month_recalls += 1
            why = f"episode day {ep_day} follow-up"
    elif at_risk:
        if cooldown is not None and day <= cooldown:
            code, why = (
                R_COOLDOWN,
                f"at risk, but the last episode ended recently (new one after {_iso(cooldown)})",
            )
        elif month_recalls >= cfg.max_recalls_per_month:
            code = R_MONTHLY_CAP
            why = f"at risk, but {month_recalls} recalls this month already"
        else:
            ep_start, handled, ep_day = day, (1,), 1
            action, code = "recall", R_EPISODE_START
            month_recalls += 1
            why = "recall episode starts (day 1)"
    elif low:
        code = R_SIGNAL_LOW_RISK
        why = f"a signal fired, but the churn probability is below {cfg.signal_min_probability:g}"
    elif quiet:
        code, why = R_PROMOTION_QUIET, "a discount is running: thresholds are quieter"
    else:
        code, why = R_NO_RISK, "no risk trigger"
    if action == "none" and (at_risk or low or code == R_MONTHLY_CAP):
        action = "alert_only"
    if action == "recall":
        content = cfg.recall_content[inp.segment]
        why += f"; {content} for a {inp.segment} user"
    if fired:
        why += "; triggers: " + ", ".join(fired)
    if low:
        why += "; signals: " + ", ".join(low)
    if quiet:
        why += "; held back by the promotion: " + ", ".join(quiet)
    if notes:
        why += "; " + ", ".join(notes)

    new_state = PolicyState(
        last_day=day,
        month=month,
        month_recalls=month_recalls,
        episode_start=ep_start,
        episode_handled=handled,
        cooldown_until=cooldown,
        consecutive_rejections=rejections,
        opted_out=opted_out,
    )
    decision = Decision(
        day=day,
        date=_iso(day),
        action=action,
        reason_code=code,
        reason=why,
        content=content,
        episode_day=ep_day if ep_start is not None else None,
        triggers=fired,
        notes=tuple(notes),
        probability=float(inp.probability),
        tier=_tier(float(inp.probability), cfg.high_risk),
        segment=inp.segment,
        recalls_this_month=month_recalls,
        marketing_opted_out=opted_out,
    )
    return new_state, decision


def is_quiet_day(state: PolicyState, inp: PolicyInput, cfg: PolicyConfig) -> bool:
    """True when `step` would only log `none / no_risk` and change nothing but the day and month.

    Lets a batch replay skip such days (most of them) without calling `step`.
    """
    if state.episode_start is not None or inp.responses or inp.consent is not None:
        return False
    return not any(triggers_for(inp, cfg))


def run_policy(
    inputs: Iterable[PolicyInput], config: PolicyConfig | None = None, state: PolicyState | None = None
) -> list[Decision]:
    """Replay a history of days; one decision per input."""
    return replay(inputs, config, state)[0]


def replay(
    inputs: Iterable[PolicyInput], config: PolicyConfig | None = None, state: PolicyState | None = None
) -> tuple[list[Decision], PolicyState]:
    cfg = config or PolicyConfig()
    st = state or PolicyState()
    out = []
    for inp in inputs:
        st, d = step(st, inp, cfg)
        out.append(d)
    return out, st


# ---------------------------------------------------------------------------------------------
# From the device's own data to policy inputs
# ---------------------------------------------------------------------------------------------
def _rate(features: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    total = sum(np.expm1(features[..., FEATURE_INDEX[f"{c}.count_28d"]].astype(np.float64)) for c in names)
    active = np.maximum(features[..., FEATURE_INDEX["active_days_28d"]].astype(np.float64), 1.0)
    return np.asarray(total) / active


def infer_segments(features: np.ndarray, rule: SegmentRule | None = None) -> np.ndarray:
    """Segment index (into SEGMENTS) for every row of a (..., n) feature array, n >= the brief's
    127 (the rule reads base features only, so a lab may skip the extended block)."""
    rule = rule or SegmentRule()
    f = np.asarray(features)
    if not BASE_FEATURES <= f.shape[-1] <= N_FEATURES:
        raise ValueError(f"expected {BASE_FEATURES}..{N_FEATURES} features, got {f.shape[-1]}")
    dep = f[..., FEATURE_INDEX["promo.discount_dependence"]].astype(np.float64)
    price = (dep >= rule.discount_dependence) | (
        _rate(f, ("commerce_browsing", "purchases")) >= rule.commerce_per_active_day
    )
    social = _rate(f, ("private_messages", "social_graph", "comments")) >= rule.social_per_active_day
    content = _rate(f, ("content_consumption",)) >= rule.content_per_active_day
    return np.where(price, 0, np.where(social, 2, np.where(content, 1, 3))).astype(np.int64)


def infer_segment(features: np.ndarray, rule: SegmentRule | None = None) -> str:
    return SEGMENTS[int(infer_segments(np.asarray(features)[None, :], rule)[0])]


def day_signals(
    features: np.ndarray, th: SignalThresholds
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(signals firing, signals a running promotion holds back) for every row of features."""
    fired = signals(features, th)
    no_promo = signals(
        features, replace(th, silence_days_during_promotion=th.silence_days)
    )  # the same day judged as if no discount ran
    quieted = {k: no_promo[k] & ~fired[k] for k in fired}
    return fired, quieted


def responses_by_day(events: np.ndarray) -> dict[int, tuple[Response, ...]]:
    """Recall answers the device logged (`notifications` recall_accepted / recall_rejected), per local day."""
    cat = BY_ID["notifications"]
    names = cat.action_names()
    codes = {names.index("recall_accepted"): "accepted", names.index("recall_rejected"): "rejected"}
    sel = (events["cat"] == cat.number - 1) & np.isin(events["action"], list(codes))
    ev = events[sel]
    order = np.argsort(ev["ts"], kind="stable")
    days = local_day(ev["ts"], ev["tz_min"])
    out: dict[int, list[Response]] = {}
    for i in order:
        r: Response = "accepted" if codes[int(ev["action"][i])] == "accepted" else "rejected"
        out.setdefault(int(days[i]), []).append(r)
    return {d: tuple(v) for d, v in out.items()}


def inputs_from_features(
    params: np.ndarray,
    features: np.ndarray,
    days: np.ndarray,
    responses: Mapping[int, tuple[Response, ...]] | None = None,
    consent: Mapping[int, Consent] | None = None,
    config: PolicyConfig | None = None,
) -> list[PolicyInput]:
    """One PolicyInput per day of a device's feature history (numpy forward pass included)."""
    cfg = config or PolicyConfig()
    responses, consent = responses or {}, consent or {}
    prob = churn_probability(params, features)
    seg = infer_segments(features, cfg.segment_rule)
    fired, quieted = day_signals(features, cfg.signals)
    promo = features[:, FEATURE_INDEX["promo.discount_active"]] > 0
    out = []
    for k, d in enumerate(np.asarray(days).tolist()):
        out.append(
            PolicyInput(
                day=int(d),
                probability=float(prob[k]),
                segment=SEGMENTS[int(seg[k])],
                promotion=bool(promo[k]),
                signals=frozenset(n for n in SIGNAL_NAMES if fired[n][k]),
                quieted=frozenset(n for n in SIGNAL_NAMES if quieted[n][k]),
                responses=responses.get(int(d), ()),
                consent=consent.get(int(d)),
            )
        )
    return out


def inputs_from_events(
    params: np.ndarray,
    events: np.ndarray,
    consent: Mapping[int, Consent] | None = None,
    config: PolicyConfig | None = None,
    first_day: int | None = None,
    today: int | None = None,
) -> list[PolicyInput]:
    """The device's whole path: events -> features -> score and signals -> one input per day."""
    res = device_features(events, first_day, today)
    return inputs_from_features(params, res.features, res.days, responses_by_day(events), consent, config)
