"""The transparency API's contract: every request and response body, as pydantic models.

The OpenAPI schema is generated from these, and the audit store validates what the aggregator
writes with the same input models, so the Python path and the HTTP path accept the same records.
Examples are derived from the catalogue and feature specification, never typed in by hand.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from fedchurn.server.problem_details import ProblemBody
from fedchurn.shared.catalogue import CATALOGUE_VERSION, CATEGORIES, as_dict
from fedchurn.shared.feature_spec import FEATURES, N_FEATURES
from fedchurn.shared.protection import SCHEMES, ModeName

ProtectionMode = ModeName
PROTECTION_MODES: tuple[str, ...] = tuple(SCHEMES)
RunEndState = Literal["completed", "failed", "aborted"]
RUN_END_STATES: tuple[str, ...] = ("completed", "failed", "aborted")
RunStatus = Literal["running", "completed", "failed", "aborted"]

MAX_INT = 2**53 - 1  # the largest integer every JSON client (and a float64) represents exactly
MAX_COUNT = 10**9
_T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_T1 = datetime(2026, 1, 5, 9, 0, 4, tzinfo=UTC)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_timestamp(value: Any) -> Any:
    """RFC 3339 only (what OpenAPI's `date-time` promises): no bare numbers, no naive strings.

    A datetime object passes through (naive = UTC, by the store); a leap second becomes :59.999999
    because Python cannot represent it.
    """
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 date-time string, e.g. 2026-01-05T09:00:00Z")
    m = _RFC3339.fullmatch(value.strip())
    if not m:
        raise ValueError("expected an RFC 3339 date-time with a UTC offset, e.g. 2026-01-05T09:00:00Z")
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    frac, zulu, sign, oh, om = m.group(7), m.group(8), m.group(9), m.group(10), m.group(11)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if sec == 60:
        sec, micro = 59, 999_999
    tz = UTC
    if not zulu:
        delta = timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(-delta if sign == "-" else delta)
    return datetime(y, mo, d, h, mi, sec, micro, tzinfo=tz)


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive time is taken as UTC; times beyond the representable range are clamped."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year < 2 else datetime.max).replace(tzinfo=UTC)


def json_int(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0 are integers, `true` and "3" are not."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(json_int)]


class _Strict(BaseModel):
    """Request bodies: unknown fields are an error, so a typo never silently drops audit data; strict
    types, so `false` is not a count and `0` is not a boolean."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- errors ----------------------------------------------------------------------------------


class ProblemFieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the error is: location then field path.")
    msg: str
    type: str


class Problem(ProblemBody):
    """An error, as RFC 9457 problem details (`application/problem+json`), with the field errors of
    a request that failed validation as an extension member."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:fedchurn:problem:unknown-category",
                    "title": "Unknown data category",
                    "status": 404,
                    "detail": "no category 'location'; known: sessions, feature_usage, ...",
                    "instance": "/v1/categories/location",
                }
            ]
        }
    )

    errors: list[ProblemFieldError] | None = Field(default=None, description="Field errors (422 only).")


# --- catalogue and features ------------------------------------------------------------------


class Purpose(BaseModel):
    id: str
    description: str


class Action(BaseModel):
    name: str
    value: str = Field(description="Meaning (unit) of the event's numeric value.")


class Category(BaseModel):
    """One data category: every field of the catalogue entry, plus the features it feeds."""

    model_config = ConfigDict(json_schema_extra={"examples": [as_dict(CATEGORIES[7])]})

    id: str
    number: int = Field(ge=1, le=len(CATEGORIES))
    name_en: str
    name_zh: str
    description: str
    actions: list[Action]
    recorded_fields: list[str] = Field(description="What each stored event holds, on the device.")
    never_recorded: list[str] = Field(description="What the device never records for this category.")
    purposes: list[Purpose]
    legal_basis: str
    retention_days: int = Field(description="Days the device keeps the raw events before deleting them.")
    leaves_device: str = Field(description="What of this category ever leaves the device, and in what form.")
    apple_privacy_label: str = Field(description="Apple App Store privacy label (data type).")
    google_data_safety: str = Field(description="Google Play Data safety (data type).")
    dpv_category: str = Field(description="W3C Data Privacy Vocabulary personal-data category (IRI).")
    features_fed: list[str] = Field(description="Model features computed from this category.")


class CategoryList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "catalogue_version": CATALOGUE_VERSION,
                    "count": len(CATEGORIES),
                    "categories": [as_dict(CATEGORIES[0])],
                }
            ]
        }
    )

    catalogue_version: str
    count: int
    categories: list[Category]


def _feature_example(i: int) -> dict[str, Any]:
    f = FEATURES[i]
    return {
        "index": i,
        "name": f.name,
        "group": f.group,
        "categories": list(f.categories),
        "formula": f.formula,
    }


class Feature(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_feature_example(0)]})

    index: int = Field(description="Position in the feature vector.")
    name: str
    group: Literal["dynamic", "static", "environment"]
    categories: list[str] = Field(description="Data categories this feature is computed from.")
    formula: str


class FeatureSpec(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "n_features": N_FEATURES,
                    "groups": {
                        g: sum(f.group == g for f in FEATURES) for g in ("dynamic", "static", "environment")
                    },
                    "by_category": {"sessions": ["sessions.count_1d", "sessions.count_7d"]},
                    "features": [_feature_example(0)],
                }
            ]
        }
    )

    n_features: int
    groups: dict[str, int] = Field(description="Number of features per group.")
    by_category: dict[str, list[str]] = Field(description="Category id -> the features it feeds.")
    features: list[Feature]


# --- audit log: inputs (aggregator -> store) ---------------------------------------------------


class ProtectionIn(BaseModel):
    """How device updates are protected in a run. Extra keys are kept and shown to reviewers."""

    model_config = ConfigDict(extra="allow", strict=True)

    mode: ProtectionMode
    params: dict[str, Any] = Field(default_factory=dict, description="Cryptographic parameters.")
    upload_bytes: Count = Field(ge=0, le=MAX_INT, description="What one device sends per round, in bytes.")
    aggregator_learns: str = Field(max_length=4000)
    keyholder_learns: str = Field(default="", max_length=4000)


class DpIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    target_epsilon: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, ge=0, le=1)
    accountant: str = Field(default="none", max_length=200)
    mechanism: str = Field(default="none", max_length=400)
    noise_multiplier: float | None = Field(default=None, ge=0)
    clip_norm: float | None = Field(default=None, ge=0)


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(max_length=200)
    version: str = Field(max_length=200)
    n_params: Count = Field(ge=0, le=MAX_INT)
    layers: Any = None


class RunStartIn(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "config": {"num_server_rounds": 3, "per_round": 10, "seed": 0},
                    "protection": {
                        "mode": "secagg",
                        "params": {"ring_bits": 32, "k_min": 5},
                        "upload_bytes": 9268,
                        "aggregator_learns": "the sum of the cohort's updates",
                        "keyholder_learns": "the sum of the cohort's masks",
                    },
                    "dp": {
                        "target_epsilon": 8.0,
                        "delta": 1e-5,
                        "accountant": "rdp",
                        "noise_multiplier": 1.1,
                        "clip_norm": 1.0,
                    },
                    "model": {"name": "churn-survival-mlp", "version": "0.1.0", "n_params": 2286},
                }
            ]
        },
    )

    config: dict[str, Any] = Field(default_factory=dict)
    protection: ProtectionIn
    dp: DpIn
    model: ModelIn


EPSILON_OUTSIDERS = (
    "ε against anyone outside the aggregator, assuming the sampling of devices is secret from them "
    "(amplification by sampling)"
)
EPSILON_AGGREGATOR = (
    "ε against the aggregator, which knows who took part: no amplification, every round counted"
)


class RefusalIn(_Strict):
    """Devices refused for one reason, counted: the audit log never names a device."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"reason": "update failed the size check", "count": 2}]},
    )

    reason: str = Field(max_length=2000, description="Why the updates were refused.")
    count: Count = Field(default=1, ge=1, le=MAX_COUNT, description="How many devices, for this reason.")
    device: str | None = Field(
        default=None,
        max_length=200,
        deprecated=True,
        description="Deprecated and ignored: accepted from older writers, never stored or shown "
        "(counts as one device for `reason`).",
    )


