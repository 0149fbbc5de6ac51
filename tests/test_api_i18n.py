"""Both languages say the same things: same keys, same format fields, every catalogue purpose."""

from __future__ import annotations

import pytest

from fedchurn.server import i18n
from fedchurn.shared.catalogue import PURPOSES

SAME_IN_BOTH = ("model.metric.roc_auc", "model.metric.pr_auc", "budget.delta", "cat.col.labels")


def test_languages_have_the_same_keys_and_fields() -> None:
    en, zh = i18n.STRINGS["en"], i18n.STRINGS["zh"]
    assert set(en) == set(zh)
    for key in en:
        assert i18n.format_fields(en[key]) == i18n.format_fields(zh[key]), key
        assert zh[key] and (zh[key] != en[key] or key in SAME_IN_BOTH), key


def test_every_purpose_is_translated() -> None:
    for lang in i18n.LANGS:
        for pid in PURPOSES:
            assert i18n.t(lang, f"purpose.{pid}")


@pytest.mark.parametrize(
    ("param", "header", "expected"),
    [
        ("zh", "en", "zh"),
        ("en", "zh-CN", "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        (None, "en-GB;q=0.5, zh-Hans;q=0.7", "zh"),
        (None, "fr, en;q=0.3", "en"),
        (None, "fr", "en"),
        (None, None, "en"),
        ("de", "zh;q=abc, zh-TW", "zh"),
    ],
)
def test_language_negotiation(param: str | None, header: str | None, expected: str) -> None:
    assert i18n.negotiate(param, header) == expected


def test_both_epsilons_are_named_apart_in_both_languages() -> None:
    """ε against outsiders and ε against the aggregator are two figures, never one label."""
    for lang in i18n.LANGS:
        assert {"spent", "spent_aggregator"} <= i18n.format_fields(i18n.t(lang, "budget.with_dp"))
        assert i18n.t(lang, "budget.spent") != i18n.t(lang, "budget.spent_aggregator")
        assert i18n.t(lang, "audit.col.epsilon") != i18n.t(lang, "audit.col.epsilon_aggregator")
        assert i18n.t(lang, "budget.two_epsilons")
