#!/usr/bin/env python
"""Resume start-up: from ``dvc exp run`` start to the first *resumed* training step, vs a fresh
run's start-up (to its first training step) plus one ``torch.load`` of the checkpoint.
Target: resumed <= 1.2x (fresh + torch.load).

How "first training step" is detected (soundly, without touching train.py or dvc.yaml): the
runs get ``PYTHONPATH=bench/_hooks`` whose sitecustomize.py, in the process that imports torch
(the training process; DVC never imports it), wraps ``torch.randperm`` once: train.py's
``train_epoch`` calls it first thing, so its first call stamps the wall-clock time the first
step begins (the caller's name is recorded and checked to be ``train_epoch``). The time from
just before ``dvc exp run`` is launched to that stamp is the start-up. Both variants pay the
same hook; PYTHONUNBUFFERED=1 is set for both so output lines are timestamped as they appear
(the ``Resuming from`` line then shows when restoring finished).

One repository (example project, download stage run and committed). Each repetition:
fresh = workspace reset, ``dvc exp run -n fresh<i> -S epochs=2``; resume = ``dvc exp run -n
resume<i> -S epochs=3`` right after it, which resumes from the fresh run's last checkpoint.
``torch.load`` is timed in a new Python process (first load after ``import torch``, as a
hand-written resume would pay it), ``weights_only=True, map_location="cpu"`` as expckpt loads.

    python bench/resume.py                   # 3 repetitions
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from overhead import prepare, reset_workspace, timed_lines  # noqa: E402

TARGET = 1.2
LOAD = (
    "import sys, time, torch\n"
    "start = time.perf_counter()\n"
    "torch.load(sys.argv[1], map_location='cpu', weights_only=True)\n"
    "print(time.perf_counter() - start)\n"
)


def one(repo: Path, env: dict[str, str], mark: Path, name: str, epochs: int) -> dict[str, Any]:
    mark.unlink(missing_ok=True)
    os.sync()
    launched = time.time()
    wall, lines, rc, err = timed_lines(["dvc", "exp", "run", "-n", name, "-S", f"epochs={epochs}"], repo, env)
    if rc != 0:
        raise RuntimeError(f"dvc exp run -n {name} exited {rc}:\n{err[-3000:]}")
    stamps = mark.read_text().split() if mark.exists() else []
    if len(stamps) < 2 or stamps[1] != "train_epoch":
        raise RuntimeError(f"no first-step stamp from train_epoch in {mark}: {stamps}")
    resumed = next((t for t, line in lines if line.startswith("Resuming from")), None)
    first_epoch_line = next((t for t, line in lines if line.startswith("epoch ")), None)
    return {
        "name": name,
        "epochs": epochs,
        "to_first_step_s": float(stamps[0]) - launched,
        "to_resuming_line_s": resumed,
        "to_first_epoch_line_s": first_epoch_line,
        "wall_s": wall,
        "resumed": resumed is not None,
    }


def torch_load_time(path: Path, env: dict[str, str]) -> float:
    proc = C.run([str(C.VENV_BIN / "python"), "-c", LOAD, str(path)], cwd=path.parent, env={**env, "PYTHONPATH": ""})
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    C.header("resume start-up: dvc exp run -> first resumed step vs fresh start-up + torch.load")
    root = C.workdir("resume", keep=args.keep)
    env = C.isolated_env(root / "home")
    repo = prepare(root, env, 2)
    mark = root / "first-step.txt"
    env.update(PYTHONPATH=str(C.BENCH / "_hooks"), BENCH_FIRST_STEP_FILE=str(mark), PYTHONUNBUFFERED="1")

    fresh, resumed, loads = [], [], []
    for rep in range(args.reps):
        reset_workspace(repo, env)
        fresh.append(one(repo, env, mark, f"fresh{rep}", 2))
        loads.append(torch_load_time(repo / "model.pt", env))
        resumed.append(one(repo, env, mark, f"resume{rep}", 3))
        if not resumed[-1]["resumed"]:
            raise RuntimeError("the second run did not resume (no 'Resuming from' line)")
        print(f"   rep {rep + 1}: fresh {C.secs(fresh[-1]['to_first_step_s'])} to first step, torch.load {C.ms(loads[-1])},"
              f" resumed {C.secs(resumed[-1]['to_first_step_s'])} to first step", flush=True)

    f = C.summary(r["to_first_step_s"] for r in fresh)
    r = C.summary(r["to_first_step_s"] for r in resumed)
    load = C.summary(loads)
    base = f["median"] + load["median"]
    ratio = r["median"] / base
    resuming_line = C.summary(x["to_resuming_line_s"] for x in resumed)
    rows = [
        ["", "median", "min", "max"],
        ["fresh: dvc exp run -> first step", C.secs(f["median"]), C.secs(f["min"]), C.secs(f["max"])],
        ["torch.load(model.pt) in a new process", C.ms(load["median"]), C.ms(load["min"]), C.ms(load["max"])],
        ["resumed: dvc exp run -> first resumed step", C.secs(r["median"]), C.secs(r["min"]), C.secs(r["max"])],
        ["resumed: dvc exp run -> 'Resuming from' line", C.secs(resuming_line["median"]), C.secs(resuming_line["min"]), C.secs(resuming_line["max"])],
    ]
    print()
    print(C.table(rows))
    print(f"\nresumed / (fresh + torch.load) = {r['median']:.2f} / {base:.2f} = {ratio:.2f}x"
          f" (target <= {TARGET}x: {C.verdict(ratio, TARGET)}); model.pt is {(repo / 'model.pt').stat().st_size / 1e3:.0f} kB")
    C.write_result("resume", {
        "repetitions": args.reps,
        "fresh_to_first_step_s": f,
        "torch_load_s": load,
        "resumed_to_first_step_s": r,
        "resumed_to_resuming_line_s": resuming_line,
        "ratio": ratio,
        "target": TARGET,
        "checkpoint_bytes": (repo / "model.pt").stat().st_size,
        "runs": {"fresh": fresh, "resumed": resumed},
        "method": "first call of torch.randperm (train_epoch's first statement) stamped by bench/_hooks/sitecustomize.py",
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
