"""Checkpoint names and refs: the round-trip table, what parse refuses, hostile names."""

from __future__ import annotations

import pytest

from conftest import run
from expckpt.errors import InvalidNameError
from expckpt.store.refs import EXPS_PREFIX, CheckpointRef, parse_checkpoint_name, validate_exp_name

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "ffffffffffffffffffffffffffffffffffffffff"
TAIL = SHA[2:]


@pytest.mark.parametrize(
    ("baseline", "exp", "step", "ref"),
    [
        (SHA, "tut", 0, f"refs/exps/01/{TAIL}/tut@0"),
        (SHA, "tut", 3, f"refs/exps/01/{TAIL}/tut@3"),
        (SHA, "lr-0.01", 12, f"refs/exps/01/{TAIL}/lr-0.01@12"),
        (SHA, "A_b.c-9", 999_999_999_999, f"refs/exps/01/{TAIL}/A_b.c-9@999999999999"),
        (SHA, "7", 1, f"refs/exps/01/{TAIL}/7@1"),
        (SHA, "x" * 100, 2, f"refs/exps/01/{TAIL}/{'x' * 100}@2"),
        (OTHER, "tut", 5, f"refs/exps/ff/{OTHER[2:]}/tut@5"),
    ],
)
def test_round_trip(baseline: str, exp: str, step: int, ref: str) -> None:
    checkpoint = CheckpointRef(baseline=baseline, exp=exp, step=step)
    assert checkpoint.ref == ref
    assert checkpoint.name == f"{exp}@{step}"
    assert CheckpointRef.parse(checkpoint.ref) == checkpoint
    assert parse_checkpoint_name(checkpoint.name) == (exp, step)


@pytest.mark.parametrize("exp", ["tut", "lr-0.01", "A_b.c-9", "x" * 100])
def test_built_refs_are_valid_git_refs(exp: str, tmp_path) -> None:
    ref = CheckpointRef(baseline=SHA, exp=exp, step=7).ref
    run("git", "check-ref-format", ref, cwd=tmp_path)


def test_refs_sort_by_baseline_then_name_then_step() -> None:
    refs = [CheckpointRef(SHA, "tut", 10), CheckpointRef(SHA, "tut", 2), CheckpointRef(SHA, "a", 5)]
    assert [r.name for r in sorted(refs)] == ["a@5", "tut@2", "tut@10"]


@pytest.mark.parametrize(
    "ref",
    [
        f"refs/exps/01/{TAIL}/tut",  # a plain DVC experiment
        f"refs/exps/01/{TAIL}/tut-ab12c",  # a generated experiment name
        "refs/exps/exec/EXEC_BASELINE",
        "refs/exps/exec/EXEC_HEAD",
        "refs/exps/exec/EXEC_MERGE",
        "refs/exps/celery/stash",
        "refs/exps/stash",
        "refs/heads/tut@3",
        "refs/tags/tut@3",
        "tut@3",
        f"refs/exps/012/{TAIL[1:]}/tut@3",  # wrong split of the sha
        f"refs/exps/0/1{TAIL}/tut@3",
        f"refs/exps/01/{TAIL[:-1]}/tut@3",  # short sha
        f"refs/exps/01/{TAIL}0/tut@3",  # long sha
        f"refs/exps/01/{TAIL.upper()}/tut@3",  # not lower-case hex
        f"refs/exps/01/{TAIL[:-1]}g/tut@3",
        f"refs/exps/01/{TAIL}/tut@3/extra",
        f"refs/exps/01/{TAIL}/sub/tut@3",
        f"refs/exps/01/{TAIL}/tut@",
        f"refs/exps/01/{TAIL}/tut@-1",
        f"refs/exps/01/{TAIL}/tut@01",  # leading zero: not what we write
        f"refs/exps/01/{TAIL}/tut@3a",
        f"refs/exps/01/{TAIL}/tut@1@2",
        f"refs/exps/01/{TAIL}/@3",
        f"refs/exps/01/{TAIL}/tut@1234567890123",  # 13 digits
        f"refs/exps/01/{TAIL}/-x@3",
        f"refs/exps/01/{TAIL}/.x@3",
        f"refs/exps/01/{TAIL}/{'x' * 101}@3",
        # Valid Git refs whose experiment part is no name expckpt would write:
        f"refs/exps/01/{TAIL}/x.@3",
        f"refs/exps/01/{TAIL}/x.lock@3",
        f"refs/exps/01/{TAIL}/a..b@3",
        "",
        "refs/exps/",
    ],
)
def test_parse_returns_none_for_other_refs(ref: str) -> None:
    assert CheckpointRef.parse(ref) is None


