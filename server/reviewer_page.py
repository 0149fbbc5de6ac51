"""The reviewer page: the API's answers as one server-rendered HTML page, no build step, no JS.

It renders the same pydantic models the JSON routes return (so the page cannot disagree with the
API), with `string.Template` and `html.escape`: no template engine to install or to audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, partial
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from fedchurn import __version__
from fedchurn.server import i18n
from fedchurn.server.api_models import (
    AuditRound,
    CategoryList,
    FeatureSpec,
    ModelCard,
    PrivacyBudget,
    RunSummary,
    UploadSpec,
)
from fedchurn.server.catalogue_zh import catalogue_text
from fedchurn.server.i18n import Lang, t
from fedchurn.shared.protection import PLAINTEXT, SCHEMES

TEMPLATES = Path(__file__).resolve().parent / "templates"
SECTIONS = ("categories", "upload", "server", "budget", "audit", "model", "policy", "features")
METRICS = ("roc_auc", "pr_auc", "lift_top_decile", "calibration_error", "concordance")


@dataclass(frozen=True)
class ReviewerData:
    categories: CategoryList
    features: FeatureSpec
    upload: UploadSpec
    budget: PrivacyBudget
    card: ModelCard
    latest_run: RunSummary | None
    rounds: list[AuditRound]
    rounds_total: int
    runs: list[RunSummary] = field(default_factory=list)  # newest first
    runs_total: int = 0
    api_prefix: str = "/v1"


@lru_cache(maxsize=4)
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _e(v: Any) -> str:
    return escape("—" if v is None else str(v))


def _num(v: float | int | None, fmt: str = "{:,.4g}") -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    return fmt.format(v)


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Headers are escaped here; cells arrive as HTML (escaped by the caller)."""
    cls = classes or [""] * len(headers)
    head = "".join(f"<th scope='col'>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{c}'>{cell}</td>" if c else f"<td>{cell}</td>"
            for c, cell in zip(cls, r, strict=True)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(href: str) -> str:
    return f"<a href='{escape(href)}'><code>{escape(href)}</code></a>"


def _section(key: str, lang: Lang, inner: str) -> str:
    return f"<section id='{key}'><h2>{escape(t(lang, 'nav.' + key))}</h2>{inner}</section>"


def _categories(d: ReviewerData, lang: Lang) -> str:
    cats = d.categories.categories
    # Values every category shares are shown once above the table, so each row shows what differs.
    leaves_common = len({c.leaves_device for c in cats}) == 1
    fields_common = len({tuple(c.recorded_fields) for c in cats}) == 1
    sep = "、" if lang == "zh" else ", "
    rows = []
    for c in cats:
        name, other = (c.name_zh, c.name_en) if lang == "zh" else (c.name_en, c.name_zh)
        purposes = "<br>".join(
            f"<abbr title='{_e(t(lang, 'purpose.' + p.id))}'>{_e(t(lang, 'purpose_short.' + p.id))}</abbr>"
            for p in c.purposes
        )
        tr = partial(catalogue_text, lang)  # the catalogue's English, in the page's language
        actions = ", ".join(f"<code>{_e(a.name)}</code> ({_e(tr(a.value))})" for a in c.actions)
        labels = (
            f"{_e(c.apple_privacy_label)}<br>{_e(c.google_data_safety)}<br>"
            f"<a href='{_e(c.dpv_category)}'>{_e(c.dpv_category.rsplit('#', 1)[-1])}</a>"
        )
        feats = (
            f"<details><summary>{len(c.features_fed)}</summary>"
            + ", ".join(f"<code>{_e(f)}</code>" for f in c.features_fed)
            + "</details>"
        )
        row = [
            str(c.number),
            f"<strong class='cat-name'>{_e(name)}</strong><br><span class='small'>{_e(other)} · "
            f"<code>{_e(c.id)}</code></span>",
            f"{_e(tr(c.description))}<br><span class='small'>{actions}</span>"
            + (
                ""
                if fields_common
                else f"<br><span class='small'>{_e(sep.join(map(tr, c.recorded_fields)))}</span>"
            ),
            _e(sep.join(map(tr, c.never_recorded))),
            purposes,
            f"<span class='small'>{_e(tr(c.legal_basis))}</span>",
            escape(t(lang, "cat.days", n=c.retention_days)),
        ]
        if not leaves_common:
            row.append(f"<span class='small'>{_e(tr(c.leaves_device))}</span>")
        rows.append([*row, labels, feats])
    keys = ["number", "name", "description", "never", "purposes", "legal", "retention"]
    keys += [] if leaves_common else ["leaves"]
    keys += ["labels", "features"]
    classes = ["num"] + [""] * (len(keys) - 1)
    common = ""
    if leaves_common:
        leaves = catalogue_text(lang, cats[0].leaves_device)
        common += f"<dt>{_e(t(lang, 'cat.col.leaves'))}</dt><dd>{_e(leaves)}</dd>"
    if fields_common:
        fields = sep.join(catalogue_text(lang, f) for f in cats[0].recorded_fields)
        common += f"<dt>{_e(t(lang, 'cat.fields'))}</dt><dd>{_e(fields)}</dd>"
    used = dict.fromkeys(p.id for c in cats for p in c.purposes)
    legend = "".join(
        f"<dt>{_e(t(lang, 'purpose_short.' + pid))}</dt><dd>{_e(t(lang, 'purpose.' + pid))}</dd>"
        for pid in used
    )
    return (
        f"<h3>{_e(t(lang, 'cat.heading', n=d.categories.count))}</h3>"
        f"<p>{_e(t(lang, 'cat.lead', version=d.categories.catalogue_version))} "
        f"{_link(d.api_prefix + '/categories')}</p>"
        f"<dl class='note'>{common}{legend}</dl>"
        + _table([t(lang, f"cat.col.{k}") for k in keys], rows, classes)
    )


def _upload(d: ReviewerData, lang: Lang) -> str:
    u = d.upload
    out = f"<p class='note'>{_e(u.note)}</p>"
    if u.protection_mode is not None and not SCHEMES.get(u.protection_mode, PLAINTEXT).private:
        out = f"<p class='warning'>{_e(t(lang, 'upload.plaintext_warning'))}</p>" + out
    out += "<dl>"
    out += f"<dt>{_e(t(lang, 'upload.raw'))}</dt>"
    out += f"<dd>{_e(t(lang, 'upload.no'))} — {_e(catalogue_text(lang, u.what_leaves_device))}</dd>"
    if u.available:
        out += f"<dt>{_e(t(lang, 'upload.mode'))}</dt><dd><code>{_e(u.protection_mode)}</code></dd>"
        out += f"<dt>{_e(t(lang, 'upload.bytes'))}</dt><dd>{_num(u.upload_bytes)}</dd>"
        observed = _num(u.observed_bytes_per_device, "{:,.0f}")
        out += f"<dt>{_e(t(lang, 'upload.observed'))}</dt><dd>{observed}</dd>"
        out += f"<dd class='small'>{_e(t(lang, 'upload.observed_why'))}</dd>"
        table = _params_table(u.protection_mode or "", u.params, u.extra)
        out += f"<dt>{_e(t(lang, 'upload.params'))}</dt><dd>{table}</dd>"
    out += "</dl>"
    return out + f"<p>{_link(d.api_prefix + '/upload-spec')}</p>"


# The parameters that mean something in each mode; the others are shown in the API, not here.
MODE_PARAMS: dict[str, tuple[str, ...]] = {
    "secagg": ("coords_per_round", "quant_bits", "ring_bits", "clip_norm", "coord_clip_factor",
               "noise_multiplier", "max_cohort", "k_min", "max_upload_bytes"),
    "ckks": ("ckks_poly_modulus", "ckks_coeff_mod_bits", "ckks_scale_bits", "clip_norm",
             "noise_multiplier", "max_cohort", "k_min", "max_upload_bytes"),
    "plaintext": ("clip_norm",),
}  # fmt: skip


def _params_table(mode: str, params: dict[str, Any], extra: dict[str, Any]) -> str:
    """The cryptographic parameters of the mode in use, one row each, then what the run adds."""
    shown = {k: params[k] for k in MODE_PARAMS.get(mode, tuple(params)) if k in params}
    shown.update(extra)
    rows = [[f"<code>{_e(k)}</code>", _e(v)] for k, v in shown.items()]
    return _table(["", ""], rows, ["", "num"])


def _server(d: ReviewerData, lang: Lang) -> str:
    u = d.upload
    out = ""
    if u.available:
        out += (
            f"<dl><dt>{_e(t(lang, 'server.aggregator'))}</dt><dd>{_e(u.aggregator_learns)}</dd>"
            f"<dt>{_e(t(lang, 'server.keyholder'))}</dt><dd>{_e(u.keyholder_learns)}</dd></dl>"
        )
    rows = [
        [f"<code>{_e(m.mode)}</code>", _e(m.summary), _e(m.aggregator_learns), _e(m.keyholder_learns)]
        for m in u.modes
    ]
    out += _table(
        [t(lang, "upload.mode"), "", t(lang, "server.aggregator"), t(lang, "server.keyholder")], rows
    )
    return out + f"<p class='note'>{_e(t(lang, 'server.never'))}</p>"


def _budget(d: ReviewerData, lang: Lang) -> str:
    b = d.budget
    out = f"<p class='note'>{_e(b.note)}</p>"
    if b.available:
        items = [
            ("budget.spent", _num(b.epsilon_spent)),
            ("budget.spent_aggregator", _num(b.epsilon_aggregator_spent)),
            ("budget.target", _num(b.target_epsilon)),
            ("budget.remaining", _num(b.remaining_epsilon)),
            ("budget.delta", _num(b.delta)),
            ("budget.accountant", _e(b.accountant)),
            ("budget.mechanism", _e(b.mechanism)),
            ("budget.noise", _num(b.noise_multiplier)),
            ("budget.clip", _num(b.clip_norm)),
            ("budget.rounds", _num(b.rounds_counted)),
            ("budget.eval_noise", _num(b.evaluation_noise_multiplier)),
            ("budget.eval_epsilon", _num(b.evaluation_epsilon_per_run)),
        ]
        out += "<dl>" + "".join(f"<dt>{_e(t(lang, k))}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
        out += f"<p class='small'>{_e(t(lang, 'budget.two_epsilons'))}</p>"
    return out + f"<p>{_link(d.api_prefix + '/privacy-budget')}</p>"


def _audit(d: ReviewerData, lang: Lang) -> str:
    run = d.latest_run
    if run is None or not d.rounds:
        return (
            f"<p class='note'>{_e(t(lang, 'audit.none'))}</p><p>{_link(d.api_prefix + '/audit/rounds')}</p>"
        )
    runs = _runs(d, lang)
    api = f"{d.api_prefix}/audit/rounds?run_id={run.run_id}"
    lead = t(
        lang,
        "audit.lead",
        run=run.run_id,
        status=run.status,
        shown=len(d.rounds),
        total=d.rounds_total,
        api="",
    )
    rows = []
    for r in d.rounds:
        refused = "; ".join(f"{x.reason} ×{x.count}" for x in r.refused)  # counts: no device is named
        if r.skipped:
            refused = t(lang, "audit.skipped", reason=r.skip_reason or "—") + (
                f"; {refused}" if refused else ""
            )
        rows.append(
            [
                str(r.round),
                _e(r.finished_at.strftime("%Y-%m-%d %H:%M:%S")),
                _num(r.sampled),
                _num(r.received),
                f"{r.refused_count}" + (f" <span class='small'>({_e(refused)})</span>" if refused else ""),
                _num(r.bytes_received),
                f"<code>{_e(r.protection_mode)}</code>",
                _num(r.dp_noise_std),
                _num(r.epsilon_spent),
                _num(r.epsilon_aggregator),
            ]
        )
    keys = ("round", "time", "cohort", "received", "refused", "bytes", "mode", "noise", "epsilon")
    headers = [t(lang, f"audit.col.{k}") for k in (*keys, "epsilon_aggregator")]
    classes = ["num", "", "num", "num", "", "num", "", "num", "num", "num"]
    return runs + f"<p>{_e(lead)}{_link(api)}</p>" + _table(headers, rows, classes)


def _runs(d: ReviewerData, lang: Lang) -> str:
    """Every recorded run, newest first: a reviewer sees that the latest run is not the only one."""
    rows = [
        [
            f"<code>{_e(r.run_id)}</code>",
            _e(r.started_at.strftime("%Y-%m-%d %H:%M")),
            _e(r.status),
            f"<code>{_e(r.protection_mode)}</code>",
            _num(r.rounds_recorded),
            _num(r.epsilon_spent),
            _num(r.epsilon_aggregator_spent),
        ]
        for r in d.runs
    ]
    keys = ("run", "started", "status", "mode", "rounds", "epsilon", "epsilon_aggregator")
    headers = [t(lang, f"runs.col.{k}") for k in keys]
    lead = t(lang, "runs.lead", n=d.runs_total, shown=len(d.runs))
    return (
        f"<h3>{_e(t(lang, 'runs.heading'))}</h3><p>{_e(lead)} {_link(d.api_prefix + '/runs')}</p>"
        + _table(headers, rows, ["", "", "", "", "num", "num", "num"])
    )


def _model(d: ReviewerData, lang: Lang) -> str:
    c = d.card
    out = ""
    if not c.available:
        out += f"<p class='note'>{_e(c.note)}</p>"
    else:
        out += (
            f"<dl><dt>{_e(t(lang, 'model.version'))}</dt><dd>{_e(c.model_name)} {_e(c.version)} "
            f"<span class='small'>({_e(c.note)})</span></dd>"
            f"<dt>{_e(t(lang, 'model.rounds'))}</dt><dd>{_num(c.training_rounds)}</dd></dl>"
        )
        metrics = c.metrics.model_dump()
        names = ["", *(t(lang, f"model.metric.{m}") for m in METRICS)]
        rows = [[_e(t(lang, "model.metrics")), *(_num(_f(metrics.get(m))) for m in METRICS)]]
        rows += [[_e(name), *(_num(_f(b.get(m))) for m in METRICS)] for name, b in c.baselines.items()]
        out += _table(names, rows, ["", *["num"] * len(METRICS)])
    out += f"<h3>{_e(t(lang, 'model.logic'))}</h3><p>{_e(c.logic_in_plain_words)}</p>"
    if c.feature_groups:
        top = max(g.importance for g in c.feature_groups) or 1.0
        items = "".join(
            f"<li>{_e(g.name_zh if lang == 'zh' else g.name_en)} <code>{_e(g.category)}</code> "
            f"<span class='bar' style='width:{max(0.0, g.importance / top) * 12:.2f}rem'></span> "
            f"{g.importance:.3f}</li>"
            for g in c.feature_groups
        )
        out += f"<h3>{_e(t(lang, 'model.groups'))}</h3><ol>{items}</ol>"
    return out + f"<p>{_link(d.api_prefix + '/model-card')}</p>"


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _policy(d: ReviewerData, lang: Lang) -> str:
    items = "".join(
        f"<li>{_e(r.description)} <span class='small'>({_e(t(lang, 'policy.source'))}: "
        f"<code>{_e(r.source)}</code>)</span></li>"
        for r in d.card.retention_policy.rules
    )
    return f"<ul>{items}</ul><p>{_link(d.api_prefix + '/retention-policy')}</p>"


def _features(d: ReviewerData, lang: Lang) -> str:
    rows = [
        [str(f.index), f"<code>{_e(f.name)}</code>", _e(f.group), _e(", ".join(f.categories)), _e(f.formula)]
        for f in d.features.features
    ]
    headers = ["#", *(t(lang, f"features.col.{k}") for k in ("name", "group", "categories", "formula"))]
    return (
        f"<p>{_e(t(lang, 'features.lead', n=d.features.n_features))} {_link(d.api_prefix + '/features')}</p>"
        f"<details><summary>{_e(t(lang, 'features.heading'))}</summary>"
        + _table(headers, rows, ["num", "", "", "", ""])
        + "</details>"
    )


_RENDER = {
    "categories": _categories,
    "upload": _upload,
    "server": _server,
    "budget": _budget,
    "audit": _audit,
    "model": _model,
    "policy": _policy,
    "features": _features,
}


def render(d: ReviewerData, lang: Lang) -> str:
    """The whole page in `lang`; every value is escaped."""
    other: Lang = "en" if lang == "zh" else "zh"
    nav = "".join(f"<li><a href='#{k}'>{escape(t(lang, 'nav.' + k))}</a></li>" for k in SECTIONS)
    sections = "\n".join(_section(k, lang, _RENDER[k](d, lang)) for k in SECTIONS)
    return Template(_template("reviewer.html")).substitute(
        html_lang=i18n.HTML_LANG[lang],
        title=escape(t(lang, "page.title")),
        css=_template("reviewer.css"),
        other_lang_href=f"?lang={other}",
        other_lang_code=i18n.HTML_LANG[other],
        other_lang_label=escape(t(lang, "page.other_lang")),
        intro=escape(t(lang, "page.intro", api=d.api_prefix)),
        nav=nav,
        sections=sections,
        version=escape(__version__),
        catalogue_version=escape(d.categories.catalogue_version),
    )
