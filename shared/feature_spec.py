"""The feature specification, declared once: daily-aggregate channels and the feature vector.

`client.aggregates` turns events into the channels below; `client.features` turns channels into
the features below, in this order. `docs/client-spec.md` is checked against this list by the tests,
and the catalogue's "features fed" comes from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedchurn.shared.catalogue import BY_ID, CATEGORY_IDS

__all__ = [
    "ACTIVITY_K",
    "ACTIVITY_WEIGHTS",
    "BASELINE_DAYS",
    "BASE_FEATURES",
    "BEHAVIOUR",
    "CHANNELS",
    "CHANNEL_INDEX",
    "CONTENT_RATIO",
    "CONTENT_RATIO_CAP",
    "FEATURES",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "LONG_WINDOWS",
    "MONETARY_PRIOR",
    "NIGHT_HOURS",
    "N_FEATURES",
    "OVERDUE_CAP",
    "RECENCY_CAP",
    "SILENCE_RATIO",
    "WINDOWS",
    "Channel",
    "FeatureSpec",
    "Group",
    "Stat",
    "features_fed_by",
]

Stat = Literal["count", "sum", "last"]
Group = Literal["dynamic", "static", "environment"]

BEHAVIOUR = "*"  # every category except device_context
NIGHT_HOURS = (0, 6)  # local hours [0, 6) count as night

WINDOWS = (1, 7, 14, 28)
LONG_WINDOWS = (90, 180, 365)  # extended features: purchase logs and horizons of months
TREND_RECENT, TREND_PRIOR = 7, 21
RECENCY_CAP = 90  # days; also the value when a category was never seen
BASELINE_DAYS = 28
SILENCE_RATIO = 0.8  # "more than 20% below baseline"
CONTENT_RATIO = 0.4  # "below 40% of the user's historical mean"
CONTENT_RATIO_CAP = 10.0
OVERDUE_CAP = 10.0  # recency / mean gap between active days
MONETARY_PRIOR = 270  # days before the last 90 that the monetary trend compares against
ACTIVITY_K = 4.0  # index = 100 * raw / (raw + ACTIVITY_K)

# Weights of log1p(daily amount) in the activity index: channel name -> weight.
ACTIVITY_WEIGHTS: dict[str, float] = {
    "count.sessions": 1.0,
    "session_minutes": 0.5,
    "count.feature_usage": 0.5,
    "content_minutes": 0.5,
    "count.content_creation": 1.0,
    "count.reactions": 0.5,
    "count.comments": 0.75,
    "count.shares": 0.75,
    "count.private_messages": 0.75,
    "count.profile_updates": 0.5,
    "count.search": 0.25,
    "count.commerce_browsing": 0.5,
    "count.purchases": 1.0,
}


@dataclass(frozen=True)
class Channel:
    """One column of the per-day aggregate table."""

    name: str
    category: str  # a catalogue id, or BEHAVIOUR
    actions: tuple[str, ...]  # empty = every action of the category
    stat: Stat
    scale: float = 1.0  # the stat is multiplied by this (e.g. seconds -> minutes)
    night_only: bool = False


def _channels() -> tuple[Channel, ...]:
    out = [Channel(f"count.{c}", c, (), "count") for c in CATEGORY_IDS]
    out += [
        Channel("session_minutes", "sessions", ("session",), "sum", scale=1 / 60),
        Channel("content_minutes", "content_consumption", (), "sum"),
        Channel("purchase_amount", "purchases", ("purchase",), "sum"),
        Channel("refund_amount", "purchases", ("refund",), "sum"),
        Channel("night_events", BEHAVIOUR, (), "count", night_only=True),
        Channel("cart_abandon", "commerce_browsing", ("cart_abandon",), "count"),
        Channel("checkout", "commerce_browsing", ("checkout",), "count"),
        Channel("product_view_repeat", "commerce_browsing", ("product_view_repeat",), "count"),
        Channel("friends_added", "social_graph", ("friend_added",), "sum"),
        Channel("friends_lost", "social_graph", ("friend_lost",), "sum"),
        Channel("discount_started", "promotions", ("discount_started",), "count"),
        Channel("discount_ended", "promotions", ("discount_ended",), "count"),
        Channel("device_tier", "device_context", ("device_tier",), "last"),
        Channel("registration_channel", "device_context", ("registration_channel",), "last"),
        Channel("same_category_apps", "device_context", ("same_category_apps",), "last"),
        Channel("notifications_enabled", "device_context", ("notifications_enabled",), "last"),
    ]
    return tuple(out)


CHANNELS: tuple[Channel, ...] = _channels()
CHANNEL_INDEX: dict[str, int] = {ch.name: i for i, ch in enumerate(CHANNELS)}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    group: Group
    categories: tuple[str, ...]
    formula: str

    @property
    def transform(self) -> str:
        """ "log1p" when the model sees log1p of a count or amount, "" when it sees the value as is."""
        return "log1p" if self.formula.startswith("log1p(") else ""

    def natural(self, value: float) -> float:
        """The value before the transform (a count, minutes, an amount), for people to read."""
        return math.expm1(value) if self.transform == "log1p" else value


def _behaviour() -> tuple[str, ...]:
    return tuple(c for c in CATEGORY_IDS if c != "device_context")


def _features() -> tuple[FeatureSpec, ...]:
    out: list[FeatureSpec] = []
    for c in CATEGORY_IDS:
        for w in WINDOWS:
            out.append(
                FeatureSpec(
                    f"{c}.count_{w}d",
                    "dynamic",
                    (c,),
                    f"log1p(number of {c} events in the {w} days ending today)",
                )
            )
    for c in CATEGORY_IDS:
        out.append(
            FeatureSpec(
                f"{c}.trend",
                "dynamic",
                (c,),
                "ln((events in last 7 d + 1) / (events in the 21 d before that × 7/21 + 1))",
            )
        )
    for c in CATEGORY_IDS:
        out.append(
            FeatureSpec(
                f"{c}.recency_days",
                "dynamic",
                (c,),
                f"days since the last day with a {c} event (0 = today), capped at {RECENCY_CAP}",
            )
        )
    act = tuple(
        sorted({CHANNELS[CHANNEL_INDEX[n]].category for n in ACTIVITY_WEIGHTS}, key=CATEGORY_IDS.index)
    )
    beh = _behaviour()
    out += [
        FeatureSpec(
            "active_days_7d", "dynamic", ("sessions",), "days with at least one session in the last 7"
        ),
        FeatureSpec(
            "active_days_28d", "dynamic", ("sessions",), "days with at least one session in the last 28"
        ),
        FeatureSpec(
            "rfm.monetary_28d", "dynamic", ("purchases",), "log1p(purchase amount in the last 28 days)"
        ),
        FeatureSpec(
            "session_minutes_7d", "dynamic", ("sessions",), "log1p(minutes in sessions in the last 7 days)"
        ),
        FeatureSpec(
            "activity.index",
            "dynamic",
            act,
            f"100 × r / (r + {ACTIVITY_K:g}), r = Σ weight × log1p(today's amount) over ACTIVITY_WEIGHTS",
        ),
        FeatureSpec(
            "activity.baseline",
            "dynamic",
            act,
            f"mean activity index over the previous {BASELINE_DAYS} days of history (today's when none)",
        ),
        FeatureSpec("activity.ratio", "dynamic", act, "activity index / baseline (1 when baseline is 0)"),
        FeatureSpec(
            "activity.days_below_baseline",
            "dynamic",
            act,
            f"consecutive days up to today with index < {SILENCE_RATIO:g} × baseline",
        ),
        FeatureSpec(
            "content.vs_mean",
            "dynamic",
            ("content_consumption",),
            f"today's content minutes / mean of all previous days (1 when none), capped at "
            f"{CONTENT_RATIO_CAP:g}",
        ),
        FeatureSpec(
            "content.days_below_40pct",
            "dynamic",
            ("content_consumption",),
            f"consecutive days up to today with content minutes < {CONTENT_RATIO:g} × previous mean",
        ),
        FeatureSpec(
            "promo.discount_active",
            "dynamic",
            ("promotions",),
            "1 if the last discount_started day is after the last discount_ended day",
        ),
        FeatureSpec(
            "promo.days_since_discount_end",
            "dynamic",
            ("promotions",),
            f"days since the last discount_ended, capped at {RECENCY_CAP}",
        ),
        FeatureSpec(
            "promo.discount_dependence",
            "dynamic",
            ("promotions", "purchases"),
            "share of purchases (all history) made on days with a discount active",
        ),
        FeatureSpec(
            "social.friends_lost_share_28d",
            "dynamic",
            ("social_graph",),
            "friends lost in 28 d / max(1, friends 28 d ago + friends added since), in [0, 1]",
        ),
        FeatureSpec(
            "commerce.abandoned_cart_streak",
            "dynamic",
            ("commerce_browsing", "purchases"),
            "cart_abandon events on the days after the last day with a checkout or purchase",
        ),
        FeatureSpec(
            "commerce.cart_abandons_7d",
            "dynamic",
            ("commerce_browsing",),
            "log1p(cart_abandon events in the last 7 days)",
        ),
        FeatureSpec(
            "commerce.repeat_views_7d",
            "dynamic",
            ("commerce_browsing",),
            "log1p(product_view_repeat events in the last 7 days)",
        ),
        FeatureSpec(
            "habit.night_share_28d",
            "dynamic",
            beh,
            "share of behaviour events in the last 28 d at local hours 00:00-05:59",
        ),
        FeatureSpec(
            "habit.weekend_share_28d",
            "dynamic",
            beh,
            "share of behaviour events in the last 28 d on a Saturday or Sunday (local)",
        ),
        FeatureSpec("account_age_days", "static", beh, "log1p(days since the first day of stored history)"),
        FeatureSpec(
            "device.tier", "static", ("device_context",), "last device_tier value (0 when never seen)"
        ),
        FeatureSpec(
            "registration.paid", "static", ("device_context",), "1 if the last registration_channel is 1"
        ),
        FeatureSpec(
            "registration.referral", "static", ("device_context",), "1 if the last registration_channel is 2"
        ),
        FeatureSpec(
            "env.same_category_apps",
            "environment",
            ("device_context",),
            "log1p(last same_category_apps value)",
        ),
        FeatureSpec(
            "env.notifications_enabled",
            "environment",
            ("device_context",),
            "last notifications_enabled value (0 when never seen)",
        ),
    ]
    return tuple(out)


def _extended() -> tuple[FeatureSpec, ...]:
    """Features for long horizons and purchase logs: long windows per category, recency, frequency
    and rhythm over all history, and money. They follow the base features in the vector, so a
    model of the base features reads a prefix (`ModelSpec.n_features`)."""
    beh = _behaviour()
    out = [
        FeatureSpec(
            f"{c}.count_{w}d", "dynamic", (c,), f"log1p(number of {c} events in the {w} days ending today)"
        )
        for c in CATEGORY_IDS
        for w in LONG_WINDOWS
    ]
    out += [
        FeatureSpec(
            "rfm.monetary_90d", "dynamic", ("purchases",), "log1p(purchase amount in the last 90 days)"
        ),
        FeatureSpec(
            "rfm.monetary_365d", "dynamic", ("purchases",), "log1p(purchase amount in the last 365 days)"
        ),
        FeatureSpec("rfm.monetary_total", "dynamic", ("purchases",), "log1p(purchase amount, all history)"),
        FeatureSpec(
            "rfm.monetary_trend",
            "dynamic",
            ("purchases",),
            f"ln((amount in last 90 d + 1) / (amount in the {MONETARY_PRIOR} d before that × 90/"
            f"{MONETARY_PRIOR} + 1))",
        ),
        FeatureSpec(
            "rfm.refunds_365d", "dynamic", ("purchases",), "log1p(refunded amount in the last 365 days)"
        ),
        FeatureSpec(
            "history.recency_days",
            "dynamic",
            beh,
            "log1p(days since the last day with a behaviour event, uncapped; days of history when none)",
        ),
        FeatureSpec("history.active_days", "dynamic", beh, "log1p(days with a behaviour event, all history)"),
        FeatureSpec(
            "history.gap_mean_days",
            "dynamic",
            beh,
            "log1p(mean days between consecutive days with a behaviour event; 0 with fewer than 2)",
        ),
        FeatureSpec(
            "history.gap_std_days",
            "dynamic",
            beh,
            "log1p(standard deviation (population) of those gaps; 0 with fewer than 2 days)",
        ),
        FeatureSpec(
            "history.gap_last_days",
            "dynamic",
            beh,
            "log1p(days between the last two days with a behaviour event; 0 with fewer than 2)",
        ),
        FeatureSpec(
            "history.overdue",
            "dynamic",
            beh,
            f"days since the last behaviour event / mean gap, capped at {OVERDUE_CAP:g} (0 with fewer "
            "than 2 active days)",
        ),
    ]
    return tuple(out)


BASE_FEATURES = len(_features())  # the brief's 127: the default model's inputs
FEATURES: tuple[FeatureSpec, ...] = _features() + _extended()
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
FEATURE_INDEX: dict[str, int] = {n: i for i, n in enumerate(FEATURE_NAMES)}


def features_fed_by(category_id: str) -> tuple[str, ...]:
    return tuple(f.name for f in FEATURES if category_id in f.categories)


def _validate() -> None:
    if len(set(FEATURE_NAMES)) != N_FEATURES:
        raise ValueError("duplicate feature names")
    for f in FEATURES:
        for c in f.categories:
            if c not in BY_ID:
                raise ValueError(f"feature {f.name!r} names unknown category {c!r}")
    for ch in CHANNELS:
        if ch.category != BEHAVIOUR:
            known = BY_ID[ch.category].action_names()
            if any(a not in known for a in ch.actions):
                raise ValueError(f"channel {ch.name!r} names an unknown action")
    for c in CATEGORY_IDS:
        if not features_fed_by(c):
            raise ValueError(f"category {c!r} feeds no feature")


_validate()
