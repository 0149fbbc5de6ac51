"""The transparency API: what a privacy reviewer needs, derived from the catalogue and the audit log.

`create_app(database_url, write_token)` builds the FastAPI app. Everything under `/v1` is public
and read-only except the three POST routes, which need `Authorization: Bearer <token>`; an app
created without a token answers them with 403 (problem+json) so the schema is the same for every
deployment. Static parts (catalogue, features, policy rules, the page) carry an ETag and answer
If-None-Match with 304; the rest says `no-cache` because the audit log grows during a run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from fedchurn import __version__
from fedchurn.client.policy import PolicyConfig
from fedchurn.client.signals import SignalThresholds
from fedchurn.server import i18n
from fedchurn.server.api_models import (
    PROTECTION_MODES,
    ApiIndex,
    AuditRound,
    AuditRoundPage,
    Category,
    CategoryList,
    EvaluationMetrics,
    Feature,
    FeatureGroupImportance,
    FeatureSpec,
    Health,
    ModeExplanation,
    ModelCard,
    PolicyRule,
    PrivacyBudget,
    Problem,
    ProtectionMode,
    RetentionPolicy,
    RoundIn,
    RunDetail,
    RunFinishIn,
    RunPage,
    RunStartIn,
    RunSummary,
    Timestamp,
    UploadSpec,
)
from fedchurn.server.audit import (
    AuditDatabaseError,
    AuditError,
    AuditStore,
    InvalidRecordError,
    RoundAlreadyRecordedError,
    RoundFilters,
    RoundRecord,
    RunFinishedError,
    RunRecord,
    UnknownRunError,
)
from fedchurn.server.catalogue_zh import catalogue_text
from fedchurn.server.http_gate import RequestGate
from fedchurn.shared import feature_spec as fs
from fedchurn.shared.catalogue import (
    BY_ID,
    CATALOGUE_VERSION,
    CATEGORIES,
    CATEGORY_IDS,
    LEAVES_NOTHING_RAW,
    as_dict,
)
from fedchurn.shared.model_format import DEFAULT_SPEC, HIGH_RISK, HORIZON_DAYS, MEDIUM_RISK

PREFIX = "/v1"
PROBLEM_JSON = "application/problem+json"
STATIC_CACHE = "public, max-age=3600"  # the catalogue changes only with a deployment; ETag revalidates
DYNAMIC_CACHE = "no-cache"  # the audit log grows during a run: always revalidate
# Biggest legitimate write: a round record whose `refused` list is at RoundIn's limit of 100,000
# refusals, each as an older writer sends it (one per device: an ignored node id, "<reason>:
# <detail>" of under 100 characters) about 160 bytes of JSON: 16 MB. Run starts and model cards
# are a few KB. Twice that.
MAX_WRITE_BODY_BYTES = 32 * 1024 * 1024
DATABASE_UNAVAILABLE = "the audit database is unavailable; the operator's log has the cause"

log = logging.getLogger(__name__)

RECALL_RULES_SOURCE = "fedchurn.client.policy.PolicyConfig"  # the on-device engine owns the recall rules
SIGNALS_SOURCE = "fedchurn.client.signals.SignalThresholds"
TIERS_SOURCE = "fedchurn.shared.model_format"


# --- problem details -------------------------------------------------------------------------


class ProblemError(StarletteHTTPException):
    """An HTTP error with an RFC 9457 type and title."""

    def __init__(
        self, status: int, type_: str, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.type = type_
        self.title = title


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = problem_body(request.url.path, status, detail, type_=type_, title=title, errors=errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_body(
    path: str,
    status: int,
    detail: str | None,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body = Problem.model_validate(
        {
            "type": type_,
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": path,
            "errors": errors,
        }
    )
    return body.model_dump(mode="json", exclude_none=True)


UNAUTHORIZED = ("urn:fedchurn:problem:unauthorized", "Unauthorized")
CHALLENGE = 'Bearer realm="fedchurn"'  # WWW-Authenticate of a 401
READ_ONLY = ("urn:fedchurn:problem:read-only", "Read-only server")


def gate_problem(status: int, detail: str, path: str) -> bytes:
    """The body of a refusal by the request gate (http_gate.RequestGate), as the routes' own."""
    type_, title = {401: UNAUTHORIZED, 403: READ_ONLY}.get(status, ("about:blank", None))
    return json.dumps(
        problem_body(path, status, detail, type_=type_, title=title), separators=(",", ":")
    ).encode()


