"""Catalog lookups on constructed records, and one catalog loaded from a real repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run
from expckpt.store.catalog import Catalog, Chain
from expckpt.errors import UnknownCheckpointError
from expckpt.store.gitstore import GitStore
from expckpt.store.records import CheckpointRecord, OutputHash, format_message
from expckpt.store.refs import CheckpointRef

B1 = "1" * 40
B2 = "2" * 40


def rec(
    exp: str,
    step: int,
    time: float,
    *,
    commit: str,
    baseline: str = B1,
    parent: str | None = None,
    resumed: bool = False,
) -> CheckpointRecord:
    return CheckpointRecord(
        ref=CheckpointRef(baseline, exp, step),
        commit=commit.ljust(40, "0"),
        parent=parent,
        outs={"model.pt": OutputHash("a" * 32, 100)},
        metrics={"acc": step / 10},
        time=time,
        resumed=resumed,
    )


# tut: steps 0, 2, 5, 9 under B1; a continuation 'tut-more' from tut@5; 'lr' under B2;
# and a second 'tut' under B2 (same names, other baseline), written last.
TUT = [rec("tut", s, 100 + s, commit=f"a{s}a{s}") for s in (0, 2, 5, 9)]
MORE = [
    rec("tut-more", 6, 206, commit="b6", parent=TUT[2].commit, resumed=True),
    rec("tut-more", 7, 207, commit="b7", parent="b6".ljust(40, "0")),
]
LR = [rec("lr", s, 150 + s, commit=f"c{s}", baseline=B2) for s in (0, 1)]
TUT_B2 = [rec("tut", 0, 300, commit="d0d0", baseline=B2)]
ALL = TUT + MORE + LR + TUT_B2


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(reversed(ALL))  # input order does not matter


def names(records) -> list[str]:
    return [f"{r.name}/{r.ref.baseline[0]}" for r in records]


def test_records_sorted_by_baseline_experiment_step(catalog: Catalog) -> None:
    assert names(catalog.records) == [
        "tut@0/1",
        "tut@2/1",
        "tut@5/1",
        "tut@9/1",
        "tut-more@6/1",
        "tut-more@7/1",
        "lr@0/2",
        "lr@1/2",
        "tut@0/2",
    ]
    assert sorted({r.exp for r in catalog.records}) == ["lr", "tut", "tut-more"]


def test_of(catalog: Catalog) -> None:
    assert names(catalog.of("tut")) == ["tut@0/1", "tut@2/1", "tut@5/1", "tut@9/1", "tut@0/2"]
    assert names(catalog.of("tut", baseline=B1)) == ["tut@0/1", "tut@2/1", "tut@5/1", "tut@9/1"]
    assert names(catalog.of("tut", baseline=B2)) == ["tut@0/2"]
    assert catalog.of("nope") == [] and catalog.of("tu") == []


def test_last(catalog: Catalog) -> None:
    assert catalog.last() is TUT_B2[0]  # written most recently
    assert catalog.last("tut") is TUT_B2[0]
    assert catalog.last("tut-more") is MORE[1]
    assert catalog.last("lr") is LR[1]
    assert catalog.last("nope") is None
    assert Catalog([]).last() is None


def test_last_breaks_time_ties_by_step() -> None:
    same_time = [rec("t", 3, 50, commit="e3"), rec("t", 4, 50, commit="e4"), rec("t", 2, 50, commit="e2")]
    assert Catalog(same_time).last("t").step == 4


@pytest.mark.parametrize(
    ("step", "expected"),
    [(-1, None), (0, 0), (1, 0), (2, 2), (4, 2), (5, 5), (8, 5), (9, 9), (10**6, 9)],
)
def test_last_at_or_before(step: int, expected: int | None) -> None:
    catalog = Catalog(TUT)
    found = catalog.last_at_or_before("tut", step)
    assert (found.step if found else None) == expected


def test_last_at_or_before_unknown_experiment(catalog: Catalog) -> None:
    assert catalog.last_at_or_before("nope", 100) is None


def test_resolve_by_name(catalog: Catalog) -> None:
    assert catalog.resolve("tut@5") is TUT[2]
    assert catalog.resolve("tut-more@7") is MORE[1]
    assert catalog.resolve("lr@0") is LR[0]
    assert catalog.resolve("tut@0") is TUT_B2[0]  # two baselines: the newest wins


def test_resolve_by_commit(catalog: Catalog) -> None:
    assert catalog.resolve(MORE[0].commit) is MORE[0]  # full sha
    assert catalog.resolve("a5a5") is TUT[2]  # short sha, 4+ hex digits
    assert catalog.resolve("a9a90") is TUT[3]
    assert catalog.by_commit(LR[1].commit) is LR[1] and catalog.by_commit("f" * 40) is None


@pytest.mark.parametrize("name", ["b6", "b", "a0a", "A5A5", "a5a5g"])
def test_resolve_refuses_too_short_or_non_hex_shas(catalog: Catalog, name: str) -> None:
    with pytest.raises(UnknownCheckpointError):
        catalog.resolve(name)


def test_ambiguous_short_sha_is_unknown() -> None:
    catalog = Catalog([rec("t", 1, 1, commit="abcd1"), rec("t", 2, 2, commit="abcd2")])
    assert catalog.resolve("abcd1").step == 1
    with pytest.raises(UnknownCheckpointError, match="no checkpoint named 'abcd'"):
        catalog.resolve("abcd")


def test_unknown_name_suggests_close_ones(catalog: Catalog) -> None:
    with pytest.raises(UnknownCheckpointError, match=r"no checkpoint named 'tut@7'; did you mean 'tut@\d'") as info:
        catalog.resolve("tut@7")
    assert info.value.ref == "tut@7"
    message = str(info.value)
    suggested = message.split("did you mean ", 1)[1].rstrip("?").split(", ")
    assert 1 <= len(suggested) <= 3 and all(s.strip("'").startswith("tut") for s in suggested)
    with pytest.raises(UnknownCheckpointError, match=r"did you mean .*'tut-more'"):
        catalog.resolve("tut-mor")


def test_unknown_name_with_nothing_close(catalog: Catalog) -> None:
    with pytest.raises(UnknownCheckpointError, match=r"no checkpoint named 'zzzzzz'; see `expckpt list`"):
        catalog.resolve("zzzzzz")
    with pytest.raises(UnknownCheckpointError, match="see `expckpt list`"):
        Catalog([]).resolve("tut@9")


def test_chains_group_by_baseline_and_experiment(catalog: Catalog) -> None:
    chains = catalog.chains()
    assert all(isinstance(c, Chain) for c in chains)
    # most recently written first
    assert [(c.exp, c.baseline[0]) for c in chains] == [("tut", "2"), ("tut-more", "1"), ("lr", "2"), ("tut", "1")]
    by_key = {(c.exp, c.baseline): c for c in chains}
    tut = by_key[("tut", B1)]
    assert [r.step for r in tut.records] == [0, 2, 5, 9] and tut.newest is TUT[3]
    assert tut.origin is None
    more = by_key[("tut-more", B1)]
    assert [r.step for r in more.records] == [6, 7] and more.origin == TUT[2].commit
    assert catalog.by_commit(more.origin).name == "tut@5"
    assert Catalog([]).chains() == []


def test_a_chain_whose_first_checkpoints_were_removed_is_not_a_branch() -> None:
    # tut@0 was removed: tut@2 still names it as parent, but the run started from scratch
    catalog = Catalog([rec("tut", 2, 102, commit="a2", parent="a0".ljust(40, "0"))])
    assert catalog.chains()[0].origin is None


def test_load_from_a_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo)
    run("git", "commit", "-q", "--allow-empty", "-m", "baseline", cwd=repo)
    store = GitStore.open(repo)
    base = store.get_ref("HEAD")
    commits = []
    for step in range(3):
        ref = CheckpointRef(base, "tut", step)
        message = format_message(ref, parent=None, outs={}, metrics={"acc": step}, time=10.0 + step)
        commit = store.write_commit(store.commit_tree(base), [base], message)
        store.create_ref(ref.ref, commit)
        commits.append(commit)

    catalog = Catalog.load(store)
    assert [r.commit for r in catalog.records] == commits
    assert catalog.resolve("tut@1").commit == commits[1]
    assert catalog.resolve(commits[2][:7]).name == "tut@2"
    assert catalog.last("tut").step == 2 and catalog.last_at_or_before("tut", 1).step == 1
    assert Catalog.load(store, baselines=["f" * 40]).records == []
