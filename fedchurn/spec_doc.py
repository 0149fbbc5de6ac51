"""Generated parts of docs/client-spec.md, rendered from the declarations in `fedchurn.shared`.

`fedchurn spec-doc` rewrites them; a test fails when the committed document and the code disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from fedchurn.shared import feature_spec as fs
from fedchurn.shared.catalogue import CATEGORIES

BEGIN = "<!-- BEGIN GENERATED: {name} (fedchurn spec-doc) -->"
END = "<!-- END GENERATED: {name} -->"


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def events_table() -> str:
    rows = ["| # | category | actions (index: name — value) | retention |", "|---|---|---|---|"]
    for c in CATEGORIES:
        acts = "<br>".join(f"{i}: `{a.name}` — {_esc(a.value)}" for i, a in enumerate(c.actions))
        rows.append(f"| {c.number - 1} | `{c.id}` | {acts} | {c.retention_days} d |")
    return "\n".join(rows)


def channels_table() -> str:
    rows = ["| # | channel | category | actions | statistic |", "|---|---|---|---|---|"]
    for i, ch in enumerate(fs.CHANNELS):
        stat = (
            ch.stat
            + (f" × {ch.scale:.6g}" if ch.scale != 1 else "")
            + (" (local hours 0–5)" if ch.night_only else "")
        )
        acts = ", ".join(ch.actions) or "all"
        cat = "all but device_context" if ch.category == fs.BEHAVIOUR else ch.category
        rows.append(f"| {i} | `{ch.name}` | {cat} | {acts} | {stat} |")
    return "\n".join(rows)


def features_table() -> str:
    rows = ["| # | feature | group | source categories | formula |", "|---|---|---|---|---|"]
    for i, f in enumerate(fs.FEATURES):
        rows.append(f"| {i} | `{f.name}` | {f.group} | {', '.join(f.categories)} | {_esc(f.formula)} |")
    return "\n".join(rows)


def activity_weights_table() -> str:
    rows = ["| channel | weight |", "|---|---|"]
    rows += [f"| `{k}` | {v:g} |" for k, v in fs.ACTIVITY_WEIGHTS.items()]
    return "\n".join(rows)


SECTIONS = {
    "events": events_table,
    "channels": channels_table,
    "activity-weights": activity_weights_table,
    "features": features_table,
}


def _literal(replacement: str) -> Callable[[re.Match[str]], str]:
    return lambda _m: replacement


def render(text: str) -> str:
    """Replace every generated section of `text` with its current rendering."""
    for name, fn in SECTIONS.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"section {name!r} markers are missing")
        # A function, so that backslashes in the rendering are not read as group references.
        text = pattern.sub(_literal(f"{begin}\n{fn()}\n{end}"), text)
    return text


def update(path: Path) -> bool:
    """Rewrite the generated sections of `path`; returns True when something changed."""
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
    return new != old