_AUDIT_ERRORS: dict[type[AuditError], tuple[int, str, str]] = {
    UnknownRunError: (404, "urn:fedchurn:problem:unknown-run", "Unknown run"),
    RoundAlreadyRecordedError: (409, "urn:fedchurn:problem:round-already-recorded", "Round already recorded"),
    RunFinishedError: (409, "urn:fedchurn:problem:run-finished", "Run already finished"),
    InvalidRecordError: (422, "urn:fedchurn:problem:invalid-record", "Invalid audit record"),
    AuditDatabaseError: (503, "urn:fedchurn:problem:database", "Audit database unavailable"),
}


def _allowed(request: Request) -> str:
    """Every method of every route on this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def _install_problem_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 304:
            return Response(status_code=304, headers=exc.headers)
        if exc.status_code == 405:
            return problem_response(request, 405, "method not allowed", headers={"Allow": _allowed(request)})
        if isinstance(exc, ProblemError):
            return problem_response(
                request, exc.status_code, exc.detail, type_=exc.type, title=exc.title, headers=exc.headers
            )
        return problem_response(request, exc.status_code, str(exc.detail), headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())],
                "msg": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else None
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "invalid request"
        return problem_response(
            request,
            422,
            detail,
            type_="urn:fedchurn:problem:validation",
            title="Invalid request",
            errors=errors,
        )

    async def audit_error(request: Request, exc: Exception) -> Response:
        for cls, (status, type_, title) in _AUDIT_ERRORS.items():
            if isinstance(exc, cls):
                if status >= 500:  # the cause names tables, SQL or the database file: the log only
                    log.error("%s %s: %s", request.method, request.url.path, exc)
                    return problem_response(request, status, DATABASE_UNAVAILABLE, type_=type_, title=title)
                return problem_response(request, status, str(exc), type_=type_, title=title)
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, 500, "audit store error; the operator's log has the cause")

    async def server_error(request: Request, exc: Exception) -> Response:
        return problem_response(request, 500, "internal error; the server log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(AuditError, audit_error)
    app.add_exception_handler(Exception, server_error)


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses (the media type is fixed to problem+json afterwards)."""
    return {s: {"model": Problem, "description": HTTPStatus(s).phrase} for s in statuses}


_ETAG_HEADERS = {
    "ETag": {"description": "Strong validator of the body.", "schema": {"type": "string"}},
    "Cache-Control": {"description": "Caching policy.", "schema": {"type": "string"}},
}


def _cached_responses(*errors: int) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"headers": _ETAG_HEADERS},
        304: {"description": "Not modified (the If-None-Match ETag matches).", "headers": _ETAG_HEADERS},
        **_problems(*sorted({422, *errors})),
    }


# --- caching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Static:
    """A body computed once per process, with its ETag."""

    body: bytes
    etag: str


def make_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in if_none_match.split(","))


def cached(
    body: bytes,
    if_none_match: str | None,
    *,
    media_type: str = "application/json",
    etag: str | None = None,
    cache_control: str = STATIC_CACHE,
    headers: dict[str, str] | None = None,
) -> Response:
    tag = etag or make_etag(body)
    h = {"ETag": tag, "Cache-Control": cache_control, **(headers or {})}
    if etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=h)
    return Response(content=body, media_type=media_type, headers=h)


def _static(model: Any) -> Static:
    body = model.model_dump_json().encode()
    return Static(body, make_etag(body))


# --- views derived from the catalogue, the feature specification and the policy sources --------


def build_categories() -> CategoryList:
    return CategoryList(
        catalogue_version=CATALOGUE_VERSION,
        count=len(CATEGORIES),
        categories=[Category.model_validate(as_dict(c)) for c in CATEGORIES],
    )


def build_features() -> FeatureSpec:
    groups: dict[str, int] = {}
    for f in fs.FEATURES:
        groups[f.group] = groups.get(f.group, 0) + 1
    return FeatureSpec(
        n_features=fs.N_FEATURES,
        groups=groups,
        by_category={c: list(fs.features_fed_by(c)) for c in CATEGORY_IDS},
        features=[
            Feature(index=i, name=f.name, group=f.group, categories=list(f.categories), formula=f.formula)
            for i, f in enumerate(fs.FEATURES)
        ],
    )


