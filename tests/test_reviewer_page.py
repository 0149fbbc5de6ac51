"""The reviewer page, rendered by headless Chromium from the live server, in both languages.

Chromium is a test dependency: `make test` installs Debian's `chromium` when it is missing, so this
test fails (rather than skips) where it cannot run.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fedchurn.server import i18n
from fedchurn.server.api_bench import live_server
from fedchurn.server.audit import AuditStore
from fedchurn.shared.catalogue import CATEGORIES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('page') / 'audit.sqlite'}"
    s = AuditStore(url)
    rid = s.start_run(
        {},
        {"mode": "plaintext", "upload_bytes": 9144, "aggregator_learns": "every update <in the clear>"},
        {"accountant": "rdp", "mechanism": "one Gaussian per round <sum>"},
        {"name": "churn-survival-mlp", "version": "0.1.0", "n_params": 2286},
    )
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    s.record_round(
        rid,
        1,
        started_at=t0,
        finished_at=t0 + timedelta(seconds=2),
        sampled=3,
        received=2,
        refused=[{"device": "n<1>", "reason": "too big & late"}, {"reason": "too big & late", "count": 2}],
        bytes_received=18288,
        protection_mode="plaintext",
        dp_noise_std=None,
        epsilon_spent=1.25,  # against outsiders
        epsilon_aggregator=7.5,  # against the aggregator
        metrics={},
    )
    s.close()
    with live_server(url) as b:
        yield b


def _dump_dom(url: str, profile: Path) -> str:
    assert Path(CHROMIUM).exists(), (
        "chromium is missing: `make test` installs it (apt-get install -y chromium)"
    )
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_chromium_shows_all_17_categories(base: str, lang: i18n.Lang, tmp_path: Path) -> None:
    dom = html.unescape(_dump_dom(f"{base}/v1/reviewer?lang={lang}", tmp_path / "profile"))
    names = [c.name_zh if lang == "zh" else c.name_en for c in CATEGORIES]
    missing = [n for n in names if f'<strong class="cat-name">{n}</strong>' not in dom]
    assert not missing, missing
    assert f'<html lang="{"zh-Hans" if lang == "zh" else "en"}">' in dom
    assert ("警告" if lang == "zh" else "WARNING") in dom  # plaintext runs are flagged loudly
    assert "too big & late ×3" in dom and "every update <in the clear>" in dom  # escaped, then shown as text
    assert "n<1>" not in dom  # refused devices are counted, never named
    both_epsilons = (
        "budget.spent",
        "budget.spent_aggregator",
        "audit.col.epsilon",
        "audit.col.epsilon_aggregator",
    )
    for key in both_epsilons:
        assert i18n.t(lang, key) in dom, key  # both ε, in the page's language
    assert "<dd>1.25</dd>" in dom and "<dd>7.5</dd>" in dom
    assert i18n.t(lang, "budget.mechanism") in dom and "one Gaussian per round <sum>" in dom  # the mechanism


def test_page_language_caching_and_escaping(base: str) -> None:
    zh = httpx.get(f"{base}/v1/reviewer", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert zh.status_code == 200 and zh.headers["content-language"] == "zh-Hans"
    assert zh.headers["vary"] == "Accept-Language" and zh.headers["content-type"].startswith("text/html")
    assert all(c.name_zh in zh.text for c in CATEGORIES)
    en = httpx.get(f"{base}/v1/reviewer")
    assert en.headers["content-language"] == "en" and all(c.name_en in en.text for c in CATEGORIES)
    assert "&lt;in the clear&gt;" in en.text and "<in the clear>" not in en.text
    again = httpx.get(f"{base}/v1/reviewer", headers={"If-None-Match": en.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{base}/", follow_redirects=False).headers["location"] == "/v1/reviewer"
    assert httpx.get(f"{base}/v1/reviewer", params={"lang": "fr"}).status_code == 422
