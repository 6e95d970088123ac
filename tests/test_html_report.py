"""``expckpt report --html``: one offline page with the checkpoint tree and curves.

The page is checked twice: as text (self-contained, hostile names escaped, the data it carries)
and in a real headless Chromium with networking cut off (it renders, draws what the data says,
hovering shows the command, nothing is fetched, hostile names stay text).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from browserkit import Browser
from conftest import run
from expckpt.store.catalog import Catalog
from expckpt.cli.main import main
from expckpt.errors import ConfigError
from expckpt.ops.htmlreport import page_data, run_params, write_report
from expckpt.ops.lineage import build_tree
from expckpt.policy.policy import keep_policy
from treekit import init_repo, small_tree

HOSTILE_METRIC = "</script><script>window.pwned=1</script>"
HOSTILE_PARAM = '<img src=x onerror="window.pwned=2">'
HOSTILE_BRANCH = "<svg/onload=window.pwned=3>"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    return small_tree(tmp_path_factory.mktemp("html") / "repo")


def tree_of(repo, labels=None):
    policy = keep_policy(keep_last=3, keep_best=1, monitor="acc", mode="max")
    return build_tree(Catalog.load(repo.store), labels or {repo.base: "main"}, policy, monitor="acc", head=repo.base)


def data_block(html: str) -> str:
    (block,) = re.findall(r'<script type="application/json" id="expckpt-data">(.*?)</script>', html, re.S)
    return block


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    """A teammate's pulled experiment: hostile metric name, param value and branch name."""
    repo = init_repo(tmp_path_factory.mktemp("hostile") / "repo")
    first = repo.write("pulled", 0, metrics={HOSTILE_METRIC: 0.5}, params=f"note: '{HOSTILE_PARAM}'\n")
    repo.write("pulled", 1, metrics={HOSTILE_METRIC: 0.6}, params=f"note: '{HOSTILE_PARAM}'\n", parent=first)
    run("git", "branch", HOSTILE_BRANCH, cwd=repo.path)
    return repo


def hostile_page(hostile, path: Path) -> Path:
    labels = {
        commit: ref.removeprefix("refs/heads/")
        for ref, commit in hostile.store.branch_and_tag_tips().items()
        if ref == f"refs/heads/{HOSTILE_BRANCH}"
    }
    tree = build_tree(Catalog.load(hostile.store), labels, None, head=hostile.base)
    write_report(path, tree, hostile.store)
    return path


def test_the_page_carries_the_tree_curves_and_commands(repo) -> None:
    tree = tree_of(repo)
    data = page_data(tree, params=run_params(repo.store, tree))
    assert data["metrics"] == ["acc", "loss"] and len(data["points"]) == 17
    runs = {r["exp"]: r for r in data["runs"]}
    assert runs["tut-b"]["link"] == "resumed" and runs["tut-b"]["source"] == "tut@5"
    assert data["points"][runs["tut-b"]["source_point"]]["name"] == "tut@5"
    assert runs["tut-b"]["params_diff"] == {"lr": ["0.1", "0.5"]} and runs["tut-b"]["params_against"] == "tut@5"
    assert runs["warm"]["link"] == "initialized" and runs["warm"]["params_diff"] == {"lr": ["0.1", "0.01"]}
    assert runs["tut"]["params_diff"] == {} and runs["tut"]["params_against"] == f"baseline {repo.base[:7]}"
    points = {p["name"]: p for p in data["points"]}
    assert points["tut-b@7"]["metrics"]["acc"] == "nan"
    assert points["tut-b@8"]["marks"] == ["newest", "best", "paused"] and points["tut@0"]["kept_by"] == []
    assert points["tut@3"]["apply"] == "dvc exp apply tut@3" and points["tut@3"]["size"] == 1003
    assert page_data(tree, metrics=["loss"])["metrics"] == ["loss"]