def build_retention_policy(lang: i18n.Lang = "en", th: SignalThresholds | None = None) -> RetentionPolicy:
    """The policy rules, each read from the module that owns its values (see the `source` field)."""
    th = th or SignalThresholds()
    policy = PolicyConfig()
    signals_src = f"{SIGNALS_SOURCE} + fedchurn.shared.feature_spec"
    rules: list[tuple[str, dict[str, float | int], str]] = [
        (
            "silence_alert",
            {
                "below_baseline_pct": round((1 - fs.SILENCE_RATIO) * 100, 6),
                "days": th.silence_days,
                "days_during_promotion": th.silence_days_during_promotion,
            },
            signals_src,
        ),
        (
            "recall_frequency",
            {
                "max_per_month": policy.max_recalls_per_month,
                "day_a": policy.episode_send_days[0],
                "day_b": policy.episode_send_days[1],
                "day_c": policy.episode_send_days[2],
            },
            RECALL_RULES_SOURCE,
        ),
        (
            "marketing_opt_out",
            {"consecutive_rejections": policy.rejections_to_opt_out},
            RECALL_RULES_SOURCE,
        ),
        ("high_risk_tier", {"threshold": HIGH_RISK, "horizon_days": HORIZON_DAYS}, TIERS_SOURCE),
        (
            "segment_price_sensitive",
            {"tolerance_days": th.price_tolerance_days, "window_days": th.price_window_days},
            SIGNALS_SOURCE,
        ),
        (
            "segment_content_dependent",
            {"window_days": fs.TREND_RECENT, "drop_ratio": th.content_drop_ratio},
            signals_src,
        ),
        (
            "segment_social",
            {"friends_lost_pct": round(th.friends_lost_share * 100, 6), "window_days": 28},
            signals_src,
        ),
        (
            "content_below_mean",
            {"ratio_pct": round(fs.CONTENT_RATIO * 100, 6), "days": th.content_below_days},
            signals_src,
        ),
        ("commerce_abandoned_carts", {"abandoned_carts": th.abandoned_carts}, SIGNALS_SOURCE),
        ("commerce_repeat_views", {"repeat_views": th.repeat_views_7d, "window_days": 7}, SIGNALS_SOURCE),
    ]
    return RetentionPolicy(
        rules=[
            PolicyRule(
                id=rid, description=i18n.t(lang, f"rule.{rid}", **params), parameters=params, source=src
            )
            for rid, params, src in rules
        ]
    )


def mode_explanations(lang: i18n.Lang = "en") -> list[ModeExplanation]:
    return [
        ModeExplanation.model_validate(
            {
                "mode": m,
                "summary": i18n.t(lang, f"mode.{m}.summary"),
                "aggregator_learns": i18n.t(lang, f"mode.{m}.aggregator"),
                "keyholder_learns": i18n.t(lang, f"mode.{m}.keyholder"),
            }
        )
        for m in PROTECTION_MODES
    ]


def _run_summary_fields(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "protection_mode": run.protection.get("mode", "plaintext"),
        "model_name": str(run.model.get("name", "")),
        "model_version": str(run.model.get("version", "")),
        "rounds_recorded": run.rounds_recorded,
        "epsilon_spent": run.epsilon_spent,
        "epsilon_aggregator_spent": run.epsilon_aggregator,
    }


def to_run_summary(run: RunRecord) -> RunSummary:
    return RunSummary.model_validate(_run_summary_fields(run))


def to_run_detail(run: RunRecord) -> RunDetail:
    return RunDetail.model_validate(
        {
            **_run_summary_fields(run),
            "config": run.config,
            "protection": run.protection,
            "dp": run.dp,
            "model": run.model,
            "final_metrics": run.final_metrics,
            "model_card": run.model_card,
        }
    )


def to_audit_round(r: RoundRecord) -> AuditRound:
    return AuditRound.model_validate(
        {
            **asdict(r),
            "duration_s": (r.finished_at - r.started_at).total_seconds(),
            "refused_count": sum(int(x["count"]) for x in r.refused),
        }
    )


def _run_for(store: AuditStore, run_id: str | None) -> RunRecord | None:
    if run_id is None:
        return store.latest_run()
    run = store.get_run(run_id)
    if run is None:
        raise UnknownRunError(f"no run {run_id!r}")
    return run


