"""``checkpoint.init_from`` with ``DcpHandler`` (``expckpt/integrations/dcpinit.py``): two gloo
ranks, FSDP2-sharded, start fresh trials from a DCP directory checkpoint and from a checkpoint
file; every rank ends with the source's weights (compared whole), the optimizer stays fresh (or, with ``init_restore: [optimizer]``, is the source's), a
second start of the same trial resumes its own chain, and shapes that do not fit say so in one
line (or, with ``init_strict: false``, load what fits and print the counts)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from integrationkit import same

pytestmark = pytest.mark.slow


def _model(seed: int, hidden: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


def _sharded(seed: int, hidden: int = 8) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.checkpoint.stateful import Stateful
    from torch.distributed.fsdp import fully_shard

    class ModelState(Stateful):
        def state_dict(self) -> dict[str, Any]:
            return get_model_state_dict(model)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            set_model_state_dict(model, state_dict)

    class OptimizerState(Stateful):
        def state_dict(self) -> dict[str, Any]:
            return get_optimizer_state_dict(model, optimizer)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            set_optimizer_state_dict(model, optimizer, state_dict)

    model = _model(seed, hidden)
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, {"model": ModelState(), "optimizer": OptimizerState()}


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def _full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def _ranks(rank: int, tmp: str) -> None:
    import torch.distributed as dist

    from expckpt import Checkpointer
    from expckpt.errors import ExpCkptError
    from expckpt.integrations.dcp import DcpHandler

    os.chdir(tmp)  # outside any DVC project: the sources are paths
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    seen: dict[str, Any] = {}
    try:
        model, optimizer, state = _sharded(seed=0)
        source = Checkpointer.from_env(f"{tmp}/src/", {"every": 1}, handler=DcpHandler)
        source.restore(state)
        model(torch.randn(4, 6)).sum().backward()
        optimizer.step()
        source.save(state, 0, {"loss": 1.0})
        source.close(state)
        full = _full(model)  # collective: every rank
        torch.save({"model": full, "optimizer": _full_optimizer(model, optimizer)}, f"{tmp}/source{rank}.pt")
        if rank == 0:
            torch.save({"model": full}, f"{tmp}/weights.pt")
        dist.barrier()

        def trial(out: str, spec: str, seed: int, hidden: int = 8, **more: Any) -> tuple[Any, Any, Any]:
            fresh, opt, st = _sharded(seed, hidden)
            ckpt = Checkpointer.from_env(f"{tmp}/{out}/", {"every": 1, "init_from": spec, **more}, handler=DcpHandler)
            resumed = ckpt.restore(st)
            return fresh, opt, (ckpt, st, resumed)

        fresh, opt, (ckpt, st, resumed) = trial("trial", f"{tmp}/src", seed=1)
        seen["dir"] = {"resumed": resumed is None, "optimizer_fresh": not opt.state}
        torch.save({"model": _full(fresh)}, f"{tmp}/dir{rank}.pt")
        fresh(torch.randn(4, 6)).sum().backward()
        opt.step()
        ckpt.save(st, 0, {"loss": 0.5})
        ckpt.close(st)
        again, _, (ckpt2, _, resumed2) = trial("trial", f"{tmp}/src", seed=2)
        seen["again"] = None if resumed2 is None else resumed2.step
        torch.save({"model": _full(again)}, f"{tmp}/again{rank}.pt")
        torch.save({"model": _full(fresh)}, f"{tmp}/trained{rank}.pt")
        ckpt2.close()

        carried, carried_opt, (ckpt5, _, _) = trial("trial3", f"{tmp}/src", seed=5, init_restore=["optimizer"])
        torch.save(
            {"model": _full(carried), "optimizer": _full_optimizer(carried, carried_opt)}, f"{tmp}/carried{rank}.pt"
        )
        ckpt5.close()

        from_file, _, (ckpt3, _, _) = trial("trial2", "weights.pt", seed=3)
        torch.save({"model": _full(from_file)}, f"{tmp}/file{rank}.pt")
        ckpt3.close()

        for name, strict in (("strict", True), ("loose", False)):
            try:
                _, _, (ckpt4, _, _) = trial(f"wide-{name}", f"{tmp}/src", seed=4, hidden=9, init_strict=strict)
                ckpt4.close()
                seen[name] = "loaded"
            except ExpCkptError as exc:
                seen[name] = str(exc)
    finally:
        Path(f"{tmp}/seen{rank}.json").write_text(json.dumps(seen))
        dist.destroy_process_group()


def test_two_ranks_start_fresh_trials_from_a_dcp_directory_and_a_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    context = mp.start_processes(_ranks, args=(str(tmp_path),), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hung")
    out = capfd.readouterr().out
    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in (0, 1)]
    source_all = torch.load(tmp_path / "source0.pt", weights_only=True)
    source = source_all["model"]
    assert not same(source, _model(1).state_dict()), "the fresh model differs before init_from"
    for r in (0, 1):
        assert seen[r]["dir"] == {"resumed": True, "optimizer_fresh": True}  # a fresh start; AdamW untouched
        carried = torch.load(tmp_path / f"carried{r}.pt", weights_only=True)
        assert same(carried, source_all), "init_restore: [optimizer] carries AdamW's moments and step too"
        for what in ("dir", "file"):
            assert same(torch.load(tmp_path / f"{what}{r}.pt", weights_only=True)["model"], source), (what, r)
        # the second start holds the trial's own step 0: it resumes that, not the source again
        assert seen[r]["again"] == 0
        trained = torch.load(tmp_path / f"trained{r}.pt", weights_only=True)["model"]
        assert same(torch.load(tmp_path / f"again{r}.pt", weights_only=True)["model"], trained)
        assert not same(trained, source)
        assert seen[r]["strict"].count("\n") == 0
        assert (
            "0.weight is [8, 6] in the source but [9, 6] in the model" in seen[r]["strict"]
            and "init_strict: false" in seen[r]["strict"]
        ), seen[r]["strict"]
        assert seen[r]["loose"] == "loaded"
    assert out.count("expckpt: fresh trial from ") == 4, out  # rank 0 says it, for the 3 trials + the loose one
    assert out.count("its weights and optimizer; step 0") == 1, out
    assert "loaded 1 keys, 3 missing (kept fresh, 3 of them with another shape), 0 unexpected (ignored)" in out, out
    assert not [q for q in tmp_path.iterdir() if ".expckpt-tmp-" in q.name]  # the staging directories are gone