def test_the_page_is_one_file_with_nothing_to_fetch(repo, tmp_path: Path) -> None:
    size = write_report(tmp_path / "r.html", tree_of(repo), repo.store)
    html = (tmp_path / "r.html").read_text()
    assert size == len(html.encode()) < 2_000_000
    assert not re.search(r"<(script|img|iframe|link)\b[^>]*\b(src|href)=", html, re.I)
    assert "default-src 'none'" in html  # and the browser refuses any request the page would try
    assert html.count("<script") == html.count("</script>") == 4


def test_hostile_names_stay_data(hostile, tmp_path: Path) -> None:
    html = hostile_page(hostile, tmp_path / "r.html").read_text()
    block = data_block(html)
    assert not set(block) & set("<>&")  # nothing in the data can close or open an element
    data = json.loads(block)
    assert data["metrics"] == [HOSTILE_METRIC] and data["groups"][0]["label"] == HOSTILE_BRANCH
    assert data["runs"][0]["params_diff"] == {"lr": ["0.1", None], "note": [None, HOSTILE_PARAM]}
    assert html.count("<script") == html.count("</script>") == 4


def test_unknown_metric_is_one_line_with_the_names_there(repo) -> None:
    with pytest.raises(ConfigError, match=r"^no metric named 'los' in these checkpoints; metrics logged: acc, loss$"):
        page_data(tree_of(repo), metrics=["los"])