def build_upload_spec(store: AuditStore, run_id: str | None = None, lang: i18n.Lang = "en") -> UploadSpec:
    run = _run_for(store, run_id)
    common: dict[str, Any] = {
        "raw_data_leaves_device": False,
        "what_leaves_device": LEAVES_NOTHING_RAW,
        "modes": mode_explanations(lang),
    }
    if run is None:
        return UploadSpec(
            available=False,
            note=i18n.t(lang, "upload.none", what=catalogue_text(lang, LEAVES_NOTHING_RAW)),
            run_id=None,
            protection_mode=None,
            upload_bytes=None,
            observed_bytes_per_device=None,
            params={},
            aggregator_learns=None,
            keyholder_learns=None,
            extra={},
            model_n_params=None,
            **common,
        )
    p = dict(run.protection)
    rounds = store.list_rounds(run.run_id, limit=500).items
    received = sum(r.received for r in rounds if not r.skipped)
    got = sum(r.bytes_received for r in rounds if not r.skipped)
    mode = p.pop("mode", "plaintext")
    note = i18n.t(lang, "upload.available", run=run.run_id)
    if mode == "plaintext":
        note += " " + i18n.t(lang, "upload.plaintext_warning")
    n_params = run.model.get("n_params")
    return UploadSpec(
        available=True,
        note=note,
        run_id=run.run_id,
        protection_mode=mode,
        upload_bytes=p.pop("upload_bytes", None),
        observed_bytes_per_device=(got / received) if received else None,
        params=p.pop("params", {}) or {},
        aggregator_learns=p.pop("aggregator_learns", None),
        keyholder_learns=p.pop("keyholder_learns", None),
        extra=p,
        model_n_params=n_params if isinstance(n_params, int) else None,
        **common,
    )


def _no_dp(dp: dict[str, Any]) -> bool:
    return str(dp.get("accountant") or "none").lower() == "none" or not dp.get("noise_multiplier")


def build_privacy_budget(
    store: AuditStore, run_id: str | None = None, lang: i18n.Lang = "en"
) -> PrivacyBudget:
    run = _run_for(store, run_id)
    budget = store.privacy_budget(run.run_id) if run else None
    if run is None or budget is None:
        return PrivacyBudget(
            available=False,
            note=i18n.t(lang, "budget.none"),
            run_id=None,
            run_status=None,
            epsilon_spent=None,
            epsilon_aggregator_spent=None,
            target_epsilon=None,
            remaining_epsilon=None,
            delta=None,
            accountant=None,
            noise_multiplier=None,
            clip_norm=None,
            rounds_counted=0,
        )
    if _no_dp(run.dp) and budget["epsilon_spent"] is None:
        note = i18n.t(lang, "budget.no_dp", run=run.run_id)
    else:
        note = i18n.t(
            lang,
            "budget.with_dp",
            run=run.run_id,
            spent=_fmt(budget["epsilon_spent"]),
            spent_aggregator=_fmt(budget["epsilon_aggregator_spent"]),
            target=_fmt(budget["target_epsilon"]),
            delta=_fmt(budget["delta"]),
            accountant=budget["accountant"],
        )
    return PrivacyBudget(available=True, note=note, **budget)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_time(v: datetime | None) -> str:
    return v.strftime("%Y-%m-%d %H:%M UTC") if v else "—"


def _as_float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _feature_groups(card: dict[str, Any]) -> list[FeatureGroupImportance]:
    """Accepts {category: importance} or [{"category": ..., "importance": ...}]; unknown ids are dropped."""
    raw = card.get("feature_group_importance", card.get("feature_groups"))
    pairs: list[tuple[str, float]] = []
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items() if _as_float(v) is not None]
    elif isinstance(raw, list):
        pairs = [
            (str(x.get("category")), x["importance"])
            for x in raw
            if isinstance(x, dict) and _as_float(x.get("importance")) is not None
        ]
    out = [
        FeatureGroupImportance(
            category=c, name_en=BY_ID[c].name_en, name_zh=BY_ID[c].name_zh, importance=float(v)
        )
        for c, v in pairs
        if c in BY_ID
    ]
    return sorted(out, key=lambda g: -g.importance)


def logic_in_plain_words(groups: list[FeatureGroupImportance], lang: i18n.Lang = "en") -> str:
    """GDPR Art. 13(2)(f) text, from the feature specification, the model layout and the tiers."""
    counts = {g: sum(1 for f in fs.FEATURES if f.group == g) for g in ("dynamic", "static", "environment")}
    text = i18n.t(
        lang,
        "logic.base",
        n_features=fs.N_FEATURES,
        n_categories=len(CATEGORIES),
        n_dynamic=counts["dynamic"],
        n_static=counts["static"],
        n_env=counts["environment"],
        hidden=DEFAULT_SPEC.hidden,
        horizon=DEFAULT_SPEC.horizon_days,
        high=HIGH_RISK,
        medium=MEDIUM_RISK,
    )
    if groups:
        sep = "、" if lang == "zh" else ", "
        names = sep.join(g.name_zh if lang == "zh" else g.name_en for g in groups[:3])
        return text + " " + i18n.t(lang, "logic.groups", groups=names)
    return text + " " + i18n.t(lang, "logic.no_groups")


