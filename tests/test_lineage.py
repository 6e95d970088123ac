"""The checkpoint tree (expckpt.ops.lineage) and its text and JSON views in ``expckpt show``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from expckpt.store.catalog import Catalog
from expckpt.cli.main import main
from expckpt.ops.lineage import build_tree, lineage_of
from expckpt.policy.policy import keep_policy
from expckpt.store.records import BadRecordError, InitializedFrom, load_records, parse_message
from expckpt.store.refs import CheckpointRef
from expckpt.ops.showtree import render_tree, tree_as_json
from treekit import small_tree


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    return small_tree(tmp_path_factory.mktemp("tree") / "repo")


def tree_of(repo, **kw):
    policy = keep_policy(keep_last=3, keep_best=1, monitor="acc", mode="max")
    return build_tree(
        Catalog.load(repo.store), {repo.base: "main"}, policy, monitor="acc", mode="max", head=repo.base, **kw
    )


def test_records_read_initialized_from_and_paused(repo) -> None:
    records = {r.name: r for r in load_records(repo.store)}
    assert records["warm@0"].initialized_from == InitializedFrom("tut", 11, repo.commits["tut@11"])
    assert records["warm@1"].initialized_from is None
    assert records["tut-b@8"].paused and not records["tut-b@7"].paused


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ('"paused":"yes"', "paused 'yes' is not true or false"),
        ('"initialized_from":"tut@3"', "initialized_from 'tut@3' is not an object"),
        ('"initialized_from":{"exp":"tut","step":-1,"commit":"' + "a" * 40 + '"}', "step -1 is not a non-negative"),
        ('"initialized_from":{"exp":"tut","step":1,"commit":"HEAD"}', "commit 'HEAD' is not a 40-hex"),
        ('"initialized_from":{"exp":"t\\u001b[2J","step":1,"commit":"' + "a" * 40 + '"}', "is not a printable name"),
    ],
)
def test_bad_lineage_fields_are_refused(extra: str, why: str) -> None:
    line = '{"exp":"x","metrics":{},"outs":{},"step":1,"time":1.0,"v":1,' + extra + "}"
    with pytest.raises(BadRecordError, match=re.escape(why)):
        parse_message(CheckpointRef("1" * 40, "x", 1), "c" * 40, f"dvc: commit\n\nexpckpt-meta: {line}\n")


def test_runs_hang_under_the_checkpoint_they_came_from(repo) -> None:
    tree = tree_of(repo)
    (group,) = tree.groups
    assert [r.exp for r in group.runs] == ["tut"]  # one root: the others came from it
    tut = group.runs[0]
    assert {c.exp: (c.link, c.source.name) for c in tut.children} == {
        "warm": ("initialized", "tut@11"),
        "tut-b": ("resumed", "tut@5"),
    }
    assert [c.exp for c in tut.children] == ["warm", "tut-b"]  # most recently written first
    points = {p.record.name: p for p in tree.points()}
    assert points["tut@11"].marks == ("newest", "best", "branch point of warm") and points["tut@11"].kept_by == (
        "best",
        "last",
        "newest",
    )
    assert "branch point of tut-b" in points["tut@5"].marks
    assert points["tut@0"].kept_by == () and points["tut@9"].kept_by == ("last",)
    assert points["tut-b@8"].marks == ("newest", "best", "paused")
    assert "best" not in points["tut-b@7"].marks  # NaN never ranks


def test_lineage_of_keeps_the_runs_an_experiment_came_from(repo) -> None:
    catalog = lineage_of(Catalog.load(repo.store), "tut-b")
    assert sorted({r.exp for r in catalog.records}) == ["tut", "tut-b"]


def test_show_draws_branches_above_their_source_and_folds_long_runs(repo) -> None:
    text = render_tree(tree_of(repo))
    lines = text.splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"^(?:│ )*[╓╟╨═] (\S+)", line))]
    # newest first; each branch sits one level in, just above the checkpoint it came from
    assert names == ["warm@1", "warm@0", "tut@11", "tut@10", "tut@9", "tut-b@8", "tut-b@7", "tut-b@6", "tut@5", "tut@0"]
    assert re.match(r"^│ ╨ warm@0 .*\(init from [0-9a-f]{7} tut@11\)", lines[4])
    row = next(line for line in lines if "tut-b@6" in line)
    assert row.startswith("│ ╨ tut-b@6") and f"({repo.commits['tut@5'][:7]} tut@5)" in row
    assert "┆ … 3 more (tut@6 … tut@8): 3 outside policy" in text
    assert "newest,best,paused" in next(line for line in lines if "tut-b@8" in line)
    assert lines[-1] == "(7 checkpoints folded; `expckpt show --all` lists every one)"
    expanded = render_tree(tree_of(repo), expand=True)
    assert "┆" not in expanded and all(f"tut@{s} " in expanded for s in range(12))


def test_show_json_carries_the_tree(repo) -> None:
    chains = tree_as_json(tree_of(repo))
    assert [(c["experiment"], c["depth"]) for c in chains] == [("tut", 0), ("warm", 1), ("tut-b", 1)]
    by = {c["experiment"]: c for c in chains}
    assert by["tut"]["branches"] == [{"experiment": "warm", "at": "tut@11"}, {"experiment": "tut-b", "at": "tut@5"}]
    assert by["tut-b"]["link"] == "resumed"
    assert by["tut-b"]["resumed_from"] == by["tut-b"]["source"] == {"commit": repo.commits["tut@5"], "name": "tut@5"}
    assert by["warm"]["link"] == "initialized" and by["warm"]["resumed_from"] is None
    newest = by["tut-b"]["checkpoints"][0]
    assert (newest["name"], newest["marks"], newest["kept_by"]) == (
        "tut-b@8",
        ["newest", "best", "paused"],
        ["best", "last", "newest"],
    )
    assert by["tut-b"]["checkpoints"][1]["metrics"]["acc"] == "nan"


def test_show_cli_folds_and_all_expands(repo, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(repo.path)
    assert main(["show"]) == 0
    folded = capsys.readouterr().out
    assert "┆ … " in folded and "tut@3 " not in folded
    assert main(["show", "--all"]) == 0
    assert "tut@3 " in capsys.readouterr().out
    assert main(["show", "--json"]) == 0
    assert [c["experiment"] for c in json.loads(capsys.readouterr().out)] == ["tut", "warm", "tut-b"]


def test_a_cycle_of_hand_made_refs_still_shows_every_run(tmp_path: Path) -> None:
    from treekit import init_repo

    repo = init_repo(tmp_path / "repo")
    a0 = repo.write("a", 0, metrics={})
    b0 = repo.write("b", 0, metrics={}, parent=a0, resumed=True)
    # a@1 claims it continued from b@0, which continued from a@0: a loop no real run makes
    repo.write("a", 1, metrics={}, parent=b0, resumed=False)
    repo.write("c", 0, metrics={}, extra={"initialized_from": {"exp": "c", "step": 0, "commit": "f" * 40}})
    tree = build_tree(Catalog.load(repo.store), {}, None)
    assert sorted(r.exp for r in tree.runs()) == ["a", "b", "c"]
    assert "(init from fffffff)" in render_tree(tree)  # a source not in the catalog still named


def test_git_remote_marks_the_checkpoints_it_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from conftest import run
    from treekit import init_repo

    repo = init_repo(tmp_path / "repo")
    first = repo.write("tut", 0, metrics={"acc": 0.1})
    repo.write("tut", 1, metrics={"acc": 0.2}, parent=first)
    run("git", "init", "-q", "--bare", str(tmp_path / "remote.git"), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(tmp_path / "remote.git"), cwd=repo.path)
    ref = f"refs/exps/{repo.base[:2]}/{repo.base[2:]}/tut@0"
    run("git", "push", "-q", "origin", f"{first}:{ref}", cwd=repo.path)
    monkeypatch.chdir(repo.path)
    assert main(["show", "--json", "--git-remote", "origin"]) == 0
    marks = {c["name"]: c["marks"] for c in json.loads(capsys.readouterr().out)[0]["checkpoints"]}
    assert marks == {"tut@1": ["newest"], "tut@0": ["pushed"]}  # no monitor configured: no best
    assert main(["show", "--git-remote", "nowhere"]) == 1
    assert capsys.readouterr().err == (
        "expckpt: error: no Git remote 'nowhere' in this repository; name one `git remote` lists\n"
    )
