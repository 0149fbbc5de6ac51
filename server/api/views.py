"""What the API shows, built from its owners: the catalogue, the feature specification, the policy's
own config, and the audit log. No route logic here; routers call these."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from functools import lru_cache
from typing import Any

from fedchurn.client.policy import PolicyConfig
from fedchurn.client.signals import SignalThresholds
from fedchurn.server import i18n
from fedchurn.server.api.caching import Static, static_of
from fedchurn.server.api_models import (
    PROTECTION_MODES,
    AuditRound,
    Category,
    CategoryList,
    EvaluationMetrics,
    Feature,
    FeatureGroupImportance,
    FeatureSpec,
    ModeExplanation,
    ModelCard,
    PolicyRule,
    PrivacyBudget,
    RetentionPolicy,
    RunDetail,
    RunSummary,
    UploadSpec,
)
from fedchurn.server.audit import (
    AuditStore,
    RoundRecord,
    RunRecord,
    UnknownRunError,
)
from fedchurn.server.catalogue_zh import catalogue_text
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
from fedchurn.shared.protection import PLAINTEXT, SCHEMES

RECALL_RULES_SOURCE = "fedchurn.client.policy.PolicyConfig"  # the on-device engine owns the recall rules
SIGNALS_SOURCE = "fedchurn.client.signals.SignalThresholds"
TIERS_SOURCE = "fedchurn.shared.model_format"

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


# What each party learns in one run, by its mode and whether DP noise is added: the mode's own text
# (i18n `mode.*`) and one sentence on the noise (i18n `noise.*`). The aggregator's declaration
# (`PARTY_VIEWS` in shared/protection.py) describes every scheme at once (the noisy sum, CKKS); a
# reviewer asks about this run (review 21).


def _noise_multiplier(run: RunRecord) -> float:
    """The run's training noise multiplier (0: no DP noise), from its DP record, else its parameters."""
    for source in (run.dp, run.protection.get("params") or {}):
        z = source.get("noise_multiplier") if isinstance(source, dict) else None
        if isinstance(z, int | float) and not isinstance(z, bool):
            return float(z)
    return 0.0


def party_views(mode: str, noise_multiplier: float, lang: i18n.Lang = "en") -> tuple[str, str]:
    """(what the aggregator learns, what the key holder learns) in a run of `mode` with that noise."""
    aggregator = i18n.t(lang, f"mode.{mode}.aggregator")
    keyholder = i18n.t(lang, f"mode.{mode}.keyholder")
    if not SCHEMES.get(mode, PLAINTEXT).private:  # no key holder, no noise: every update in the clear
        return aggregator, keyholder
    z = f"{noise_multiplier:.4g}"
    noised = noise_multiplier > 0
    held = f"noise.{mode}.keyholder.noised" if noised else "noise.keyholder.exact"
    sep = "" if lang == "zh" else " "
    return (
        aggregator + sep + i18n.t(lang, f"noise.aggregator.{'noised' if noised else 'exact'}", z=z),
        keyholder + sep + i18n.t(lang, held, z=z),
    )


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
    received, got = store.training_uploads(run.run_id)
    mode = p.pop("mode", "plaintext")
    p.pop("aggregator_learns", None)  # the run's declaration stays in /v1/runs/{run_id}
    p.pop("keyholder_learns", None)
    aggregator_learns, keyholder_learns = party_views(mode, _noise_multiplier(run), lang)
    note = i18n.t(lang, "upload.available", run=run.run_id)
    if not SCHEMES.get(mode, PLAINTEXT).private:  # an unknown mode is not presented as private
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
        aggregator_learns=aggregator_learns,
        keyholder_learns=keyholder_learns,
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
    """GDPR Art. 13(2)(f) text, from the feature specification, the model layout and the tiers. It
    describes the default model, whose inputs are the first `DEFAULT_SPEC.n_features` features (the
    catalogue declares more, for extended models)."""
    inputs = fs.FEATURES[: DEFAULT_SPEC.n_features]
    counts = {g: sum(1 for f in inputs if f.group == g) for g in ("dynamic", "static", "environment")}
    text = i18n.t(
        lang,
        "logic.base",
        n_features=DEFAULT_SPEC.n_features,
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
    out = {"categories": static_of(cats), "features": static_of(build_features())}
    out["retention_policy"] = static_of(build_retention_policy("en"))
    for c in cats.categories:
        out[f"category:{c.id}"] = static_of(c)
    return out
