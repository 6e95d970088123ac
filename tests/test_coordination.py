"""expckpt.train.coordination: who takes part in a checkpoint. ``Solo`` in this process; ``Ranks`` on real
gloo process groups (one rank in this process; two ranks in two processes, marked slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from expckpt.train.coordination import Ranks, Solo, coordinator_from_env
from expckpt.errors import ConfigError, ExpCkptError


def test_solo_runs_every_action_itself() -> None:
    solo = Solo()
    assert (solo.rank, solo.world_size, solo.is_main) == (0, 1, True)
    assert solo.on_main(lambda: 42) == 42 and solo.everyone(lambda: "mine") == "mine"
    assert solo.gather("v") == ["v"]
    solo.same_step(3)  # nothing to disagree with


def test_without_a_process_group_a_world_size_above_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ConfigError,
        match=r"^WORLD_SIZE is 2 but torch.distributed is not initialised; call"
        r" torch.distributed.init_process_group\(\) before creating the checkpointer$",
    ):
        coordinator_from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert isinstance(coordinator_from_env(), Solo)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[object]:
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_one_rank_is_found_and_runs_the_action_itself(group: object) -> None:
    ranks = coordinator_from_env()
    assert isinstance(ranks, Ranks) and (ranks.rank, ranks.world_size, ranks.is_main) == (0, 1, True)
    assert ranks.on_main(lambda: {"path": "ckpt", "step": 3}) == {"path": "ckpt", "step": 3}
    assert ranks.gather("rank 0's value") == ["rank 0's value"]


def test_one_rank_raises_the_actions_own_error(group: object) -> None:
    def fails() -> None:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match=r"^disk full$"):
        Ranks(0, 1, group).everyone(fails)


def _two_ranks(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ranks = coordinator_from_env()
        lines = [f"on_main {ranks.on_main(lambda: f'from {rank}')}", f"gather {ranks.gather(rank * 10)}"]
        lines.append(f"everyone {ranks.everyone(lambda: rank)}")
        try:
            ranks.same_step(2 + rank)
        except ConfigError as exc:
            lines.append(f"ConfigError {exc}")

        def publish() -> str:
            raise OSError("no space left on device")

        try:
            ranks.on_main(publish)
        except ExpCkptError as exc:
            lines.append(f"ExpCkptError {exc}")
        except OSError as exc:
            lines.append(f"OSError {exc}")
        Path(results, f"{rank}.txt").write_text("\n".join(lines) + "\n")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_and_a_failure_on_rank_0_stops_every_rank(tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0 = (tmp_path / "0.txt").read_text().splitlines()
    rank1 = (tmp_path / "1.txt").read_text().splitlines()
    mismatch = "ConfigError ranks completed different steps [2, 3]; call it on every rank with the same step"
    assert rank0 == ["on_main from 0", "gather [0, 10]", "everyone 0", mismatch, "OSError no space left on device"]
    assert rank1 == [
        "on_main from 0",
        "gather [0, 10]",
        "everyone 1",
        mismatch,
        "ExpCkptError rank 0 failed, so rank 1 stops too: OSError: no space left on device",
    ]
