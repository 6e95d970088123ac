#!/usr/bin/env python
"""New bytes per checkpoint: a directory checkpoint output vs a single file (issue #12).

Two models whose weights are mostly frozen, each trained for N steps with a checkpoint every
step, through the real ``Checkpointer`` with the variables ``dvc exp run`` sets, into a real Git
+ DVC repository:

* frozen backbone: 4 frozen 1024x1024 Linear layers and a trained 1024x10 head (Adam on the head);
* LoRA-like: 4 layers whose frozen 1024x1024 base weight carries a trained rank-8 adapter.

Each model is saved both ways at every step (the order alternates), side by side in one run: ``model.pt`` (one file, every byte new at
every step) and ``ckpt/`` (a DVC directory output, one file per frozen/trained part: unchanged
parts are the cache objects already there). Reported per checkpoint, medians over steps 1..N-1
(step 0 stores everything either way): bytes added to the DVC cache, and the time training was
blocked in ``save`` (``checkpoint.async: false``: serialise, hash, write, cache, commit, ref).

    python bench/dedup.py              # N=16
    python bench/dedup.py --steps 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WIDTH = 1024


def cache_bytes(repo: Path) -> dict[str, int]:
    base = repo / ".dvc" / "cache" / "files" / "md5"
    found: dict[str, int] = {}
    for root, _, names in os.walk(base):
        for name in names:
            if ".expckpt-tmp-" not in name:
                found[os.path.join(root, name)] = os.stat(os.path.join(root, name)).st_size
    return found


def build(kind: str) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    if kind == "frozen-backbone":
        layers = OrderedDict((f"l{i}", torch.nn.Linear(WIDTH, WIDTH)) for i in range(4))
        model = torch.nn.Sequential(OrderedDict(backbone=torch.nn.Sequential(layers), head=torch.nn.Linear(WIDTH, 10)))
        model.backbone.requires_grad_(False)
    else:

        class LoRALinear(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.weight = torch.nn.Parameter(torch.randn(WIDTH, WIDTH) / 32, requires_grad=False)
                self.lora_a = torch.nn.Parameter(torch.randn(8, WIDTH) / 32)
                self.lora_b = torch.nn.Parameter(torch.zeros(WIDTH, 8))

            def forward(self, x: Any) -> Any:
                return x @ self.weight.T + (x @ self.lora_a.T) @ self.lora_b.T

        model = torch.nn.Sequential(*[LoRALinear() for _ in range(4)])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, opt


def project(path: Path, env: dict[str, str], out: str) -> Path:
    import yaml

    path.mkdir(parents=True)
    stage = {"cmd": "python train.py", "outs": [{out: {"checkpoint": True, "persist": True}}], "always_changed": True}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    (path / "params.yaml").write_text("checkpoint:\n  every: 1\n")
    C.run(["git", "init", "-q"], cwd=path, env=env)
    C.run(["dvc", "init", "-q"], cwd=path, env=env)
    C.run(["git", "add", "-A"], cwd=path, env=env)
    C.run(["git", "commit", "-qm", "bench"], cwd=path, env=env)
    return path


def setup(kind: str, out: str, base: Path, env: dict[str, str], state: Any) -> tuple[Any, Path]:
    from expckpt.train.checkpointer import Checkpointer

    repo = project(base / f"{kind}-{out.strip('/')}", env, out)
    os.chdir(repo)
    run_env = {**env, "DVC_ROOT": str(repo), "DVC_EXP_NAME": "b", "DVC_EXP_BASELINE_REV": C.head(repo, env), "DVC_STAGE": "train"}
    ckpt = Checkpointer.from_env(out, {"every": 1, "async": False, "keep_last": None}, env=run_env)
    ckpt.echo = lambda line: None
    ckpt.restore(state)
    return ckpt, repo


def measure(kind: str, steps: int, base: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Train once per step and save it both ways, alternating which goes first, so both see the
    same load (this machine is shared)."""
    import torch

    from expckpt import TrainingState

    model, opt = build(kind)
    state = TrainingState(model=model, optimizer=opt)
    outs = ("model.pt", "ckpt/")
    setups = {out: setup(kind, out, base, env, state) for out in outs}
    new_bytes: dict[str, list[int]] = {out: [] for out in outs}
    blocked: dict[str, list[float]] = {out: [] for out in outs}
    before = {out: cache_bytes(repo) for out, (_, repo) in setups.items()}
    for step in range(steps):
        loss = model(torch.randn(16, WIDTH)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for out in outs if step % 2 else reversed(outs):
            ckpt, repo = setups[out]
            os.chdir(repo)
            os.sync()
            start = time.perf_counter()
            ckpt.save(state, step, {"loss": loss.item()})
            blocked[out].append(time.perf_counter() - start)
            after = cache_bytes(repo)
            new_bytes[out].append(sum(size for path, size in after.items() if path not in before[out]))
            before[out] = after
    for ckpt, _ in setups.values():
        ckpt.close(state)
    os.chdir(C.REPO)
    return [{"kind": kind, "out": out, "first": new_bytes[out][0], "new_bytes": statistics.median(new_bytes[out][1:]),
             "blocked": statistics.median(blocked[out][1:]), "all_new_bytes": new_bytes[out], "all_blocked": blocked[out]}
            for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    base = C.workdir("dedup")
    env = C.isolated_env(base / "home", bin_dir=Path(sys.executable).parent)
    C.apply_env(env)
    C.header(f"dedup: new bytes and blocking per checkpoint, directory vs single file ({args.steps} steps)")
    rows = [["model", "checkpoint output", "step 0 bytes", "new bytes / ckpt", "blocked / ckpt", "blocked vs file", "bytes vs file"]]
    results = []
    for kind in ("frozen-backbone", "lora-like"):
        single, directory = measure(kind, args.steps, base, env)
        results += [single, directory]
        for r in (single, directory):
            ratio = single["new_bytes"] / max(r["new_bytes"], 1)
            rows.append([kind, r["out"], f"{r['first'] / 1e6:.2f} MB", f"{r['new_bytes'] / 1e6:.3f} MB",
                         C.ms(r["blocked"]), f"{r['blocked'] / single['blocked']:.2f}",
                         f"{ratio:.1f}x fewer" if r is directory else "1x"])
    print(C.table(rows))
    C.write_result("dedup", {"steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