@pytest.mark.parametrize("name", ["tut", "lr-0.01", "A", "7", "a.b", "a_b", "a-b", "run.v2.final", "x" * 100])
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_exp_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "..",
        ".",
        "a/b",
        "/abs",
        "-x",
        "--force",
        ".x",
        "_x",
        "x.lock",
        "x.",
        "a..b",
        "a b",
        " a",
        "x@1",
        "x@{1}",
        "",
        "x" * 101,
        "naïve",
        "тест",
        "x\u200b",
        "refs/heads/main",
        ";rm -rf",
        "a;rm -rf ~",
        "$(id)",
        "`id`",
        "x\ny",
        "x\n",
        "x\r",
        "x\t",
        "x\x00",
        "a:b",
        "a~1",
        "a^",
        "a?",
        "a*",
        "a[b",
        "a\\b",
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError, match=r"cannot be used for checkpoints: use 1-100 letters") as info:
        validate_exp_name(name)
    assert info.value.ref == name


@pytest.mark.parametrize("name", [None, 3, b"tut"])
def test_non_string_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError, match="cannot be used for checkpoints"):
        validate_exp_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("tut@0", ("tut", 0)), ("tut@3", ("tut", 3)), ("lr-0.01@42", ("lr-0.01", 42)), ("a.b@7", ("a.b", 7))],
)
def test_parse_checkpoint_name(name: str, expected: tuple[str, int]) -> None:
    assert parse_checkpoint_name(name) == expected


@pytest.mark.parametrize(
    "name", ["tut", "tut@", "@3", "tut@-1", "tut@01", "tut@3.0", "tut@x", "a/b@3", "tut@1@2", "tut@3 ", ""]
)
def test_parse_checkpoint_name_refuses_other_shapes(name: str) -> None:
    with pytest.raises(InvalidNameError, match=r"is not a checkpoint name: expected <experiment>@<step>"):
        parse_checkpoint_name(name)


@pytest.mark.parametrize("name", ["..@3", "-x@3", "x.lock@3", "a b@3", "x.@1"])
def test_parse_checkpoint_name_validates_the_experiment(name: str) -> None:
    with pytest.raises(InvalidNameError, match="cannot be used for checkpoints"):
        parse_checkpoint_name(name)


@pytest.mark.parametrize("baseline", ["", "abc", SHA[:-1], SHA + "0", SHA.upper(), "g" * 40, f"../{SHA[3:]}", "HEAD"])
def test_baseline_must_be_a_full_sha(baseline: str) -> None:
    with pytest.raises(InvalidNameError, match="is not a full 40-hex commit sha"):
        CheckpointRef(baseline=baseline, exp="tut", step=1)


@pytest.mark.parametrize("step", [-1, True, False, 1.0, "3", None])
def test_step_must_be_a_non_negative_int(step: object) -> None:
    with pytest.raises(InvalidNameError, match=r"step must be an integer >= 0"):
        CheckpointRef(baseline=SHA, exp="tut", step=step)  # type: ignore[arg-type]


def test_constructor_validates_the_experiment_name() -> None:
    with pytest.raises(InvalidNameError, match="cannot be used for checkpoints"):
        CheckpointRef(baseline=SHA, exp="../../heads/main", step=1)


def test_prefix_is_dvc_experiment_namespace() -> None:
    assert EXPS_PREFIX == "refs/exps/"
