"""integrations.ranks: the collectives torchrun ranks agree through, on real gloo process groups
(one rank in this process; two ranks in two processes, marked slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from expckpt.errors import ExpCkptError
from expckpt.integrations.ranks import broadcast, gather, together


@pytest.fixture
def group(tmp_path: Path) -> Iterator[object]:
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_one_rank_broadcasts_gathers_and_runs_the_action_itself(group: object) -> None:
    assert broadcast({"path": "ckpt", "step": 3}, group) == {"path": "ckpt", "step": 3}
    assert gather("rank 0's value", group) == ["rank 0's value"]
    assert together(lambda: 42, 0, 1, group) == 42


def test_one_rank_raises_the_actions_own_error(group: object) -> None:
    def fails() -> None:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match=r"^disk full$"):
        together(fails, 0, 1, group)


def _two_ranks(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        group = dist.group.WORLD
        lines = [f"broadcast {broadcast(f'from {rank}', group)}", f"gather {gather(rank * 10, group)}"]
        ran: list[int] = []
        lines.append(f"together {together(lambda: ran.append(rank) or 'done', rank, 2, group)} ran={ran}")

        def publish() -> str:
            raise OSError("no space left on device")

        try:
            together(publish, rank, 2, group)
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
    assert rank0 == ["broadcast from 0", "gather [0, 10]", "together done ran=[0]", "OSError no space left on device"]
    assert rank1 == ["broadcast from 0", "gather [0, 10]", "together None ran=[]",
                     "ExpCkptError rank 0 failed, so rank 1 stops too: OSError: no space left on device"]