class RoundIn(_Strict):
    """One training round as the aggregator saw it. Times are RFC 3339 with an offset."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "round": 1,
                    "started_at": _T0.isoformat(),
                    "finished_at": _T1.isoformat(),
                    "sampled": 10,
                    "received": 9,
                    "refused": [{"reason": "update failed the size check", "count": 1}],
                    "bytes_received": 83412,
                    "protection_mode": "secagg",
                    "dp_noise_std": 0.11,
                    "epsilon_spent": 1.42,
                    "epsilon_aggregator": 3.9,
                    "metrics": {"train_loss": 0.41},
                    "skipped": False,
                    "skip_reason": None,
                }
            ]
        },
    )

    round: Count = Field(ge=0, le=MAX_COUNT)
    started_at: Timestamp
    finished_at: Timestamp
    sampled: Count = Field(ge=0, le=MAX_COUNT, description="Cohort size: devices asked for an update.")
    received: Count = Field(
        ge=0, le=MAX_COUNT, description="Updates accepted into the sum; at most `sampled`."
    )
    refused: list[RefusalIn] = Field(
        default_factory=list,
        max_length=100_000,
        description="Refused devices counted by reason; entries with the same reason are added up.",
    )
    bytes_received: Count = Field(ge=0, le=MAX_INT)
    protection_mode: ProtectionMode
    dp_noise_std: float | None = Field(default=None, ge=0)
    epsilon_spent: float | None = Field(
        default=None, ge=0, description=f"{EPSILON_OUTSIDERS}, spent up to and including this round."
    )
    epsilon_aggregator: float | None = Field(
        default=None, ge=0, description=f"{EPSILON_AGGREGATOR}, spent up to and including this round."
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    skipped: bool = False
    skip_reason: str | None = Field(
        default=None, max_length=2000, description="Why the round was skipped; only on a skipped round."
    )

    # Invariants between fields (docs/api.md, "What a round record must satisfy"). Each is checked
    # on the later field, so the error's location names it; a field that failed its own check is
    # missing from `info.data` and the comparison is left out. The run's protection mode is checked
    # by the store, which knows the run.

    @field_validator("finished_at")
    @classmethod
    def _finished_after_start(cls, v: datetime, info: ValidationInfo) -> datetime:
        started = info.data.get("started_at")
        if started is not None and to_utc(v) < to_utc(started):
            raise ValueError(
                f"finished_at ({to_utc(v).isoformat()}) is before started_at ({to_utc(started).isoformat()})"
            )
        return v

    @field_validator("received")
    @classmethod
    def _received_at_most_sampled(cls, v: int, info: ValidationInfo) -> int:
        sampled = info.data.get("sampled")
        if sampled is not None and v > sampled:
            raise ValueError(
                f"received ({v}) is more than sampled ({sampled}): a round takes at most one update "
                "from each device it sampled"
            )
        return v

    @field_validator("skip_reason")
    @classmethod
    def _reason_only_when_skipped(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("skipped") is False:
            raise ValueError("skip_reason is given but skipped is false: only a skipped round has one")
        return v


def finite_metric(value: Any) -> float | int | None:
    """A final metric is a finite number or null: the model card shows numbers, so a string such as
    `"high"` or a non-finite value would be stored and then shown as null (review 21). The aggregator's
    own metrics pass: it drops the list-valued ones (calibration curves, intervals) before it writes,
    and the store turns its NaN (e.g. an undefined lift) into null first."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a metric must be a finite number or null, got {value}")
        return value
    raise ValueError(f"a metric must be a finite number or null, got {type(value).__name__} {value!r:.80}")


