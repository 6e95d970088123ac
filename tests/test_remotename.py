"""Two teammates, one experiment name, one remote (issue 21 item 9): with pushing configured the
name is checked against the remote before training, and a batch is never pushed into a chain
another run holds there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import make_project, run, train_in_exp_env
from expckpt.store.catalog import Catalog
from expckpt.store.gitstore import GitStore
from expckpt.publish.remote import PushFailed, PushTarget, push_batch
from expckpt.publish.remotename import remote_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bare Git remote holding the baseline, and teammate A's clone that ran and pushed ``tut``."""
    root = tmp_path_factory.mktemp("team")
    origin = make_project(root / "origin-src", epochs=3, checkpoint={"every": 1, "keep_last": None, "push": "origin"})
    run("dvc", "remote", "add", "-d", "store", str(root / "store"), cwd=origin)
    run("git", "add", ".dvc/config", cwd=origin)
    run("git", "commit", "-qm", "team remote", cwd=origin)
    remote = root / "remote.git"
    run("git", "clone", "-q", "--bare", str(origin), str(remote), cwd=root)
    a = teammate(root, remote, "a")
    done = train_in_exp_env(a, "tut")
    assert "expckpt: pushed" in done.stdout, done.stdout
    return root, remote


def teammate(root: Path, remote: Path, who: str) -> Path:
    clone = root / who
    run("git", "clone", "-q", str(remote), str(clone), cwd=root)
    return clone


def remote_names(remote: Path) -> dict[str, str]:
    out = run("git", "ls-remote", str(remote), "refs/exps/*", cwd=remote).stdout
    return {line.split("\t")[1].rsplit("/", 1)[1]: line.split("\t")[0] for line in out.splitlines()}


def test_same_name_as_a_teammates_pushed_run_is_refused_before_training(
    team: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, remote = team
    before = remote_names(remote)
    b = teammate(tmp_path, remote, "b")
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["lr"] = 0.02
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = train_in_exp_env(b, "tut", check=False)

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        f"train.py: error: Git remote 'origin' already has checkpoint 'tut@0' ({before['tut@0'][:7]}) from another run of"
        " 'tut'; pushing this run under the same name would mix two runs in one chain: run with another name,"
        " e.g. dvc exp run -n tut-2"
    ], result.stderr
    assert "epoch 0" not in result.stdout, "refused before any training"
    assert Catalog.load(GitStore.open(b)).records == []
    assert remote_names(remote) == before

    fine = train_in_exp_env(b, "tut-2", check=False)  # the name it suggests is free
    assert fine.returncode == 0, fine.stderr
    assert {n for n in remote_names(remote) if n.startswith("tut-2@")} == {"tut-2@0", "tut-2@1", "tut-2@2"}


def test_a_batch_is_not_pushed_into_a_chain_another_run_started_on_the_remote(
    team: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, remote = team
    own = tmp_path / "own.git"  # B starts while the shared remote has no `tut` yet: its own copy of the baseline
    run("git", "clone", "-q", "--bare", str(remote), str(own), cwd=tmp_path)
    b = teammate(tmp_path, own, "b")
    train_in_exp_env(b, "tut")
    store = GitStore.open(b)
    mine = sorted(Catalog.load(store).records, key=lambda r: r.step)
    assert [r.name for r in mine] == ["tut@0", "tut@1", "tut@2"]
    run("git", "remote", "set-url", "origin", str(remote), cwd=b)  # ... and A's `tut` is there by now
    before = remote_names(remote)

    with pytest.raises(PushFailed) as caught:
        push_batch(
            store,
            b,
            PushTarget(git_remote="origin", dvc_remote="store", source="checkpoint.push"),
            [(r.ref.ref, r.commit) for r in mine[1:]],
        )

    assert caught.value.permanent
    assert str(caught.value) == (
        f"Git remote 'origin' has tut@0 ({before['tut@0'][:7]}) from another run of 'tut';"
        " not pushing this run's checkpoints into that chain (they stay here)"
    )
    assert remote_names(remote) == before
    assert {r.name: c for r, c in remote_checkpoints(store, "origin", mine[0].ref.baseline).items()} == before
