"""On-device churn signals from the brief, as functions of the daily aggregates.

Each signal is a boolean per day. Thresholds are data, not code, so the retention policy and a
port can tune them; the defaults are the figures the brief gives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fedchurn.client.features import extract_features
from fedchurn.shared.feature_spec import FEATURE_INDEX

F = FEATURE_INDEX
EPS = 1e-6  # features are float32: 3/20 friends lost is 0.15000001, which is not "more than 15%"


@dataclass(frozen=True)
class SignalThresholds:
    silence_days: int = 3  # days in a row more than 20% below the activity baseline
    silence_days_during_promotion: int = 5  # a short silence around a promotion is normal
    content_below_days: int = 5  # days in a row below 40% of the historical content mean
    price_tolerance_days: int = 3  # price-sensitive users tolerate ~3 days after a discount ends
    price_window_days: int = 7  # ... and the signal stays up this long if they do not buy
    content_drop_ratio: float = 0.5  # content events in the last 7 d below this × the usual week
    friends_lost_share: float = 0.15  # social users churn when more than 15% of friends leave
    abandoned_carts: int = 3  # abandoned cart edits in a row
    repeat_views_7d: int = 3  # repeated views of the same product page in the last week

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


SIGNAL_NAMES = (
    "silence_alert",
    "content_below_mean",
    "price_discount_ended",
    "content_feed_drop",
    "social_friends_leaving",
    "commerce_abandoned_carts",
    "commerce_repeat_views",
)


def signals(features: np.ndarray, th: SignalThresholds | None = None) -> dict[str, np.ndarray]:
    """Signals for every row of a (..., N_FEATURES) feature array."""
    th = th or SignalThresholds()

    def col(name: str) -> np.ndarray:
        return features[..., F[name]].astype(np.float64)

    promo = col("promo.discount_active") > 0
    silence_needed = np.where(promo, th.silence_days_during_promotion, th.silence_days)
    since_end = col("promo.days_since_discount_end")
    no_purchase_since = col("purchases.recency_days") > since_end
    return {
        "silence_alert": col("activity.days_below_baseline") >= silence_needed,
        "content_below_mean": col("content.days_below_40pct") >= th.content_below_days,
        "price_discount_ended": (since_end >= th.price_tolerance_days)
        & (since_end < th.price_tolerance_days + th.price_window_days)
        & no_purchase_since
        & ~promo,
        "content_feed_drop": (col("content_consumption.count_28d") > 0)
        & (col("content_consumption.trend") <= math.log(th.content_drop_ratio) + EPS),
        "social_friends_leaving": col("social.friends_lost_share_28d") > th.friends_lost_share + EPS,
        "commerce_abandoned_carts": col("commerce.abandoned_cart_streak") >= th.abandoned_carts,
        "commerce_repeat_views": np.expm1(col("commerce.repeat_views_7d")) >= th.repeat_views_7d - EPS,
    }


def signals_from_daily(
    daily: np.ndarray, days: np.ndarray, first_day: int | None = None, th: SignalThresholds | None = None
) -> dict[str, np.ndarray]:
    return signals(extract_features(daily, days, first_day), th)
