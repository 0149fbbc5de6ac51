"""The reviewer page, rendered by headless Chromium from the live server, in both languages.

Chromium is a test dependency: `make test` installs Debian's `chromium` when it is missing, so this
test fails (rather than skips) where it cannot run.
"""

from __future__ import annotations

import html
import json
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
from fedchurn.server.catalogue_zh import catalogue_text, missing
from fedchurn.shared.catalogue import CATEGORIES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('page') / 'audit.sqlite'}"
    s = AuditStore(url)
    rid = s.start_run(
        {},
        {"mode": "plaintext", "upload_bytes": 9144, "aggregator_learns": "every update <in the clear>"},
        {
            "accountant": "rdp",
            "mechanism": "one Gaussian per round <sum>",
            "evaluation_noise_multiplier": 2.0,
            "evaluation_epsilon_per_run": 2.37,
        },
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
    assert "too big & late ×3" in dom  # escaped, then shown as text
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
    # a noised evaluation's ε per held-out device, beside its noise (decision 151)
    assert f"<dt>{i18n.t(lang, 'budget.eval_epsilon')}</dt><dd>2.37</dd>" in dom
    assert f"<dt>{i18n.t(lang, 'budget.eval_noise')}</dt><dd>2</dd>" in dom


def test_page_language_caching_and_escaping(base: str) -> None:
    zh = httpx.get(f"{base}/v1/reviewer", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert zh.status_code == 200 and zh.headers["content-language"] == "zh-Hans"
    assert zh.headers["vary"] == "Accept-Language" and zh.headers["content-type"].startswith("text/html")
    assert all(c.name_zh in zh.text for c in CATEGORIES)
    en = httpx.get(f"{base}/v1/reviewer")
    assert en.headers["content-language"] == "en" and all(c.name_en in en.text for c in CATEGORIES)
    # what a run declared is escaped (the mechanism); what each party learns is the page's own text
    # for the run's mode (review 21), not the declaration's
    assert "one Gaussian per round &lt;sum&gt;" in en.text and "<sum>" not in en.text
    assert "<in the clear>" not in en.text
    again = httpx.get(f"{base}/v1/reviewer", headers={"If-None-Match": en.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{base}/", follow_redirects=False).headers["location"] == "/v1/reviewer"
    assert httpx.get(f"{base}/v1/reviewer", params={"lang": "fr"}).status_code == 422


MEASURE = """<script>
const han = /\\p{Script=Han}/u;
function width(text, like) {
  const s = document.createElement("span");
  s.style.whiteSpace = "nowrap";
  s.textContent = text;
  like.appendChild(s);
  const w = s.getBoundingClientRect().width;
  s.remove();
  return w;
}
const heading = document.querySelector("h2");
const chinese = [...heading.textContent].filter((c) => han.test(c)).join("");
const result = {
  text: chinese,
  em: parseFloat(getComputedStyle(heading).fontSize),
  chinese: width(chinese, heading),
  tofu: width("\\u{10FFFD}".repeat([...chinese].length), heading),
};
document.body.setAttribute("data-cjk", JSON.stringify(result));
</script>"""


def test_chinese_glyphs_render_and_every_category_reads_in_chinese(base: str, tmp_path: Path) -> None:
    """The zh page in headless Chromium: its first heading's Chinese characters are drawn with a
    CJK font (1 em each), not as the boxes a missing font draws (the width of unassigned code
    points); and every category's description, purposes and legal basis are in Chinese."""
    page = httpx.get(f"{base}/v1/reviewer", params={"lang": "zh"}).text
    local = tmp_path / "zh.html"
    local.write_text(page.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = _dump_dom(local.as_uri(), tmp_path / "profile")
    raw = dom.split('data-cjk="', 1)[1].split('"', 1)[0]
    m = json.loads(html.unescape(raw))
    n = len(m["text"])
    assert n >= 2, m
    assert abs(m["chinese"] / n - m["em"]) < 0.05 * m["em"], f"CJK glyphs are not 1 em wide: {m}"
    assert abs(m["chinese"] - m["tofu"]) > 0.1 * m["em"] * n, f"Chinese renders like missing glyphs: {m}"
    text = html.unescape(dom)
    for c in CATEGORIES:
        assert catalogue_text("zh", c.description) in text, c.id
        assert catalogue_text("zh", c.legal_basis) in text, c.id
        for p in c.purposes:
            assert i18n.t("zh", f"purpose_short.{p}") in text and i18n.t("zh", f"purpose.{p}") in text
    assert "Descriptions are quoted" not in text and "英文原文" not in text
    # every run is listed; the crypto table holds the run's mode only; no developer note is shown
    assert i18n.t("zh", "runs.heading") in text and "<code>plaintext</code>" in text
    assert "ckks_poly_modulus" not in text and "ring_bits" not in text
    assert i18n.t("zh", "upload.observed_why") in text  # why measured bytes exceed the declared size
    assert "until the" not in text and "fedchurn.client.policy.PolicyConfig" in text
    assert missing() == []  # every catalogue sentence has its Chinese