def _metrics(raw: Any) -> EvaluationMetrics:
    raw = raw if isinstance(raw, dict) else {}
    known = set(EvaluationMetrics.model_fields)
    return EvaluationMetrics.model_validate(
        {k: (_as_float(v) if k in known else v) for k, v in raw.items() if isinstance(k, str)}
    )


def build_model_card(store: AuditStore, lang: i18n.Lang = "en") -> ModelCard:
    found = store.latest_model_card()
    policy = build_retention_policy(lang)
    if found is None:
        return ModelCard(
            available=False,
            note=i18n.t(lang, "model.none"),
            run_id=None,
            model_name=None,
            version=None,
            n_params=None,
            training_rounds=None,
            metrics=EvaluationMetrics(),
            baselines={},
            logic_in_plain_words=logic_in_plain_words([], lang),
            feature_groups=[],
            high_risk_threshold=HIGH_RISK,
            retention_policy=policy,
        )
    run, card = found
    groups = _feature_groups(card)
    rounds = card.get("training_rounds")
    if not isinstance(rounds, int) or isinstance(rounds, bool):
        budget = store.privacy_budget(run.run_id)
        rounds = int(budget["rounds_counted"]) if budget else 0
    baselines = card.get("baselines")
    n_params = run.model.get("n_params")
    return ModelCard(
        available=True,
        note=i18n.t(lang, "model.from_run", run=run.run_id, finished=_fmt_time(run.finished_at)),
        run_id=run.run_id,
        model_name=str(run.model.get("name", "")),
        version=str(card.get("version") or run.model.get("version", "")),
        n_params=n_params if isinstance(n_params, int) else None,
        training_rounds=rounds,
        metrics=_metrics(card.get("metrics", run.final_metrics)),
        baselines={str(k): v for k, v in baselines.items() if isinstance(v, dict)}
        if isinstance(baselines, dict)
        else {},
        logic_in_plain_words=logic_in_plain_words(groups, lang),
        feature_groups=groups,
        high_risk_threshold=HIGH_RISK,
        retention_policy=policy,
    )


@lru_cache(maxsize=1)
def static_bodies() -> dict[str, Static]:
    """Catalogue, features and policy serialised once per process (they change only with a deploy)."""
    cats = build_categories()
    out = {"categories": _static(cats), "features": _static(build_features())}
    out["retention_policy"] = _static(build_retention_policy("en"))
    for c in cats.categories:
        out[f"category:{c.id}"] = _static(c)
    return out


# --- the app -----------------------------------------------------------------------------------

DESCRIPTION = """
Read-only transparency API of **fedchurn** for privacy reviewers and data-protection officers.
Everything is derived from the data-category catalogue and the audit log of federated training
runs; nothing is duplicated by hand. A human page for reviewers is at `/v1/reviewer`
(English and Simplified Chinese). Errors are `application/problem+json` (RFC 9457).
Writes (the aggregator's audit records) need `Authorization: Bearer <token>` and are refused with
403 when the server was started without a write token.
"""

TAGS = [
    {"name": "catalogue", "description": "What is collected, why, for how long, and what leaves the device."},
    {"name": "privacy", "description": "What a device uploads, what the servers learn, the DP budget."},
    {"name": "audit", "description": "The audit log of federated training runs and rounds."},
    {"name": "model", "description": "The model card and the retention-policy rules."},
    {"name": "reviewer", "description": "The human page."},
    {"name": "write", "description": "Authenticated writes used by the aggregator."},
    {"name": "meta", "description": "Index and health."},
]

bearer = HTTPBearer(auto_error=False, description="The write token given to `fedchurn serve --writable`.")
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="An ETag from an earlier response; 304 when it matches."),
]
RunIdQuery = Annotated[str | None, Query(max_length=64, description="A run id; default: the latest run.")]
RunIdPath = Annotated[str, Path(max_length=64, description="A run id (from /v1/runs).")]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=500)]


