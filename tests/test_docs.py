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


def test_the_wire_format_and_the_privacy_model_state_the_shipped_defaults() -> None:
    """Issue 19, finding 14: the documents' figures are the code's (upload layout and noise excess)."""
    import re

    from fedchurn.shared.model_format import DEFAULT_SPEC
    from fedchurn.shared.protection import DEFAULT
    from fedchurn.shared.run_config import RunConfig

    n = DEFAULT_SPEC.n_params
    shipped = RunConfig().train_protection(0.0)
    under_dp = RunConfig().train_protection(1.0)
    wire_doc = (ROOT / "docs" / "wire-format.md").read_text()
    stated = (
        f"m = {shipped.coords_per_round}\ncoordinates, q = {shipped.quant_bits} bits "
        f"(levels ±{shipped.level}), b = {shipped.ring_bits} bits"
    )
    assert stated in wire_doc
    assert f"b = {under_dp.ring_bits}, m = {under_dp.coords_per_round}" in wire_doc
    assert shipped.upload_bytes(n) == DEFAULT.upload_bytes(n) == 780
    assert under_dp.upload_bytes(n) <= 780
    assert f"m = {DEFAULT.coords_per_round}, q = {DEFAULT.quant_bits}, b = {DEFAULT.ring_bits}" in wire_doc
    row = next(line for line in wire_doc.splitlines() if line.startswith("| training update"))
    assert f"{shipped.coords_per_round} of {n:,}" in row and f"{shipped.ring_bits} bits" in row
    privacy = (ROOT / "docs" / "privacy.md").read_text()

    def excess(p: object) -> float:
        assert hasattr(p, "sensitivity_int")
        return 100 * (p.sensitivity_int(n) / p.scale(n) / p.clip_norm - 1)  # type: ignore[attr-defined]

    claims = [float(x) for x in re.findall(r"([\d.]+) % above z·C with the shipped defaults", privacy)]
    assert claims == [round(excess(shipped), 1)]
    round_dp = RunConfig(per_round=2000).train_protection(2.061)  # one 2,000-device cohort under DP
    flat = " ".join(privacy.split())
    assert (
        f"{excess(round_dp):.1f} % at the {round_dp.coords_per_round} coordinates of a 2,000-device "
        f"round in a {round_dp.ring_bits}-bit ring" in flat
    )
    assert f"{excess(DEFAULT):.1f} % only with `ProtectionParams()`" in flat