METRIC_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}]}
Metric = Annotated[Any, AfterValidator(finite_metric), WithJsonSchema(METRIC_SCHEMA)]
Metrics = dict[str, Metric]
CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metrics": {"anyOf": [{"type": "object", "additionalProperties": METRIC_SCHEMA}, {"type": "null"}]}
    },
    "additionalProperties": True,
}


class RunFinishIn(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "status": "completed",
                    "final_metrics": {"roc_auc": 0.81},
                    "model_card": {
                        "version": "0.1.0",
                        "training_rounds": 3,
                        "metrics": {"roc_auc": 0.81, "pr_auc": 0.52, "lift_top_decile": 3.1},
                        "baselines": {"logistic_regression": {"roc_auc": 0.79}},
                        "feature_group_importance": {"sessions": 0.31, "purchases": 0.12},
                    },
                }
            ]
        },
    )

    status: RunEndState
    final_metrics: Metrics = Field(
        default_factory=dict, description="Metric name -> a finite number or null (else 422 naming it)."
    )
    model_card: Annotated[dict[str, Any], WithJsonSchema(CARD_SCHEMA)] = Field(
        default_factory=dict,
        description="Its `metrics`, when given, are a finite number or null each, as `final_metrics`.",
    )

    @field_validator("model_card")
    @classmethod
    def _card_metrics_are_numbers(cls, card: dict[str, Any]) -> dict[str, Any]:
        metrics = card.get("metrics")
        if metrics is None:
            return card
        if not isinstance(metrics, dict):
            raise ValueError(f"model_card.metrics must be an object of metric -> number, got {metrics!r:.80}")
        for name, value in metrics.items():
            try:
                finite_metric(value)
            except ValueError as e:
                raise ValueError(f"model_card.metrics.{name}: {e}") from None
        return card


