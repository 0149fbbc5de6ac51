from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import RunCli

from fedchurn.shared import catalogue as cat
from fedchurn.shared.feature_spec import FEATURES, features_fed_by


def test_exactly_17_unique_complete_categories() -> None:
    assert len(cat.CATEGORIES) == 17
    assert len({c.id for c in cat.CATEGORIES}) == 17
    for c in cat.CATEGORIES:
        assert c.name_zh and c.name_en and c.never_recorded and c.purposes
        assert c.dpv_category.startswith("https://w3id.org/dpv/pd#")
        assert "raw" in c.leaves_device.lower()


def test_validation_rejects_broken_catalogues() -> None:
    cats = cat.CATEGORIES
    with pytest.raises(cat.CatalogueError, match="expected 17"):
        cat.validate(cats[:-1])
    dup = (*cats[:-1], dataclasses.replace(cats[-1], id=cats[0].id))
    with pytest.raises(cat.CatalogueError, match="duplicate id"):
        cat.validate(dup)
    empty = (*cats[:-1], dataclasses.replace(cats[-1], apple_privacy_label=""))
    with pytest.raises(cat.CatalogueError, match="apple_privacy_label"):
        cat.validate(empty)
    short = (dataclasses.replace(cats[0], retention_days=7), *cats[1:])
    with pytest.raises(cat.CatalogueError, match="retention"):
        cat.validate(short)


def test_every_category_feeds_a_feature_and_every_feature_has_a_source() -> None:
    for c in cat.CATEGORIES:
        assert features_fed_by(c.id)
    for f in FEATURES:
        assert all(s in cat.BY_ID for s in f.categories)


def test_cli_categories_json_lists_17_complete_entries(run_cli: RunCli) -> None:
    res = run_cli("categories", "--json", check=True)
    doc = json.loads(res.stdout)
    entries = doc["categories"]
    assert len(entries) == 17
    required = {f.name for f in dataclasses.fields(cat.Category)} | {"features_fed"}
    for e in entries:
        assert required <= set(e)
        assert all(e[k] not in (None, "", []) for k in required), e["id"]
    assert entries[7]["id"] == "private_messages" and "message text" in entries[7]["never_recorded"]


def test_cli_categories_table_in_chinese(run_cli: RunCli) -> None:
    res = run_cli("categories", "--lang", "zh", check=True, columns=80)
    assert "应用会话" in res.stdout and "记录内容及其意义" in res.stdout and "风险评分" in res.stdout
    assert "120 天" in res.stdout and "Risk scoring" not in res.stdout and "days" not in res.stdout
    assert all(c.name_zh in res.stdout for c in cat.CATEGORIES)


def test_cli_categories_table_fits_80_columns_and_says_why(run_cli: RunCli) -> None:
    res = run_cli("categories", check=True, columns=80)
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "What is recorded, and why" in res.stdout and "120 days" in res.stdout
    # names and descriptions wrap between words, never inside one
    words = set(res.stdout.replace("│", " ").replace(",", " ").replace(".", " ").split())
    for c in cat.CATEGORIES:
        assert set((c.name_en + " " + c.description).replace(",", " ").replace(".", " ").split()) <= words
    serves = "Every category serves: Risk scoring, Model training, Retention policy, Transparency."
    assert serves in " ".join(res.stdout.split())


def test_cli_categories_refuses_a_language_it_does_not_have(run_cli: RunCli) -> None:
    res = run_cli("categories", "--lang", "fr")
    assert res.returncode != 0
    assert "--lang must be one of en, zh, got 'fr'" in res.stderr + res.stdout
