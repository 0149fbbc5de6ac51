"""Calibration report of a written population: does it behave the way the brief says real users do?

Computed from `events.parquet` + `truth.parquet` with numpy only (no client code), so the figures
check the data, not the feature pipeline. Each brief figure is measured for churners in the days
before `churn_day` and, as a placebo, for non-churners before a reference day: a signal that fires
as often for the placebo would be useless to a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.output_paths import check_out_dir
from fedchurn.shared.catalogue import CATEGORY_IDS

Array = np.ndarray

MIN_HISTORY_DAYS = 14  # days of history before the pre-churn window needed to measure a drop
SILENCE_DAYS = 3  # a "silence" is at least this many days without a session
CHURN_SILENCE_DAYS = 14

# name -> (target, tolerance or bound, kind); kind "abs" = |measured - target| <= tol, "min" = >= target.
TOLERANCES = {
    "private_messages_drop": 0.10,
    "profile_updates_drop": 0.10,
    "segment_mix": 0.03,
    "placebo_drop": 0.15,
}
CONTENT_STREAK_MIN_SHARE = 0.70
CART_STREAK_MIN_SHARE = 0.60
REPEAT_VIEW_MIN_RATIO = 2.0
CHURN_RATE_BAND = (0.10, 0.45)


@dataclass
class _Data:
    n: int
    days: int
    first_day: int
    seg: Array
    seg_names: list[str]
    start: Array  # day index of first history day
    churn: Array  # day index of churn, -1 none
    no_warning: Array
    new_user: Array
    cause: Array
    cause_names: list[str]
    quiet_kind: list[list[str]]
    quiet_start: list[list[int]]
    daily: dict[str, Array]  # (n, days) float arrays
    n_events: int
    meta: dict[str, Any]


def _dict_codes(col: Any) -> tuple[Array, list[str]]:
    """Indices and dictionary of a (possibly chunked) dictionary column."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    return arr.indices.to_numpy(zero_copy_only=False), [str(x) for x in arr.dictionary.to_pylist()]


class PopulationInputError(ValueError):
    """A population folder the report cannot read; the message names the file and what is wrong."""


POPULATION_FILES = ("events.parquet", "truth.parquet", "scenario.json")
# Columns the report reads, each with the kinds of Arrow type it can use.
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "device": ("integer",),
    "ts": ("integer",),
    "tz_min": ("integer",),
    "category": ("string",),
    "action": ("string",),
    "value": ("integer", "floating"),
}
TRUTH_READ: dict[str, tuple[str, ...]] = {
    "device": ("integer",),
    "segment": ("string",),
    "cause": ("string",),
    "churn_day": ("integer", "floating"),
    "start_day": ("integer",),
    "no_warning": ("boolean",),
    "new_user": ("boolean",),
    "quiet_kind": ("list",),
    "quiet_start": ("list",),
}
META_INTS = ("seed", "n_devices", "days", "start_day", "today")
DECAY_NUMBERS = (
    "window_days",
    "content_threshold",
    "content_days",
    "cart_abandon_streak",
    "private_messages_drop",
    "profile_updates_drop",
)


def _kind(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    for kind, test in (
        ("boolean", pa.types.is_boolean),
        ("integer", pa.types.is_integer),
        ("floating", pa.types.is_floating),
        ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
        ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x)),
    ):
        if test(t):
            return kind
    return str(t)