# --- audit log: outputs --------------------------------------------------------------------------


class Refusal(BaseModel):
    """Devices refused in a round for one reason: a count, never a device identity."""

    reason: str = Field(description="Why the updates were refused.")
    count: int = Field(ge=1, description="How many devices were refused for this reason.")


class AuditRound(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "3f2b9c0e6d0a4c1e9b7f5a2d8c4e6f10",
                    "round": 1,
                    "started_at": _T0.isoformat(),
                    "finished_at": _T1.isoformat(),
                    "duration_s": 4.0,
                    "recorded_at": _T1.isoformat(),
                    "sampled": 10,
                    "received": 9,
                    "refused_count": 1,
                    "refused": [{"reason": "update failed the size check", "count": 1}],
                    "bytes_received": 83412,
                    "protection_mode": "secagg",
                    "dp_noise_std": 0.11,
                    "epsilon_spent": 1.42,
                    "epsilon_aggregator": 3.9,
                    "metrics": {"train_loss": 0.41},
                    "skipped": False,
                    "skip_reason": None,
                }
            ]
        }
    )

    run_id: str
    round: int
    started_at: datetime
    finished_at: datetime
    duration_s: float
    recorded_at: datetime
    sampled: int = Field(description="Cohort size: devices asked for an update.")
    received: int = Field(description="Updates accepted into the sum.")
    refused_count: int = Field(description="Devices refused in this round (the sum of the counts).")
    refused: list[Refusal] = Field(
        description="Refused devices counted by reason, sorted by reason; devices are never named."
    )
    bytes_received: int
    protection_mode: ProtectionMode
    dp_noise_std: float | None = Field(description="Std of the DP noise added to the sum (None: no DP).")
    epsilon_spent: float | None = Field(
        description=f"{EPSILON_OUTSIDERS}, spent by the run up to and including this round."
    )
    epsilon_aggregator: float | None = Field(
        description=f"{EPSILON_AGGREGATOR}, spent by the run up to and including this round."
    )
    metrics: dict[str, Any]
    skipped: bool
    skip_reason: str | None