def _fix_problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are problem+json whatever the route's media type; 304 has no body."""
    for path in schema.get("paths", {}).values():
        for op in path.values():
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                if status[:1] in "45" and content:
                    resp["content"] = {PROBLEM_JSON: next(iter(content.values()))}
                if status == "304":
                    resp.pop("content", None)
    comps = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's defaults, replaced by Problem
        if unused in comps and f"#/components/schemas/{unused}" not in json.dumps(schema):
            del comps[unused]
    return schema


def create_app(
    database_url: str,
    write_token: str | None,
    *,
    store: AuditStore | None = None,
    max_body_bytes: int = MAX_WRITE_BODY_BYTES,
) -> FastAPI:
    """The transparency app over the audit database at `database_url` (schema upgraded on creation).

    `write_token` None or empty: read-only, the POST routes answer 403. Token and body size
    (`max_body_bytes`) are checked before a body is read (http_gate.RequestGate).
    """
    audit = store or AuditStore(database_url)
    token = write_token or None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if store is None:
            audit.close()

    app = FastAPI(
        title="fedchurn transparency API",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.store = audit
    app.state.writable = token is not None
    _install_problem_handlers(app)
    static = static_bodies()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = _fix_problem_media_types(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def require_writer(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        """Writes need the configured token; a server without one is read-only (403)."""
        if token is None:
            raise ProblemError(
                403,
                *READ_ONLY,
                "this server was started without a write token; writes are disabled",
            )
        challenge = CHALLENGE
        if creds is None:
            raise ProblemError(
                401,
                *UNAUTHORIZED,
                "a bearer token is required",
                headers={"WWW-Authenticate": challenge},
            )
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise ProblemError(
                401,
                *UNAUTHORIZED,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": challenge + ', error="invalid_token"'},
            )

    # -- meta --

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/reviewer", status_code=307)

    @app.get(PREFIX, response_model=ApiIndex, tags=["meta"], summary="Index of the API")
    async def index() -> ApiIndex:
        """Where to find each answer; the starting point for a reviewer's tooling."""
        return ApiIndex(
            name="fedchurn transparency API",
            version=__version__,
            catalogue_version=CATALOGUE_VERSION,
            writable=token is not None,
            links={
                "categories": f"{PREFIX}/categories",
                "features": f"{PREFIX}/features",
                "upload_spec": f"{PREFIX}/upload-spec",
                "privacy_budget": f"{PREFIX}/privacy-budget",
                "audit_rounds": f"{PREFIX}/audit/rounds",
                "runs": f"{PREFIX}/runs",
                "model_card": f"{PREFIX}/model-card",
                "retention_policy": f"{PREFIX}/retention-policy",
                "reviewer_page": f"{PREFIX}/reviewer",
                "openapi": "/openapi.json",
            },
        )

    @app.get(f"{PREFIX}/health", response_model=Health, tags=["meta"], summary="Liveness")
    async def health() -> Health:
        return Health(status="ok", writable=token is not None, database=audit.dialect)

    # -- catalogue (static, ETag) --

    @app.get(
        f"{PREFIX}/categories",
        response_model=CategoryList,
        tags=["catalogue"],
        summary="The 17 data categories",
        responses=_cached_responses(),
    )
    async def categories(if_none_match: IfNoneMatch = None) -> Response:
        """Every catalogue entry: purposes, legal basis, retention, what leaves the device, features
        fed, and the Apple / Google Play / DPV mapping."""
        s = static["categories"]
        return cached(s.body, if_none_match, etag=s.etag)

    @app.get(
        f"{PREFIX}/categories/{{category_id}}",
        response_model=Category,
        tags=["catalogue"],
        summary="One data category",
        responses=_cached_responses(404, 422),
    )
    async def category(
        category_id: Annotated[
            str,
            Path(
                max_length=64,
                description="A category id.",
                openapi_examples={c.id: {"value": c.id} for c in CATEGORIES[:3]},
            ),
        ],
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        s = static.get(f"category:{category_id}")
        if s is None:
            raise ProblemError(
                404,
                "urn:fedchurn:problem:unknown-category",
                "Unknown data category",
                f"no category {category_id!r}; known: {', '.join(CATEGORY_IDS)}",
            )
        return cached(s.body, if_none_match, etag=s.etag)

    @app.get(
        f"{PREFIX}/features",
        response_model=FeatureSpec,
        tags=["catalogue"],
        summary="The feature specification",
        responses=_cached_responses(),
    )
    async def features(if_none_match: IfNoneMatch = None) -> Response:
        """The 127 features in vector order, with the data categories each is computed from."""
        s = static["features"]
        return cached(s.body, if_none_match, etag=s.etag)

    @app.get(
        f"{PREFIX}/retention-policy",
        response_model=RetentionPolicy,
        tags=["model"],
        summary="Retention-policy rules",
        responses=_cached_responses(),
    )
    async def retention_policy(if_none_match: IfNoneMatch = None) -> Response:
        """The rules the device applies, each with the module its values come from."""
        s = static["retention_policy"]
        return cached(s.body, if_none_match, etag=s.etag)

    # -- derived from the audit log (dynamic) --

    @app.get(
        f"{PREFIX}/upload-spec",
        response_model=UploadSpec,
        tags=["privacy"],
        summary="What a device uploads per round",
        responses=_problems(404, 422, 503),
    )
    def upload_spec(response: Response, run_id: RunIdQuery = None) -> UploadSpec:
        """Size, protection mode, cryptographic parameters, and what the aggregator and the key
        holder can learn, as recorded by the run (default: the latest)."""
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        return build_upload_spec(audit, run_id)

    @app.get(
        f"{PREFIX}/privacy-budget",
        response_model=PrivacyBudget,
        tags=["privacy"],
        summary="Differential-privacy budget",
        responses=_problems(404, 422, 503),
    )
    def privacy_budget(response: Response, run_id: RunIdQuery = None) -> PrivacyBudget:
        """ε spent so far, target ε, δ and the accountant of a run (default: the latest).

        ε is given twice: `epsilon_spent` against anyone outside the aggregator, assuming the
        sampling of devices is secret from them (amplification by sampling), and
        `epsilon_aggregator_spent` against the aggregator, which knows who took part (no
        amplification, every round counted)."""
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        return build_privacy_budget(audit, run_id)

    @app.get(
        f"{PREFIX}/model-card",
        response_model=ModelCard,
        tags=["model"],
        summary="Model card",
        responses=_problems(503),
    )
    def model_card(response: Response) -> ModelCard:
        """Version, rounds, federated evaluation, baselines, the logic in plain words (GDPR Art.
        13(2)(f)), the categories that drive the score and the retention-policy rules."""
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        return build_model_card(audit)

    @app.get(
        f"{PREFIX}/runs",
        response_model=RunPage,
        tags=["audit"],
        summary="Training runs, newest first",
        responses=_problems(422, 503),
    )
    def runs(response: Response, offset: Offset = 0, limit: Limit = 50) -> RunPage:
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        page = audit.list_runs(offset, limit)
        nxt = offset + len(page.items)
        return RunPage(
            total=page.total,
            offset=offset,
            limit=page.limit,
            next_offset=nxt if nxt < page.total and page.items else None,
            items=[to_run_summary(r) for r in page.items],
        )

    @app.get(
        f"{PREFIX}/runs/{{run_id}}",
        response_model=RunDetail,
        tags=["audit"],
        summary="One training run",
        responses=_problems(404, 422, 503),
    )
    def run(run_id: RunIdPath, response: Response) -> RunDetail:
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        found = audit.get_run(run_id)
        if found is None:
            raise UnknownRunError(f"no run {run_id!r}")
        return to_run_detail(found)

    @app.get(
        f"{PREFIX}/audit/rounds",
        response_model=AuditRoundPage,
        tags=["audit"],
        summary="Audit log of training rounds",
        responses=_problems(422, 503),
    )
    def audit_rounds(
        response: Response,
        run_id: Annotated[str | None, Query(max_length=64, description="Only this run.")] = None,
        protection_mode: Annotated[ProtectionMode | None, Query(description="Only this mode.")] = None,
        skipped: Annotated[
            bool | None, Query(description="Only skipped (true) or run (false) rounds.")
        ] = None,
        with_refusals: Annotated[bool | None, Query(description="Only rounds with refused devices.")] = None,
        min_round: Annotated[int | None, Query(ge=0, le=10**9)] = None,
        max_round: Annotated[int | None, Query(ge=0, le=10**9)] = None,
        since: Annotated[Timestamp | None, Query(description="Finished at or after (RFC 3339).")] = None,
        until: Annotated[Timestamp | None, Query(description="Finished before (RFC 3339).")] = None,
        offset: Offset = 0,
        limit: Limit = 50,
    ) -> AuditRoundPage:
        """Time, cohort size, devices refused counted by reason (never named), bytes received,
        protection mode, DP noise and ε spent so far (against outsiders and against the
        aggregator), per round; in run order then round order."""
        response.headers["Cache-Control"] = DYNAMIC_CACHE
        filters = RoundFilters(
            run_id=run_id,
            protection_mode=protection_mode,
            skipped=skipped,
            with_refusals=with_refusals,
            min_round=min_round,
            max_round=max_round,
            since=since,
            until=until,
        )
        page = audit.list_rounds(filters=filters, offset=offset, limit=limit)
        nxt = offset + len(page.items)
        return AuditRoundPage(
            total=page.total,
            offset=offset,
            limit=page.limit,
            next_offset=nxt if nxt < page.total and page.items else None,
            items=[to_audit_round(r) for r in page.items],
        )

    # -- the human page --

    @app.get(
        f"{PREFIX}/reviewer",
        response_class=HTMLResponse,
        response_model=None,
        tags=["reviewer"],
        summary="The reviewer page (HTML)",
        responses={
            200: {"headers": {**_ETAG_HEADERS, "Content-Language": {"schema": {"type": "string"}}}},
            304: {"description": "Not modified.", "headers": _ETAG_HEADERS},
            **_problems(422, 503),
        },
    )
    def reviewer(
        request: Request,
        lang: Annotated[
            i18n.Lang | None, Query(description="Page language; default from Accept-Language, else en.")
        ] = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        """All of the above on one server-rendered page, in English or Simplified Chinese."""
        from fedchurn.server.reviewer_page import ReviewerData, render

        chosen = i18n.negotiate(lang, request.headers.get("accept-language"))
        latest = audit.latest_run()
        runs = audit.list_runs(0, 20)
        data = ReviewerData(
            categories=build_categories(),
            features=build_features(),
            upload=build_upload_spec(audit, None, chosen),
            budget=build_privacy_budget(audit, None, chosen),
            card=build_model_card(audit, chosen),
            latest_run=to_run_summary(latest) if latest else None,
            rounds=[to_audit_round(r) for r in audit.list_rounds(latest.run_id, limit=200).items]
            if latest
            else [],
            rounds_total=latest.rounds_recorded if latest else 0,
            runs=[to_run_summary(r) for r in runs.items],
            runs_total=runs.total,
            api_prefix=PREFIX,
        )
        body = render(data, chosen).encode()
        return cached(
            body,
            if_none_match,
            media_type="text/html; charset=utf-8",
            cache_control=DYNAMIC_CACHE,
            headers={"Content-Language": i18n.HTML_LANG[chosen], "Vary": "Accept-Language"},
        )

    # -- writes (the aggregator) --

    write_errors = _problems(400, 401, 403, 404, 409, 413, 422, 503)

    @app.post(
        f"{PREFIX}/runs",
        response_model=RunDetail,
        status_code=201,
        tags=["write"],
        summary="Start a run (aggregator)",
        responses=_problems(400, 401, 403, 413, 422, 503),
        dependencies=[Depends(require_writer)],
    )
    def start_run(body: RunStartIn, response: Response) -> RunDetail:
        rid = audit.start_run(
            body.config,
            body.protection.model_dump(),
            body.dp.model_dump(),
            body.model.model_dump(),
        )
        response.headers["Location"] = f"{PREFIX}/runs/{rid}"
        found = audit.get_run(rid)
        assert found is not None
        return to_run_detail(found)

    @app.post(
        f"{PREFIX}/runs/{{run_id}}/rounds",
        response_model=AuditRound,
        status_code=201,
        tags=["write"],
        summary="Record one round (aggregator)",
        responses=write_errors,
        dependencies=[Depends(require_writer)],
    )
    def record_round(run_id: RunIdPath, body: RoundIn) -> AuditRound:
        """Idempotent per (run, round): a second write of the same round is refused with 409."""
        return to_audit_round(audit.record_round_in(run_id, body))

    @app.post(
        f"{PREFIX}/runs/{{run_id}}/finish",
        response_model=RunDetail,
        tags=["write"],
        summary="Finish a run with its model card (aggregator)",
        responses=write_errors,
        dependencies=[Depends(require_writer)],
    )
    def finish_run(run_id: RunIdPath, body: RunFinishIn) -> RunDetail:
        return to_run_detail(audit.finish_run(run_id, body.status, body.final_metrics, body.model_card))

    # Every POST is a write (the three above); the gate checks the token before the body is read.
    app.add_middleware(
        RequestGate,
        max_body_bytes=max_body_bytes,
        token=token,
        protected=lambda method, _path: method == "POST",
        problem=gate_problem,
        challenge=CHALLENGE,
    )
    return app
