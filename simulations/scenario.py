"""Scenarios: the small TOML files that parameterise the simulated population.

A scenario is a frozen dataclass so that it can be hashed into the seed of every device: the
history of device i is a pure function of (population seed, i, scenario knobs). The `name` and
`description` are labels only and do not change the generated data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import tomllib
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


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ScenarioError(msg)


def _check_days(days: int) -> None:
    _check(MIN_DAYS <= days <= MAX_DAYS, f"days must be in {MIN_DAYS}..{MAX_DAYS}, got {days}")


def _validate(s: Scenario) -> None:
    _check_days(s.days)
    try:
        dt.date.fromisoformat(s.start_date)
    except ValueError:
        raise ScenarioError(f"start_date {s.start_date!r} is not an ISO date (YYYY-MM-DD)") from None
    _check(0 <= s.horizon_days <= 60, "horizon_days must be in 0..60")
    shares = s.segments.shares()
    _check(
        all(x >= 0 for x in shares) and abs(sum(shares) - 1) < 1e-6, f"segment shares must sum to 1: {shares}"
    )
    _check(
        len(s.timezones) > 0 and all(abs(tz) <= 14 * 60 and w >= 0 for tz, w in s.timezones),
        "timezones must be (offset minutes within +-840, weight >= 0) pairs",
    )
    _check(sum(w for _, w in s.timezones) > 0, "timezone weights sum to 0")
    e = s.engagement
    _check(0 < e.level_min <= e.level_max, "engagement levels must satisfy 0 < level_min <= level_max")
    _check(1.0 <= e.level_skew <= 2.0, "engagement.level_skew must be in [1, 2]")
    _check(0 <= e.drift_persistence < 1 and e.drift_sd >= 0, "drift_persistence in [0, 1), drift_sd >= 0")
    _check(e.events_scale > 0 and e.weekend_effect >= 0, "events_scale > 0, weekend_effect >= 0")
    c = s.churn
    _check(
        len(c.segment_hazard) == 4 and len(s.foolers.promo_participation) == 4,
        "segment_hazard and promo_participation need one value per segment",
    )
    _check(0 < c.onboarding_days < 60, "onboarding_days must be in 1..59")
    _check(0 <= c.engagement_sensitivity <= 6, "engagement_sensitivity must be an integer in 0..6")
    _check(
        c.base_hazard >= 0 and 0 <= c.stray_event_rate <= 1, "base_hazard >= 0, stray_event_rate in [0, 1]"
    )
    d = s.decay
    _check(2 <= d.window_days <= 14, "decay.window_days must be in 2..14")
    _check(
        1 <= d.predecline_days <= 60 and 0 < d.predecline_floor <= 1, "predecline_days 1..60, floor in (0, 1]"
    )
    _check(0 < d.content_ratio < d.content_threshold, "decay.content_ratio must be in (0, content_threshold)")
    f = s.foolers
    _check(1 <= f.quiet_days_min <= f.quiet_days_max <= 10, "quiet days must satisfy 1 <= min <= max <= 10")
    _check(1 <= f.promo_days_min <= f.promo_days_max < f.promo_period_days - 8, "promo days out of range")
    _check(2 <= f.promo_lull_days_max <= 10, "promo_lull_days_max must be in 2..10")
    _check(f.new_user_max_age_days >= 3, "new_user_max_age_days must be >= 3 (it is capped at days - 1)")
    probs = {
        "engagement.night_user_rate": e.night_user_rate,
        "churn.no_warning_rate": c.no_warning_rate,
        "decay.notifications_off_prob": d.notifications_off_prob,
        **{
            f"triggers.{k.name}": getattr(s.triggers, k.name)
            for k in fields(Triggers)
            if k.name.endswith(("_prob", "_rate", "_threshold", "_max"))
        },
        **{f"foolers.{k.name}": getattr(f, k.name) for k in fields(Foolers) if k.name.endswith("_rate")},
        **{f"decay.{k}": getattr(d, k) for k in ("private_messages_drop", "profile_updates_drop")},
    }
    for name, p in (*probs.items(), *(("foolers.promo_participation", p) for p in f.promo_participation)):
        _check(0 <= p <= 1, f"{name} must be a probability in [0, 1], got {p}")
    for h in s.holidays:
        try:
            dt.date.fromisoformat(h.start)
        except ValueError:
            raise ScenarioError(f"holiday start {h.start!r} is not an ISO date") from None
        _check(1 <= h.days <= 8, f"holiday {h.start} must last 1..8 days")


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


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return cls(**{k: _tuples(v) for k, v in table.items()})


def scenario_from_dict(data: dict[str, Any], where: str = "scenario") -> Scenario:
    """Build a scenario from parsed TOML (or `Scenario.to_dict()` output); unset knobs keep defaults."""
    kwargs: dict[str, Any] = {}
    top = {f.name for f in fields(Scenario)}
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _section(_SECTIONS[key], value, f"{where} [{key}]")
        elif key == "holidays":
            kwargs[key] = tuple(_section(Holiday, h, f"{where} [[holidays]]") for h in value)
        elif key in top:
            kwargs[key] = _tuples(value)
        else:
            raise ScenarioError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(top))}")
    try:
        return Scenario(**kwargs)
    except TypeError as err:
        raise ScenarioError(f"{where}: {err}") from None


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
