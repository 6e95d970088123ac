"""``checkpoint.init_from``: a fresh trial from another checkpoint's weights (issue 24, A).

In process: a real Git + DVC repository, the variables ``dvc exp run`` sets, a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from expckpt.train.checkpointer import Checkpointer
from expckpt.errors import ArchitectureMismatchError, ConfigError, MissingCheckpointError
from expckpt.store.records import load_records
from expckpt.store.gitstore import GitStore
from expckpt.state.state import TrainingState
from inprocess import checkpointer, crash_at, new_repo, new_state, refs, train, train_step
from oracle import cache_object, cli, git, locked_model


def meta(project: Path, commit: str) -> dict:
    message = git(project, "show", "-s", "--format=%B", commit)
    return json.loads(next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))[14:])


def saved(project: Path, commit: str) -> dict:
    return torch.load(cache_object(project, locked_model(project, commit)[0]), weights_only=True)


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "src", 3)  # src@0..2: the checkpoints trials start from
    return project


def trial(
    project: Path, exp: str, total: int, *, seed: int = 99, **config: object
) -> tuple[Checkpointer, TrainingState]:
    state = new_state(seed)
    ckpt = checkpointer(project, exp, {"init_from": "src@1", **config})
    ckpt.restore(state)
    for step in range(state.step + 1, total):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)
    return ckpt, state


def test_fresh_trial_takes_only_the_weights_and_records_its_lineage(repo: Path) -> None:
    source = refs(repo)["src@1"]
    state = new_state(seed=99)
    ckpt = checkpointer(repo, "ft", {"init_from": "src@1"})

    assert ckpt.restore(state) is None, "a fresh trial is no resume"
    weights = saved(repo, source)["model"]
    assert all(torch.equal(state.model.state_dict()[k], weights[k]) for k in weights)
    assert state.step == -1 and state.optimizer.state_dict()["state"] == {}, "optimizer stays fresh"
    for step in range(2):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)

    found = refs(repo)
    assert {"ft@0", "ft@1"} <= found.keys()
    lineage = {"exp": "src", "step": 1, "commit": source}
    assert [meta(repo, found[f"ft@{n}"])["initialized_from"] for n in range(2)] == [lineage, lineage]
    assert meta(repo, found["ft@0"])["parent"] is None
    shown = [line for line in cli(repo, "show").stdout.splitlines() if "ft@0" in line]
    assert f"(init from {source[:7]} src@1)" in shown[0]
    chain = next(c for c in json.loads(cli(repo, "show", "--json").stdout) if c["experiment"] == "ft")
    assert [c["initialized_from"] for c in chain["checkpoints"]] == [lineage, lineage]
    records = {r.name: r for r in load_records(GitStore.open(repo))}
    assert records["ft@1"].initialized_from is not None and records["ft@1"].initialized_from.commit == source
    assert records["src@2"].initialized_from is None


@pytest.mark.parametrize("spec", ["src", "commit", "path"])
def test_every_way_of_naming_the_source(repo: Path, spec: str) -> None:
    found = refs(repo)
    value = {"src": "src", "commit": found["src@2"][:10], "path": "copy.pt"}[spec]
    (repo / "copy.pt").write_bytes(cache_object(repo, locked_model(repo, found["src@2"])[0]).read_bytes())
    state = new_state(seed=99)
    ckpt = checkpointer(repo, "ft", {"init_from": value})
    ckpt.restore(state)
    ckpt.save(state, 0, train_step(state, 0))
    ckpt.close(state)
    assert meta(repo, refs(repo)["ft@0"])["initialized_from"] == {"exp": "src", "step": 2, "commit": found["src@2"]}


def test_init_restore_carries_the_named_objects(repo: Path) -> None:
    source = saved(repo, refs(repo)["src@1"])
    state = new_state(seed=99)
    checkpointer(repo, "ft", {"init_from": "src@1", "init_restore": ["optimizer"]}).restore(state)
    momentum = state.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, source["optimizer"]["state"][0]["momentum_buffer"])
    assert state.step == -1


def test_a_plain_state_dict_file_works_too(repo: Path) -> None:
    model = nn.Linear(4, 3)
    torch.save(model.state_dict(), repo / "weights.pt")
    state = new_state(seed=99)
    checkpointer(repo, "ft", {"init_from": "weights.pt"}).restore(state)
    assert torch.equal(state.model.weight, model.weight)


def test_shapes_that_do_not_match(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = nn.Linear(4, 5)
    state = TrainingState(model=big, optimizer=torch.optim.SGD(big.parameters(), lr=0.1))
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"weight is \[3, 4\] in the source but \[5, 4\] in the model"
        r".*init_strict: false",
    ) as err:
        checkpointer(repo, "ft", {"init_from": "src@1"}).restore(state)
    assert "\n" not in str(err.value)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3, 4))
            self.extra = nn.Parameter(torch.zeros(2))

    two = Two()
    state = TrainingState(model=two)
    checkpointer(repo, "ft", {"init_from": "src@1", "init_strict": False}).restore(state)
    assert torch.equal(two.weight, saved(repo, refs(repo)["src@1"])["model"]["weight"])
    assert (
        "loaded 1 keys, 1 missing (kept fresh, 0 of them with another shape), 1 unexpected" in capsys.readouterr().out
    )


def test_a_source_that_is_not_there_stops_before_training(repo: Path) -> None:
    with pytest.raises(ConfigError, match=r"experiment src has no checkpoint at step 7 \(it has steps 0, 1, 2;"):
        checkpointer(repo, "ft", {"init_from": "src@7"}).restore(new_state())
    with pytest.raises(ConfigError, match=r"no checkpoint .* and no file has that name"):
        checkpointer(repo, "ft", {"init_from": "nothing-here"}).restore(new_state())
    cache_object(repo, locked_model(repo, refs(repo)["src@0"])[0]).unlink()  # what `expckpt gc` would do
    with pytest.raises(MissingCheckpointError, match=r"src@0, but its weights .* are missing from the cache"):
        checkpointer(repo, "ft", {"init_from": "src@0"}).restore(new_state())
    assert "ft@0" not in refs(repo)


def test_a_damaged_source_is_refused(repo: Path) -> None:
    obj = cache_object(repo, locked_model(repo, refs(repo)["src@1"])[0])
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[-30] ^= 0xFF
    obj.write_bytes(bytes(data))
    with pytest.raises(MissingCheckpointError, match="corrupt"):
        checkpointer(repo, "ft", {"init_from": "src@1"}).restore(new_state())


def test_an_interrupted_trial_resumes_its_own_chain_bitwise(repo: Path) -> None:
    """The rerun goes on from the trial's own last checkpoint, not from the source again, and
    ends bitwise where an uninterrupted trial ends."""
    with crash_at("after-cache", 3):
        trial(repo, "cut", 5)
    ckpt, _ = trial(repo, "cut", 5)
    assert ckpt.resumed is not None and ckpt.resumed.record is not None and ckpt.resumed.record.name == "cut@2"
    cut = refs(repo)
    (repo / "model.pt").unlink()  # the reference: the same trial, never interrupted
    trial(repo, "whole", 5)
    whole = refs(repo)
    for step in range(5):
        assert locked_model(repo, cut[f"cut@{step}"]) == locked_model(repo, whole[f"whole@{step}"]), step
    assert meta(repo, cut["cut@4"])["initialized_from"]["exp"] == "src"


def test_config_is_checked(repo: Path) -> None:
    from expckpt.policy.config import CheckpointConfig

    with pytest.raises(ConfigError, match=r"checkpoint.init_restore must be a list of state names, got 'optimizer'"):
        CheckpointConfig.from_params({"init_restore": "optimizer"})
    with pytest.raises(ConfigError, match=r"checkpoint.init_strict must be true or false"):
        CheckpointConfig.from_params({"init_strict": "no"})
    with pytest.raises(ConfigError, match=r"checkpoint.init_from must be a checkpoint"):
        CheckpointConfig.from_params({"init_from": 5})
    with pytest.raises(ConfigError, match=r"checkpoint.pause_signals must be a list of SIGTERM"):
        CheckpointConfig.from_params({"pause_signals": ["SIGKILL"]})
    with pytest.raises(ConfigError, match=r"checkpoint.pause_deadline must be a positive number"):
        CheckpointConfig.from_params({"pause_deadline": 0})


def test_a_branch_of_a_trial_keeps_its_lineage_without_init_from(repo: Path) -> None:
    """`dvc exp apply ft@1 && dvc exp run` with init_from unset: the chain still names its origin."""
    trial(repo, "ft", 2)
    ckpt, _ = train(repo, "more", 3)
    assert ckpt.resumed is not None and ckpt.resumed.record is not None and ckpt.resumed.record.name == "ft@1"
    assert meta(repo, refs(repo)["more@2"])["initialized_from"] == {
        "exp": "src",
        "step": 1,
        "commit": refs(repo)["src@1"],
    }


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("pwned"),))


def test_a_source_file_that_would_run_code_is_refused(repo: Path) -> None:
    from expckpt.errors import UnsafeCheckpointError

    torch.save({"model": _Boom()}, repo / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        checkpointer(repo, "ft", {"init_from": "evil.pt"}).restore(new_state())
    assert not (repo / "pwned").exists()


def test_a_directory_source_needs_dcp_metadata_and_the_dcp_handler(repo: Path) -> None:
    (repo / "shards").mkdir()
    (repo / "shards" / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"'shards'.*it is a directory without DCP's \.metadata;") as err:
        checkpointer(repo, "ft", {"init_from": "shards"}).restore(new_state())
    assert "\n" not in str(err.value)
    (repo / "shards" / ".metadata").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"is a directory checkpoint \(DCP's shards\), which only DcpHandler loads"):
        checkpointer(repo, "ft", {"init_from": "shards"}).restore(new_state())
    assert "ft@0" not in refs(repo)