def test_report_html_cli(repo, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(repo.path)
    assert main(["report", "--html"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"wrote expckpt-report\.html \(\d+\.\d kB, 17 checkpoints\); open it in a browser\n", out)
    assert "tut-b@8" in (repo.path / "expckpt-report.html").read_text()
    assert main(["report", "tut-b", "--html", "only.html", "--metric", "loss"]) == 0
    data = json.loads(data_block((repo.path / "only.html").read_text()))
    assert sorted(r["exp"] for r in data["runs"]) == ["tut", "tut-b"] and data["metrics"] == ["loss"]
    capsys.readouterr()
    assert main(["report", "--html", "x.html", "--metric", "los"]) == 1
    assert capsys.readouterr().err == (
        "expckpt: error: no metric named 'los' in these checkpoints; metrics logged: acc, loss\n"
    )
    assert main(["report", "tut-c", "--html", "x.html"]) == 1
    err = capsys.readouterr().err
    assert err == "expckpt: error: no experiment named 'tut-c'; experiments with checkpoints: tut, tut-b, warm\n"
    assert not (repo.path / "x.html").exists()


# -- in a real browser ---------------------------------------------------------------------------

COUNTS = """return {
  nodes: document.querySelectorAll('#tree li.ckpt').length,
  charts: Array.from(document.querySelectorAll('.chart')).map(c => [c.dataset.metric,
          c.querySelectorAll('.mark-line.role-mark path').length, c.querySelectorAll('.mark-rule.role-mark line').length]),
  requests: performance.getEntriesByType('resource').map(e => e.name),
  error: document.body.dataset.error || null,
};"""


@pytest.mark.slow
def test_the_page_in_a_browser(repo, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_report(page, tree_of(repo), repo.store)
    with Browser.start(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        browser.wait_for("return document.body.dataset.ready === '1' || !!document.body.dataset.error")
        counts = browser.run(COUNTS)
        assert counts == {"nodes": 17, "charts": [["acc", 3, 1], ["loss", 3, 0]], "requests": [], "error": None}
        # NaN at tut-b@7: its acc line breaks there (two sub-paths), the rule marks the step
        paths = browser.run(
            "return Array.from(document.querySelectorAll('.chart[data-metric=acc] .mark-line path'))"
            ".map(p => [p.getAttribute('aria-label'), (p.getAttribute('d').match(/M/g) || []).length])"
        )
        assert sorted(n for label, n in paths if "tut-b" in label) == [2]
        browser.hover("#tree li.ckpt[data-name='tut-b@6']")
        browser.wait_for("return document.getElementById('apply-command').textContent === 'dvc exp apply tut-b@6'")
        detail = browser.run("return document.getElementById('detail').innerText")
        assert "params changed since tut@5" in detail and "lr\t0.1 → 0.5" in detail
        # a point on a curve shows its checkpoint too
        symbol = browser.run(
            "return Array.from(document.querySelectorAll("
            "'.chart[data-metric=loss] .mark-symbol.role-mark path'))"
            ".find(p => p.getAttribute('aria-label') .startsWith('step: 10; loss: 0.0909'))"
        )
        browser.hover(symbol)
        browser.wait_for("return document.getElementById('apply-command').textContent === 'dvc exp apply tut@10'")
        browser.hover("#tree li.ckpt[data-name='tut-b@6']")
        browser.screenshot(tmp_path / "report.png")
        if os.environ.get("REPORT_SCREENSHOT"):  # how the README's picture is made
            browser.screenshot(Path(os.environ["REPORT_SCREENSHOT"]))
        assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert browser.console_errors() == []


@pytest.mark.slow
def test_hostile_names_cannot_script_the_page(hostile, tmp_path: Path) -> None:
    page = hostile_page(hostile, tmp_path / "report.html")
    with Browser.start(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        browser.wait_for("return document.body.dataset.ready === '1' || !!document.body.dataset.error")
        assert browser.run(
            "return window.pwned === undefined && document.querySelectorAll('img, [onload]')"
            ".length === 0 && document.scripts.length === 4"
        )
        text = browser.run("return document.body.innerText")
        assert HOSTILE_BRANCH in text
        browser.hover("#tree li.ckpt[data-name='pulled@0']")
        detail = browser.run("return document.getElementById('detail').innerText")
        assert HOSTILE_METRIC in detail and HOSTILE_PARAM in detail
        assert browser.run(COUNTS)["requests"] == [] and browser.console_errors() == []


def test_all_commits_takes_every_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    repo = init_repo(tmp_path / "repo")
    repo.write("old", 0, metrics={"acc": 0.1})
    run("git", "commit", "-q", "--allow-empty", "-m", "next baseline", cwd=repo.path)
    repo.base = run("git", "rev-parse", "HEAD", cwd=repo.path).stdout.strip()
    repo.write("new", 0, metrics={"acc": 0.2})
    monkeypatch.chdir(repo.path)
    assert main(["report", "--html", "head.html"]) == 0
    assert main(["report", "--html", "all.html", "-A"]) == 0
    runs = {
        name: sorted(r["exp"] for r in json.loads(data_block((repo.path / name).read_text()))["runs"])
        for name in ("head.html", "all.html")
    }
    assert runs == {"head.html": ["new"], "all.html": ["new", "old"]}


def test_the_assets_ship_with_the_package_and_stay_inline_safe() -> None:
    import tomllib

    from expckpt.ops.htmlassets import asset, inline_script

    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["expckpt"]
    files = [p for p in (root / "expckpt" / "assets").iterdir() if p.is_file()]
    assert {p.name for p in files} >= {
        "vega.min.js",
        "vega-lite.min.js",
        "report.js",
        "report.css",
        "LICENSE.vega",
        "LICENSE.vega-lite",
        "README.md",
    }
    assert [p.name for p in files if not any(p.match(f"expckpt/{g}") for g in globs)] == []
    for name in ("vega.min.js", "vega-lite.min.js", "report.js"):
        assert inline_script(asset(name)) == asset(name)
    with pytest.raises(ValueError, match="an inlined script holds '</script'"):
        inline_script("var s = '</SCRIPT>';")


def test_without_a_browser_the_page_tests_skip_saying_how_to_install_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium, no chromedriver
    with pytest.raises(
        pytest.skip.Exception,
        match=r"^no headless browser: install one with "
        r"`apt-get install -y chromium chromium-driver` \(CI does\)$",
    ):
        with Browser.start(tmp_path / "profile"):
            pass