class AuditRoundPage(BaseModel):
    total: int = Field(description="Rounds matching the filters.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="Offset of the next page, None on the last page.")
    items: list[AuditRound]


class RunSummary(BaseModel):
    run_id: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    protection_mode: ProtectionMode
    model_name: str
    model_version: str
    rounds_recorded: int
    epsilon_spent: float | None = Field(description=f"{EPSILON_OUTSIDERS}, spent so far.")
    epsilon_aggregator_spent: float | None = Field(description=f"{EPSILON_AGGREGATOR}, spent so far.")


class RunDetail(RunSummary):
    config: dict[str, Any]
    protection: dict[str, Any]
    dp: dict[str, Any]
    model: dict[str, Any]
    final_metrics: dict[str, Any] | None
    model_card: dict[str, Any] | None = Field(description="As written by the aggregator; see /v1/model-card.")


class RunPage(BaseModel):
    total: int
    offset: int
    limit: int
    next_offset: int | None
    items: list[RunSummary]


# --- derived views -------------------------------------------------------------------------------


class ModeExplanation(BaseModel):
    mode: ProtectionMode
    summary: str
    aggregator_learns: str
    keyholder_learns: str


class UploadSpec(BaseModel):
    """What a device sends per round, as recorded by the latest run (plus explanatory text)."""

    available: bool = Field(description="False until a run has been recorded.")
    note: str
    raw_data_leaves_device: bool = Field(description="Always false: raw events never leave the device.")
    what_leaves_device: str = Field(description="From the catalogue, the same for all 17 categories.")
    run_id: str | None
    protection_mode: ProtectionMode | None
    upload_bytes: int | None = Field(description="Bytes one device uploads per round (declared by the run).")
    observed_bytes_per_device: float | None = Field(
        description="bytes_received / received over the run's training rounds (round 1 on, not skipped; "
        "measured). The feature-mean round 0 of `centre-features`, whose uploads are smaller, is left "
        "out; null until a training round is recorded."
    )
    params: dict[str, Any] = Field(description="Cryptographic parameters of the protection mode.")
    aggregator_learns: str | None = Field(
        description="What the aggregator learns in this run: its protection mode and whether DP noise is "
        "added (the run's own declaration is in /v1/runs/{run_id} `protection`)."
    )
    keyholder_learns: str | None = Field(
        description="What the key holder learns in this run, by the same rule as `aggregator_learns`."
    )
    extra: dict[str, Any] = Field(description="Further protection details recorded by the run.")
    model_n_params: int | None = Field(description="Length of the model vector an update refers to.")
    modes: list[ModeExplanation] = Field(description="What each protection mode reveals, and to whom.")


class PrivacyBudget(BaseModel):
    available: bool
    note: str
    run_id: str | None
    run_status: RunStatus | None
    epsilon_spent: float | None = Field(
        description=f"{EPSILON_OUTSIDERS}, spent so far (the last round that reported it)."
    )
    epsilon_aggregator_spent: float | None = Field(
        description=f"{EPSILON_AGGREGATOR}, spent so far (the last round that reported it)."
    )
    target_epsilon: float | None = Field(description="The run's target for ε against outsiders.")
    remaining_epsilon: float | None = Field(description="target_epsilon - epsilon_spent (against outsiders).")
    delta: float | None
    accountant: str | None
    mechanism: str | None = Field(
        default=None, description="How the noise is added (DP-FedAvg: once per round's sum, key holder)."
    )
    noise_multiplier: float | None
    clip_norm: float | None
    rounds_counted: int
    evaluation_noise_multiplier: float | None = Field(
        default=None,
        description="The key holder's noise on each evaluation release, as a multiplier of one device's "
        "bound (0: exact counts; null: not recorded).",
    )
    evaluation_epsilon_per_run: float | None = Field(
        default=None,
        description="ε of each held-out device's one evaluation in this run (replace-one neighbours, RDP); "
        "null when evaluations are exact.",
    )


class PolicyRule(BaseModel):
    id: str
    description: str
    parameters: dict[str, float | int]
    source: str = Field(description="The module that owns the values.")


class RetentionPolicy(BaseModel):
    rules: list[PolicyRule]


class FeatureGroupImportance(BaseModel):
    category: str = Field(description="Data category id (the feature group).")
    name_en: str
    name_zh: str
    importance: float = Field(description="Share of the score's attribution, as reported by the run.")


class EvaluationMetrics(BaseModel):
    """Federated evaluation metrics (computed from securely summed histograms)."""

    model_config = ConfigDict(extra="allow")

    roc_auc: float | None = None
    pr_auc: float | None = None
    lift_top_decile: float | None = Field(default=None, description="Lift at the top 10% of scores.")
    calibration_error: float | None = None
    concordance: float | None = Field(default=None, description="Harrell's C of the survival curve.")


class ModelCard(BaseModel):
    available: bool = Field(description="False until a run has completed with a model card.")
    note: str
    run_id: str | None
    model_name: str | None
    version: str | None
    n_params: int | None
    training_rounds: int | None
    metrics: EvaluationMetrics
    baselines: dict[str, dict[str, Any]] = Field(description="Centralised baselines on the same users.")
    logic_in_plain_words: str = Field(
        description="GDPR Art. 13(2)(f): meaningful information about the logic."
    )
    feature_groups: list[FeatureGroupImportance] = Field(description="Data categories that drive the score.")
    high_risk_threshold: float
    retention_policy: RetentionPolicy


class ApiIndex(BaseModel):
    name: str
    version: str
    catalogue_version: str
    writable: bool
    links: dict[str, str]


class Health(BaseModel):
    status: Literal["ok"]
    writable: bool
    database: str = Field(description="SQL dialect of the audit database.")
