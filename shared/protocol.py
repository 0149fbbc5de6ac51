"""The labelling protocol, declared once: which of a device's days are examples and what they mean.

Two protocols, one code path on the device (`client.device_data`):

* **rolling** (no cutoff; the synthetic population and a device in deployment): every day whose
  outcome is known is a training row; the outcome is the onset of a churn-length silence
  (`silence_days` without activity) within the horizon (`client.labels.survival_labels`). The
  evaluation row is the device's last day whose outcome is known.
* **cutoff** (the standard churn protocol for a real log, `--cutoff DATE`): the evaluation row is
  the cutoff day T, labelled churned when the user has no activity in (T, T + horizon]. Training
  rows are days T - horizon, T - horizon - 7, ... (out-of-time: their outcome windows end by T),
  labelled the same way. Nothing after T is used but T's own outcome.

`n_features` is the base 127 (the brief's model) or every declared feature (the extended block
adds long windows, history rhythm and money, what purchase logs need). `population` restricts
rows in both: `all`, or `active:N` (activity in the N days up to the row's
day). The horizon drives the model's output layout (`ModelSpec`): daily hazard bins up to 14 days,
weekly bins beyond for the rolling label, and one bin for the cutoff label (a yes/no outcome).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.feature_spec import BASE_FEATURES, N_FEATURES
from fedchurn.shared.model_format import ModelSpec

__all__ = ["MAX_HORIZON", "Protocol", "ProtocolError", "day_number", "day_text", "parse_population"]

MAX_HORIZON = 365
DAILY_BINS_UP_TO = 14
ROW_STRIDE = 7  # days between a device's training rows under the cutoff protocol
_EPOCH = date(1970, 1, 1)


class ProtocolError(ValueError):
    """A protocol setting is unusable; `option` names the command-line option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


def day_number(text: str, option: str = "--cutoff") -> int:
    """A calendar date (YYYY-MM-DD) as a day number since 1970-01-01 (the devices' local days)."""
    try:
        d = date.fromisoformat(text.strip())
    except ValueError:
        raise ProtocolError(option, f"{text!r} is not a date (expected YYYY-MM-DD)") from None
    if d < _EPOCH:
        raise ProtocolError(option, f"{text} is before 1970-01-01")
    return (d - _EPOCH).days


def day_text(day: int) -> str:
    return date.fromordinal(_EPOCH.toordinal() + int(day)).isoformat()


def parse_population(text: str) -> int | None:
    """`all` -> None; `active:N` -> N (days of activity look-back, 1..365)."""
    t = text.strip().lower()
    if t == "all":
        return None
    m = re.fullmatch(r"active:(\d+)", t)
    if not m or not 1 <= int(m.group(1)) <= MAX_HORIZON:
        raise ProtocolError("--population", f"{text!r}: expected all or active:N with N in 1..{MAX_HORIZON}")
    return int(m.group(1))


@dataclass(frozen=True)
class Protocol:
    horizon: int = 14  # days
    silence_days: int = 14  # rolling label: days without activity that make a churn
    activity: tuple[str, ...] = ("sessions",)  # categories whose events count as activity
    cutoff_day: int | None = None  # the cutoff protocol's T (a local day number)
    population_days: int | None = None  # active:N; None = all
    n_features: int = BASE_FEATURES  # the model reads this prefix of the feature vector

    def __post_init__(self) -> None:
        if not 1 <= self.horizon <= MAX_HORIZON:
            raise ProtocolError("--horizon", f"{self.horizon} days is outside 1..{MAX_HORIZON}")
        if not self.activity:
            raise ProtocolError("--activity", "no activity category: name at least one")
        unknown = [c for c in self.activity if c not in CATEGORY_IDS]
        if unknown:
            raise ProtocolError(
                "--activity", f"unknown categories {', '.join(unknown)}; known: {', '.join(CATEGORY_IDS)}"
            )
        if self.cutoff_day is None:
            if not 1 <= self.silence_days <= self.horizon:
                raise ProtocolError(
                    "--silence-days",
                    f"{self.silence_days} days: a churn-length silence must be 1..horizon "
                    f"({self.horizon} days), or a churn could never be confirmed within the horizon",
                )
        elif self.cutoff_day < 0:
            raise ProtocolError("--cutoff", "before 1970-01-01")
        if self.n_features not in (BASE_FEATURES, N_FEATURES):
            raise ProtocolError(
                "--features", f"{self.n_features} features: base ({BASE_FEATURES}) or extended ({N_FEATURES})"
            )
        if self.population_days is not None and not 1 <= self.population_days <= MAX_HORIZON:
            raise ProtocolError("--population", f"active:{self.population_days} is outside 1..{MAX_HORIZON}")

    @property
    def bin_days(self) -> int:
        if self.cutoff_day is not None:
            return self.horizon  # a yes/no outcome: one bin
        return 1 if self.horizon <= DAILY_BINS_UP_TO else 7

    @property
    def outputs(self) -> int:
        return -(-self.horizon // self.bin_days)

    @property
    def lag(self) -> int:
        """Days after a row's day until its outcome is known for sure."""
        return self.horizon if self.cutoff_day is not None else self.horizon + self.silence_days - 1

    def model_spec(self, hidden: int = 16) -> ModelSpec:
        return ModelSpec(
            n_features=self.n_features, hidden=hidden, horizon_days=self.horizon, bin_days=self.bin_days
        )

    def describe(self) -> str:
        who = (
            "all users"
            if self.population_days is None
            else f"users active in the {self.population_days} days before"
        )
        if self.cutoff_day is None:
            return (
                f"rolling: churn = a {self.silence_days}-day silence starting within {self.horizon} days; "
                f"{who} each day"
            )
        return (
            f"cutoff {day_text(self.cutoff_day)}: churn = no activity in the {self.horizon} days after; "
            f"{who if self.population_days is not None else 'all users with events by'} the cutoff"
        )