def _check_parquet(path: Path, wanted: dict[str, tuple[str, ...]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise PopulationInputError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise PopulationInputError(
            f"{path}: missing column(s) {', '.join(missing)} (it has: {', '.join(schema.names) or 'none'})"
        )
    wrong = [
        f"{c} is {schema.field(c).type}, not {' or '.join(kinds)}"
        for c, kinds in wanted.items()
        if _kind(schema.field(c).type) not in kinds
    ]
    if wrong:
        raise PopulationInputError(f"{path}: wrong column type(s): {'; '.join(wrong)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_population(pop_dir: Path) -> dict[str, Any]:
    """Read what the report needs of a population folder before any work: the three files exist,
    scenario.json is the JSON object `write_population` writes, and both Parquet files are
    readable with the columns (and column types) the report reads. Returns scenario.json's content;
    PopulationInputError names the file and what is wrong."""
    pop_dir = Path(pop_dir)
    if not pop_dir.is_dir():
        what = "a file" if pop_dir.exists() else "no such folder"
        raise PopulationInputError(f"{pop_dir} is not a population folder ({what})")
    missing = [n for n in POPULATION_FILES if not (pop_dir / n).is_file()]
    if missing:
        raise PopulationInputError(f"{pop_dir} is not a population folder (missing {', '.join(missing)})")
    path = pop_dir / "scenario.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PopulationInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise PopulationInputError(
            f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
        ) from None
    except OSError as e:
        raise PopulationInputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise PopulationInputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    bad = [k for k in META_INTS if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool)]
    sc = meta.get("scenario")
    dec = sc.get("decay") if isinstance(sc, dict) else None
    if not isinstance(sc, dict):
        bad.append("scenario (an object)")
    elif not isinstance(dec, dict):
        bad.append("scenario.decay (an object)")
    else:
        bad += [f"scenario.decay.{k}" for k in DECAY_NUMBERS if not _is_number(dec.get(k))]
        if not isinstance(sc.get("segments"), dict):
            bad.append("scenario.segments (an object)")
    if bad:
        raise PopulationInputError(f"{path}: missing or wrong key(s): {', '.join(bad)} (numbers unless said)")
    if meta["days"] < 1:
        raise PopulationInputError(f"{path}: days is {meta['days']}; a population has at least one day")
    _check_parquet(pop_dir / "truth.parquet", TRUTH_READ)
    _check_parquet(pop_dir / "events.parquet", EVENT_COLUMNS)
    return meta


def _read_table(path: Path, columns: list[str] | None = None) -> Any:
    """A Parquet file whose footer read but whose data does not is named as well."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise PopulationInputError(f"{path}: not a readable Parquet file ({e})") from None


def _load(pop_dir: Path) -> _Data:
    meta = check_population(pop_dir)
    days = int(meta["days"])
    first_day = int(meta["start_day"])
    truth = _read_table(pop_dir / "truth.parquet")
    dev_t = truth["device"].to_numpy()
    n = len(dev_t)
    seg, seg_names = _dict_codes(truth["segment"])
    cause, cause_names = _dict_codes(truth["cause"])
    churn_day = truth["churn_day"].to_numpy(zero_copy_only=False)
    churn_day = (
        np.where(np.isnan(churn_day), -1, churn_day).astype(np.int64)
        if churn_day.dtype.kind == "f"
        else churn_day
    )
    churn = np.where(churn_day >= 0, churn_day - first_day, -1)
    start = truth["start_day"].to_numpy() - first_day

    ev = _read_table(pop_dir / "events.parquet", columns=list(EVENT_COLUMNS))
    dev = ev["device"].to_numpy()
    row = np.searchsorted(dev_t, dev)
    day = (ev["ts"].to_numpy() + ev["tz_min"].to_numpy().astype(np.int64) * 60) // 86_400 - first_day
    cat_codes, cat_dict = _dict_codes(ev["category"])
    act_codes, act_dict = _dict_codes(ev["action"])
    value = ev["value"].to_numpy()
    del ev
    flat = row * days + day
    cat_of = {name: i for i, name in enumerate(cat_dict)}
    act_of = {name: i for i, name in enumerate(act_dict)}

    def count(mask: Array, weights: Array | None = None) -> Array:
        w = None if weights is None else weights[mask]
        return np.bincount(flat[mask], weights=w, minlength=n * days).reshape(n, days).astype(np.float64)

    def cat_mask(name: str) -> Array:
        return cat_codes == cat_of.get(name, -1)

    def act_mask(name: str) -> Array:
        return act_codes == act_of.get(name, -1)

    daily = {
        "sessions": count(cat_mask("sessions")),
        "private_messages": count(cat_mask("private_messages")),
        "profile_updates": count(cat_mask("profile_updates")),
        "content_minutes": count(cat_mask("content_consumption"), value),
        "cart_abandon": count(act_mask("cart_abandon")),
        "buy": count(act_mask("checkout") | cat_mask("purchases")),
        "product_view_repeat": count(act_mask("product_view_repeat")),
        "discount_ended": count(act_mask("discount_ended")),
    }
    assert all(c in CATEGORY_IDS for c in cat_dict)
    qk = truth["quiet_kind"].to_pylist()
    qs = truth["quiet_start"].to_pylist()
    return _Data(
        n=n,
        days=days,
        first_day=first_day,
        seg=seg,
        seg_names=seg_names,
        start=start,
        churn=churn,
        no_warning=truth["no_warning"].to_numpy(zero_copy_only=False),
        new_user=truth["new_user"].to_numpy(zero_copy_only=False),
        cause=cause,
        cause_names=cause_names,
        quiet_kind=[list(x or []) for x in qk],
        quiet_start=[[int(v) - first_day for v in (x or [])] for x in qs],
        daily=daily,
        n_events=len(dev),
        meta=meta,
    )


def _cumsum(x: Array) -> Array:
    return np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)], axis=1)


def _window_sums(cs: Array, rows: Array, lo: Array, hi: Array) -> Array:
    return cs[rows, hi] - cs[rows, lo]


def _reference(d: _Data, W: int) -> tuple[Array, Array, Array]:
    """Eligible churners (window in history, enough earlier days) and placebo rows with a reference day."""
    rows = np.arange(d.n)
    ref = d.churn.copy()
    churner = (d.churn >= 0) & (d.churn <= d.days) & (d.churn - W - d.start >= MIN_HISTORY_DAYS)
    never = d.churn < 0
    placebo_ref = d.days - (rows * 7919 % 21)  # a spread of reference days in the last three weeks
    ref = np.where(never, placebo_ref, ref)
    placebo = never & (ref - W - d.start >= MIN_HISTORY_DAYS)
    return churner, placebo, ref


def _drop(d: _Data, channel: str, rows: Array, ref: Array, W: int) -> dict[str, Any]:
    """Pooled drop of a channel in the W days before `ref` vs the user's earlier W-day mean."""
    if rows.size == 0:
        return {"users": 0, "drop": None}
    cs = _cumsum(d.daily[channel])
    last = _window_sums(cs, rows, ref[rows] - W, ref[rows])
    n_e = ref[rows] - W - d.start[rows]
    earlier = _window_sums(cs, rows, d.start[rows], ref[rows] - W) / n_e * W
    ok = earlier > 0
    if not ok.any():
        return {"users": 0, "drop": None}
    per_user = 1.0 - last[ok] / earlier[ok]
    return {
        "users": int(ok.sum()),
        "drop": float(1.0 - last[ok].sum() / earlier[ok].sum()),
        "median_user_drop": float(np.median(per_user)),
        "last_window_total": float(last[ok].sum()),
        "earlier_window_mean_total": float(earlier[ok].sum()),
    }


def _content_streak(d: _Data, rows: Array, ref: Array, threshold: float, lookback: int = 21) -> Array:
    """Consecutive days up to ref-1 with content minutes < threshold x mean of all previous days."""
    x = d.daily["content_minutes"]
    cs = _cumsum(x)
    ks = np.arange(1, lookback + 1)
    t = ref[rows, None] - ks[None, :]  # ref-1, ref-2, ...
    prev_n = t - d.start[rows, None]
    valid = prev_n > 0
    t_c = np.clip(t, 0, d.days - 1)
    prev_mean = (cs[rows[:, None], np.clip(t, 0, d.days)] - cs[rows, d.start[rows]][:, None]) / np.maximum(
        prev_n, 1
    )
    below = valid & (x[rows[:, None], t_c] < threshold * prev_mean)
    return np.cumprod(below, axis=1).sum(axis=1)


def _cart_streak(d: _Data, rows: Array, ref: Array) -> tuple[Array, Array]:
    """Abandoned carts after the last checkout/purchase up to ref-1: all history and in the last week."""
    buy = d.daily["buy"][rows] > 0
    t = np.arange(d.days)[None, :]
    last_buy = np.where(buy & (t < ref[rows, None]), t, -1).max(axis=1)
    cs = _cumsum(d.daily["cart_abandon"])
    lo_all = np.maximum(last_buy + 1, d.start[rows])
    lo_week = np.maximum(lo_all, ref[rows] - 7)
    return _window_sums(cs, rows, lo_all, ref[rows]), _window_sums(cs, rows, lo_week, ref[rows])


def _runs(mask: Array) -> tuple[Array, Array, Array]:
    """Runs of True per row: (row, start, length)."""
    n, D = mask.shape
    padded = np.zeros((n, D + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    r_s, c_s = np.nonzero(diff == 1)
    _, c_e = np.nonzero(diff == -1)
    return r_s, c_s, c_e - c_s


def _silences(d: _Data) -> dict[str, Any]:
    """Silences (>= 3 days without a session) and what followed them, seen from the events alone."""
    t = np.arange(d.days)[None, :]
    in_hist = t >= d.start[:, None]
    silent = (d.daily["sessions"] == 0) & in_hist
    r, s, length = _runs(silent)
    s_ok = (length >= SILENCE_DAYS) & (s > d.start[r])
    r, s, length = r[s_ok], s[s_ok], length[s_ok]
    reaches_end = s + length >= d.days
    churn_like = length >= CHURN_SILENCE_DAYS
    returned = ~reaches_end & ~churn_like
    censored = reaches_end & ~churn_like
    disc = d.daily["discount_ended"]
    after_promo = np.zeros(len(r), dtype=bool)
    for k in range(0, 4):
        after_promo |= disc[r, np.clip(s - k, 0, d.days - 1)] > 0
    hol = np.zeros(len(r), dtype=bool)
    for h in d.meta["scenario"].get("holidays", []):
        import datetime as dt

        h0 = (dt.date.fromisoformat(h["start"]) - dt.date(1970, 1, 1)).days - d.first_day
        hol |= (s >= h0 - 2) & (s < h0 + h["days"])

    def summary(m: Array) -> dict[str, Any]:
        known = m & (returned | churn_like)
        return {
            "silences": int(m.sum()),
            "returned": int((m & returned).sum()),
            "became_churn": int((m & churn_like).sum()),
            "censored_at_today": int((m & censored).sum()),
            "return_rate": float((m & returned).sum() / known.sum()) if known.any() else None,
        }

    devices_with_return = np.unique(r[returned]).size
    hist_len = np.bincount(
        np.minimum(length[~churn_like], CHURN_SILENCE_DAYS), minlength=CHURN_SILENCE_DAYS + 1
    )
    return {
        "definition": f">= {SILENCE_DAYS} consecutive days without a session after the first day",
        "all": summary(np.ones(len(r), dtype=bool)),
        "after_discount_end": summary(after_promo),
        "overlapping_holiday": summary(hol),
        "devices_with_silence_and_return": devices_with_return,
        "share_of_devices_with_silence_and_return": devices_with_return / max(d.n, 1),
        "returned_length_histogram": {str(k): int(v) for k, v in enumerate(hist_len) if k >= SILENCE_DAYS},
        "_arrays": (r, s, length, returned, churn_like, after_promo, hol),
    }


def _label_consistency(d: _Data) -> dict[str, Any]:
    """Truth churn_day equals the first 14-day session-free run (the shared definition)."""
    t = np.arange(d.days)[None, :]
    silent = (d.daily["sessions"] == 0) & (t >= d.start[:, None])
    r, s, length = _runs(silent)
    full = length >= CHURN_SILENCE_DAYS
    first = np.full(d.n, -1)
    order = np.argsort(r[full] * (d.days + 1) + s[full], kind="stable")
    rr, ss = r[full][order], s[full][order]
    uniq, idx = np.unique(rr, return_index=True)
    first[uniq] = ss[idx]
    observed = (d.churn >= 0) & (d.churn + CHURN_SILENCE_DAYS <= d.days)
    ok_churn = first[observed] == d.churn[observed]
    not_churn = (d.churn < 0) | (d.churn >= d.days)
    no_false = first[not_churn] < 0
    after = t >= np.where(d.churn >= 0, d.churn, d.days)[:, None]
    return {
        "observed_churners": int(observed.sum()),
        "churn_day_matches_definition": float(ok_churn.mean()) if ok_churn.size else None,
        "non_churners_without_14_day_silence": float(no_false.mean()) if no_false.size else None,
        "sessions_after_churn": int((d.daily["sessions"] * after).sum()),
    }


def _trajectories(d: _Data, rows: Array, ref: Array, back: int = 28) -> dict[str, list[float]]:
    """Pooled daily amount k days before churn / pooled earlier daily mean, k = back..1."""
    out: dict[str, list[float]] = {}
    ks = np.arange(back, 0, -1)
    ok = rows[ref[rows] - back - d.start[rows] >= MIN_HISTORY_DAYS]
    if ok.size == 0:
        return out
    for ch in ("sessions", "private_messages", "profile_updates", "content_minutes"):
        x = d.daily[ch]
        cs = _cumsum(x)
        base = _window_sums(cs, ok, d.start[ok], ref[ok] - back) / (ref[ok] - back - d.start[ok])
        vals = x[ok[:, None], ref[ok, None] - ks[None, :]]
        out[ch] = [float(v) for v in vals.sum(axis=0) / max(base.sum(), 1e-12)]
    return out


def compute_calibration(pop_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calibration figures (JSON-ready) and arrays for the plots."""
    d = _load(pop_dir)
    sc = d.meta["scenario"]
    dec = sc["decay"]
    W = int(dec["window_days"])
    churner, placebo, ref = _reference(d, W)
    rows = np.arange(d.n)
    seg_id = {name: i for i, name in enumerate(d.seg_names)}
    c_rows = rows[churner]
    p_rows = rows[placebo]
    warned = rows[churner & ~d.no_warning]

    drops: dict[str, Any] = {}
    for ch, key in (
        ("private_messages", "private_messages_drop"),
        ("profile_updates", "profile_updates_drop"),
    ):
        drops[ch] = {
            "target": dec[key],
            "tolerance": TOLERANCES[key],
            "all_churners": _drop(d, ch, c_rows, ref, W),
            "warned_churners": _drop(d, ch, warned, ref, W),
            "placebo_non_churners": _drop(d, ch, p_rows, ref, W),
            "by_segment": {s: _drop(d, ch, rows[churner & (d.seg == i)], ref, W) for s, i in seg_id.items()},
        }

    content_seg = seg_id.get("content_dependent", -1)
    thr = float(dec["content_threshold"])
    need = int(dec["content_days"])
    cc = rows[churner & (d.seg == content_seg)]
    cp = rows[placebo & (d.seg == content_seg)]
    streak_c = _content_streak(d, cc, ref, thr)
    streak_p = _content_streak(d, cp, ref, thr)
    streak_all = _content_streak(d, c_rows, ref, thr)
    content: dict[str, Any] = {
        "definition": f"days in a row up to churn_day-1 with content minutes < {thr} x mean of earlier days",
        "target_days": need,
        "min_share": CONTENT_STREAK_MIN_SHARE,
        "content_churners": int(cc.size),
        "share_content_churners": float((streak_c >= need).mean()) if cc.size else None,
        "share_all_churners": float((streak_all >= need).mean()) if c_rows.size else None,
        "share_placebo_content_users": float((streak_p >= need).mean()) if cp.size else None,
    }

    price_seg = seg_id.get("price_sensitive", -1)
    pc = rows[churner & (d.seg == price_seg)]
    pp = rows[placebo & (d.seg == price_seg)]
    cart_c_all, cart_c_week = _cart_streak(d, pc, ref)
    cart_p_all, _ = _cart_streak(d, pp, ref)
    k_cart = int(dec["cart_abandon_streak"])
    rv_c = _drop(d, "product_view_repeat", pc, ref, W)
    rv_p = _drop(d, "product_view_repeat", pp, ref, W)
    commerce: dict[str, Any] = {
        "definition": "cart_abandon events after the last day with a checkout or purchase, up to churn_day-1",
        "target_streak": k_cart,
        "min_share": CART_STREAK_MIN_SHARE,
        "price_sensitive_churners": int(pc.size),
        "share_churners_streak": float((cart_c_all >= k_cart).mean()) if pc.size else None,
        "share_churners_streak_last_week": float((cart_c_week >= k_cart).mean()) if pc.size else None,
        "share_placebo_streak": float((cart_p_all >= k_cart).mean()) if pp.size else None,
        "repeat_views_ratio_churners": None if rv_c["drop"] is None else 1.0 - rv_c["drop"],
        "repeat_views_ratio_placebo": None if rv_p["drop"] is None else 1.0 - rv_p["drop"],
        "repeat_views_min_ratio": REPEAT_VIEW_MIN_RATIO,
    }

    in_hist = (d.churn >= 0) & (d.churn < d.days)
    horizon = d.churn >= d.days
    seg_mix_target = sc["segments"]
    churn_rates: dict[str, Any] = {
        "observed_in_history": float(in_hist.mean()) if d.n else None,
        "within_horizon_after_today": float(horizon.mean()) if d.n else None,
        "band": list(CHURN_RATE_BAND),
        "by_segment": {
            s: float(in_hist[d.seg == i].mean()) if (d.seg == i).any() else None for s, i in seg_id.items()
        },
        "by_cause": {c: int((in_hist & (d.cause == i)).sum()) for i, c in enumerate(d.cause_names)},
        "churners": int(in_hist.sum()),
        "no_warning_share_of_churners": float(d.no_warning[in_hist].mean()) if in_hist.any() else None,
        "new_users": int(d.new_user.sum()),
        "new_user_churn_rate": float(in_hist[d.new_user].mean()) if d.new_user.any() else None,
    }
    mix = {s: float((d.seg == i).mean()) for s, i in seg_id.items()}
    segment_mix: dict[str, Any] = {
        "measured": mix,
        "target": seg_mix_target,
        "tolerance": TOLERANCES["segment_mix"],
        "max_abs_error": max(abs(mix.get(s, 0.0) - float(v)) for s, v in seg_mix_target.items()),
    }
    sil = _silences(d)
    sil_arrays = sil.pop("_arrays")
    labels = _label_consistency(d)
    active_days = int((d.daily["sessions"] > 0).sum())
    volume = {
        "devices": d.n,
        "days": d.days,
        "events": d.n_events,
        "events_per_device_day": d.n_events / max(d.n * d.days, 1),
        "events_per_active_day": d.n_events / max(active_days, 1),
        "active_day_share": active_days / max(int((np.arange(d.days)[None, :] >= d.start[:, None]).sum()), 1),
    }

    checks = []

    def check(name: str, measured: float | None, ok: bool, target: str) -> None:
        checks.append(
            {"name": name, "target": target, "measured": measured, "pass": bool(ok), "meaning": MEANING[name]}
        )

    for ch in ("private_messages", "profile_updates"):
        m = drops[ch]["all_churners"]["drop"]
        t = drops[ch]["target"]
        tol = drops[ch]["tolerance"]
        check(f"{ch}_drop_7d_before_churn", m, m is not None and abs(m - t) <= tol, f"{t} ± {tol}")
        pl = drops[ch]["placebo_non_churners"]["drop"]
        tp = TOLERANCES["placebo_drop"]
        check(f"{ch}_drop_placebo", pl, pl is not None and abs(pl) <= tp, f"0 ± {tp}")
    sc_share = content["share_content_churners"]
    check(
        "content_below_40pct_streak_share",
        sc_share,
        sc_share is not None and sc_share >= CONTENT_STREAK_MIN_SHARE,
        f">= {CONTENT_STREAK_MIN_SHARE} of content-dependent churners with >= {need} days",
    )
    cs_share = commerce["share_churners_streak"]
    cp_share = commerce["share_placebo_streak"] or 0.0
    check(
        "cart_abandon_streak_share",
        cs_share,
        cs_share is not None and cs_share >= CART_STREAK_MIN_SHARE and cs_share >= 3 * cp_share,
        f">= {CART_STREAK_MIN_SHARE} of price-sensitive churners and >= 3x placebo",
    )
    rv = commerce["repeat_views_ratio_churners"]
    check(
        "repeat_views_ratio",
        rv,
        rv is not None and rv >= REPEAT_VIEW_MIN_RATIO,
        f">= {REPEAT_VIEW_MIN_RATIO}x",
    )
    cr = churn_rates["observed_in_history"]
    check(
        "churn_rate",
        cr,
        cr is not None and CHURN_RATE_BAND[0] <= cr <= CHURN_RATE_BAND[1],
        str(CHURN_RATE_BAND),
    )
    err = segment_mix["max_abs_error"]
    check("segment_mix", err, err <= TOLERANCES["segment_mix"], f"max error <= {TOLERANCES['segment_mix']}")
    rr = sil["all"]["return_rate"]
    check(
        "silences_with_return",
        rr,
        rr is not None and sil["all"]["returned"] > 0 and rr > 0.5,
        "silences >= 3 days exist and most end with a return",
    )
    lm = labels["churn_day_matches_definition"]
    check(
        "truth_matches_churn_definition",
        lm,
        (lm is None or lm == 1.0)
        and labels["non_churners_without_14_day_silence"] in (None, 1.0)
        and labels["sessions_after_churn"] == 0,
        "1.0",
    )

    report = {
        "population": {k: d.meta[k] for k in ("seed", "n_devices", "days", "start_day", "today")},
        "scenario": sc.get("name"),
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks),
        "pre_churn_drops": drops,
        "content_below_mean": content,
        "commerce": commerce,
        "churn": churn_rates,
        "segment_mix": segment_mix,
        "silences": sil,
        "label_consistency": labels,
        "volume": volume,
        "trajectories_before_churn": _trajectories(d, c_rows, ref),
    }
    arrays = {
        "streak_c": streak_c,
        "streak_p": streak_p,
        "cart_c": cart_c_all,
        "cart_p": cart_p_all,
        "silences": sil_arrays,
    }
    return report, arrays


PLACEBO = "non-churners show no such drop on a random day (else it tells nobody apart)"
# What each check asks of the population, in words (printed beside a FAIL, stored in the report).
MEANING: dict[str, str] = {
    "private_messages_drop_7d_before_churn": (
        "churners send ~62% fewer private messages in their last 7 days than in their own earlier weeks"
    ),
    "private_messages_drop_placebo": PLACEBO,
    "profile_updates_drop_7d_before_churn": (
        "churners edit their profile ~81% less in their last 7 days than in their own earlier weeks"
    ),
    "profile_updates_drop_placebo": PLACEBO,
    "content_below_40pct_streak_share": (
        "most content-dependent churners stay below 40% of their own content time for days before leaving"
    ),
    "cart_abandon_streak_share": (
        "price-sensitive churners abandon carts several times in a row before leaving, far more than others"
    ),
    "repeat_views_ratio": "price-sensitive churners keep re-viewing the same product in their last week",
    "churn_rate": "the share of devices that churn within the history is inside the accepted band",
    "segment_mix": "the generated share of each user segment matches the scenario's",
    "silences_with_return": "short silences exist and most end with a return: not every gap is churn",
    "truth_matches_churn_definition": (
        "the generator's churn day agrees with the label (14 days without a session), and nobody returns"
    ),
}
FAIL_MEANS = (
    "A FAIL means this population does not reproduce that figure of the brief: what depends on the "
    "signal (its on-device trigger, the model's use of it) is less representative here. The knobs are "
    "in the scenario file (simulations/scenarios/<name>.toml); docs/population.md explains each."
)


def _hist(ax: Any, values: Array, bins: Array, alpha: float, label: str) -> None:
    """Share-of-users histogram; an empty group is labelled rather than drawn."""
    if len(values) == 0:
        ax.plot([], [], label=f"{label} (none)")
        return
    weights = np.full(len(values), 1.0 / len(values))
    ax.hist(values, bins=bins, alpha=alpha, weights=weights, label=f"{label} (n={len(values)})")


def _plots(report: dict[str, Any], arrays: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []

    pop, vol = report["population"], report["volume"]
    sample = (
        f"population: {vol['devices']:,} devices × {vol['days']} days, {report['churn']['churners']:,} "
        f"churners (seed {pop['seed']})"
    )

    def save(fig: Any, name: str) -> None:
        fig.suptitle(sample, fontsize=8, color="dimgray")  # n on every figure
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100, metadata={"Software": None})
        plt.close(fig)
        written.append(name)

    # 1. Private messages and profile updates: drop before churn vs target.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, ch in zip(axes, ("private_messages", "profile_updates"), strict=True):
        dd = report["pre_churn_drops"][ch]
        labels = ["all churners", "warned", *dd["by_segment"].keys(), "placebo"]
        vals = [
            dd["all_churners"]["drop"],
            dd["warned_churners"]["drop"],
            *(v["drop"] for v in dd["by_segment"].values()),
            dd["placebo_non_churners"]["drop"],
        ]
        ax.bar(
            range(len(vals)),
            [0.0 if v is None else 100 * v for v in vals],
            color=["C0", "C0", *["C7"] * len(dd["by_segment"]), "C3"],
        )
        t, tol = 100 * dd["target"], 100 * dd["tolerance"]
        ax.axhspan(t - tol, t + tol, color="C2", alpha=0.2, label=f"target {t:.0f}% ± {tol:.0f}")
        ax.axhline(t, color="C2")
        ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("drop in the 7 days before churn (%)")
        ax.set_title(ch.replace("_", " "))
        ax.legend(fontsize=8)
    save(fig, "pre_churn_drops.png")

    # 2. Content below 40% of the mean: streak lengths.
    fig, ax = plt.subplots(figsize=(6, 4))
    c = report["content_below_mean"]
    bins = np.arange(0, 23) - 0.5
    _hist(ax, arrays["streak_c"], bins, 0.7, "content-dependent churners")
    _hist(ax, arrays["streak_p"], bins, 0.5, "placebo (non-churners)")
    ax.axvline(c["target_days"] - 0.5, color="C2", label=f"target: >= {c['target_days']} days for most")
    ax.set_xlabel("consecutive days below 40% of own mean, up to churn")
    ax.set_ylabel("share of users")
    ax.set_title(f"content: {100 * (c['share_content_churners'] or 0):.0f}% of churners reach the target")
    ax.legend(fontsize=8)
    save(fig, "content_streak.png")

    # 3. Abandoned carts and repeated views (price-sensitive).
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cm = report["commerce"]
    bins = np.arange(0, 16) - 0.5
    _hist(axes[0], np.minimum(arrays["cart_c"], 14), bins, 0.7, "churners")
    _hist(axes[0], np.minimum(arrays["cart_p"], 14), bins, 0.5, "placebo")
    axes[0].axvline(cm["target_streak"] - 0.5, color="C2", label=f"target: {cm['target_streak']} in a row")
    axes[0].set_xlabel("abandoned carts since last checkout")
    axes[0].set_ylabel("share of users")
    axes[0].set_title("price-sensitive: abandoned-cart streak")
    axes[0].legend(fontsize=8)
    vals = [cm["repeat_views_ratio_churners"] or 0.0, cm["repeat_views_ratio_placebo"] or 0.0]
    axes[1].bar([0, 1], vals, color=["C0", "C3"])
    axes[1].axhline(
        cm["repeat_views_min_ratio"], color="C2", label=f"target >= {cm['repeat_views_min_ratio']}x"
    )
    axes[1].set_xticks([0, 1], ["churners", "placebo"])
    axes[1].set_ylabel("repeat product views, last week / earlier weekly mean")
    axes[1].set_title("price-sensitive: repeated product views")
    axes[1].legend(fontsize=8)
    save(fig, "commerce_signals.png")

    # 4. Churn rate by segment and cause.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ch_ = report["churn"]
    segs = list(ch_["by_segment"])
    axes[0].bar(
        range(len(segs) + 1),
        [100 * (ch_["observed_in_history"] or 0)] + [100 * (ch_["by_segment"][s] or 0) for s in segs],
    )
    lo, hi = ch_["band"]
    axes[0].axhspan(100 * lo, 100 * hi, color="C2", alpha=0.15, label="accepted band (all devices)")
    axes[0].set_xticks(range(len(segs) + 1), ["all", *segs], rotation=20, fontsize=8)
    axes[0].set_ylabel("churned within the history (%)")
    axes[0].set_title("churn rate, all devices and by segment")
    axes[0].legend(fontsize=8)
    causes = {k: v for k, v in ch_["by_cause"].items() if k != "none"}
    axes[1].bar(range(len(causes)), list(causes.values()), color="C1")
    axes[1].set_xticks(range(len(causes)), list(causes), rotation=20, fontsize=8)
    axes[1].set_ylabel("churners")
    axes[1].set_title("what drove churn")
    save(fig, "churn_rate.png")

    # 5. Segment mix.
    fig, ax = plt.subplots(figsize=(6, 4))
    sm = report["segment_mix"]
    names = list(sm["target"])
    x = np.arange(len(names))
    ax.bar(x - 0.2, [100 * sm["target"][s] for s in names], 0.4, label="scenario")
    ax.bar(x + 0.2, [100 * sm["measured"].get(s, 0) for s in names], 0.4, label="generated")
    ax.set_xticks(x, names, rotation=15, fontsize=8)
    ax.set_ylabel("share of devices (%)")
    ax.set_title("user segments: the scenario's mix and the generated one")
    ax.legend(fontsize=8)
    save(fig, "segment_mix.png")

    # 6. Silences and returns.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    si = report["silences"]
    kinds = ["all", "after_discount_end", "overlapping_holiday"]
    rates = [100 * (si[k]["return_rate"] or 0) for k in kinds]
    axes[0].bar(range(3), rates, color="C0")
    for i, k in enumerate(kinds):
        axes[0].text(i, rates[i] + 1, f"n={si[k]['silences']}", ha="center", fontsize=8)
    axes[0].set_xticks(range(3), ["all silences", "after a discount", "over a holiday"], fontsize=8)
    axes[0].set_ylabel("silences >= 3 days that end with a return (%)")
    axes[0].set_ylim(0, 110)
    axes[0].set_title("silences that end with a return")
    length = arrays["silences"][2]
    axes[1].hist(np.minimum(length, 20), bins=np.arange(3, 22) - 0.5, color="C1")
    axes[1].axvline(13.5, color="C3", label="14 days = churn")
    axes[1].set_xlabel("silence length (days, capped at 20)")
    axes[1].set_ylabel("silences")
    axes[1].set_title("how long silences last")
    axes[1].legend(fontsize=8)
    save(fig, "silence_return.png")

    # 7. Trajectories before churn.
    tr = report["trajectories_before_churn"]
    if tr:
        fig, ax = plt.subplots(figsize=(7, 4))
        n = len(next(iter(tr.values())))
        ks = -np.arange(n, 0, -1)
        for ch, vals in tr.items():
            ax.plot(ks, vals, marker=".", label=ch.replace("_", " "))
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.4, color="C2", ls="--", lw=0.8, label="40% of mean")
        ax.set_xlabel("days before churn")
        ax.set_ylabel("pooled daily amount / earlier daily mean")
        ax.set_title("behaviour before churn (all churners)")
        ax.legend(fontsize=8)
        save(fig, "trajectories_before_churn.png")
    return written


def write_report(pop_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Compute the calibration figures of a written population; write calibration.json and PNG plots."""
    pop_dir = Path(pop_dir)
    out = Path(out_dir) if out_dir is not None else pop_dir / "report"
    check_population(pop_dir)  # both before any work
    check_out_dir(out, "--out" if out_dir is not None else "--out (default POP_DIR/report)")
    report, arrays = compute_calibration(pop_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = _plots(report, arrays, out)
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["out_dir"] = str(out)
    return report
