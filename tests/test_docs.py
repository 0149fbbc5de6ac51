from __future__ import annotations

from pathlib import Path

from fedchurn import spec_doc
from fedchurn.shared.feature_spec import FEATURE_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_client_spec_matches_the_declared_features() -> None:
    text = (ROOT / "docs" / "client-spec.md").read_text()
    assert spec_doc.render(text) == text, "docs/client-spec.md is stale: run `fedchurn spec-doc`"
    for name in FEATURE_NAMES:
        assert f"`{name}`" in text


def test_render_replaces_a_stale_table() -> None:
    text = (ROOT / "docs" / "client-spec.md").read_text()
    stale = text.replace("`sessions.count_1d`", "`sessions.count_one_day`")
    assert spec_doc.render(stale) == text
