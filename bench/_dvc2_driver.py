"""Run by bench/dvc2_blocking.sh with bench/.venv-dvc2's Python (DVC 2.58.2); see that script.

Builds a Git + DVC 2 repository whose stage has a ``checkpoint: true`` output, runs
``dvc exp run`` on it, and the training process (``train2.py`` below, no dvclive) times, for
each checkpoint, ``torch.save(state, "model.pt")`` and then ``dvc.api.make_checkpoint()``,
which writes .dvc/tmp/DVC_CHECKPOINT and sleeps until DVC has committed the experiment and
removed the file. DVC 2's monitor thread looks for that file once a second.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TRAIN2 = textwrap.dedent(
    '''
    """DVC 2 checkpoint loop: torch.save the state, then dvc.api.make_checkpoint()."""
    import json, os, sys, time
    import torch
    from torch import nn
    from dvc.api import make_checkpoint

    checkpoints, megabytes, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    WIDTH = 1024
    per_layer = (WIDTH * WIDTH + WIDTH) * 4 * 3  # same state as bench/blocking.py
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rows = []
    for step in range(checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-4)
        os.sync()
        start = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "model.pt")
        saved = time.perf_counter()
        os.sync()
        called = time.perf_counter()
        make_checkpoint()
        returned = time.perf_counter()
        rows.append({"step": step, "torch_save": saved - start, "make_checkpoint": returned - called})
        print(f"step {step}: torch.save {1000 * (saved - start):.1f} ms, make_checkpoint {1000 * (returned - called):.1f} ms", flush=True)
    with open(out, "w") as handle:
        json.dump({"file_bytes": os.path.getsize("model.pt"), "rows": rows}, handle)
    '''
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DVC 2.58.2 blocking time per checkpoint")
    parser.add_argument("--checkpoints", type=int, default=11, help="checkpoints to take (the first is reported apart)")
    parser.add_argument("--size-mb", type=int, default=12)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    C.header(f"DVC 2.58.2 blocking time per checkpoint ({args.size_mb} MB state, make_checkpoint)")
    bin_dir = Path(sys.executable).parent
    root = C.workdir("dvc2", keep=args.keep)
    env = C.isolated_env(root / "home", bin_dir=bin_dir)
    repo = root / "repo"
    repo.mkdir()
    (repo / "train2.py").write_text(TRAIN2)
    timings = root / "timings.json"
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n"
        f"    cmd: python train2.py {args.checkpoints} {args.size_mb} {timings}\n"
        "    deps:\n      - train2.py\n"
        "    outs:\n      - model.pt:\n          checkpoint: true\n"
    )
    C.run(["git", "init", "-q"], cwd=repo, env=env)
    C.run(["dvc", "init", "-q"], cwd=repo, env=env)
    C.run(["git", "add", "-A"], cwd=repo, env=env)
    C.run(["git", "commit", "-qm", "dvc 2 checkpoint project"], cwd=repo, env=env)
    version = C.run(["dvc", "--version"], cwd=repo, env=env).stdout.strip()

    wall, proc = C.timed_run(["dvc", "exp", "run", "-n", "dvc2ckpt"], cwd=repo, env=env, check=False)
    if proc.returncode != 0 or not timings.exists():
        reason = f"`dvc exp run` (DVC {version}) exited {proc.returncode}: {proc.stderr.strip()[-800:]}"
        print(reason, file=sys.stderr)
        C.write_result("dvc2_blocking", {"status": "failed", "reason": reason, "stdout": proc.stdout[-4000:]},
                       packages=("dvc", "torch", "dulwich", "pygit2", "scmrepo"), command=_command())
        return 1
    data = json.loads(timings.read_text())
    rows = data["rows"]
    refs = C.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, env=env).stdout.split()
    exp_ref = next((r for r in refs if r.endswith("/dvc2ckpt")), None)
    commits = int(C.run(["git", "rev-list", "--count", exp_ref, "^HEAD"], cwd=repo, env=env).stdout) if exp_ref else 0
    first, timed = rows[0], rows[1:]
    save = C.summary(r["torch_save"] for r in timed)
    mk = C.summary(r["make_checkpoint"] for r in timed)
    total = C.summary(r["torch_save"] + r["make_checkpoint"] for r in timed)
    result = {
        "status": "ok",
        "dvc_version": version,
        "size_mb": args.size_mb,
        "checkpoint_file_bytes": data["file_bytes"],
        "checkpoints": len(rows),
        "experiment_refs_after_run": refs,
        "checkpoint_commits_on_experiment": commits,
        "dvc_exp_run_wall_s": wall,
        "first_checkpoint": first,
        "torch_save_s": save,
        "make_checkpoint_s": mk,
        "save_plus_make_checkpoint_s": total,
        "make_checkpoint_ratio": mk["median"] / save["median"],
        "save_plus_make_checkpoint_ratio": total["median"] / save["median"],
    }
    print(C.table([
        ["DVC 2.58.2", "median", "min", "max", "vs torch.save"],
        ["torch.save(model.pt)", C.ms(save["median"]), C.ms(save["min"]), C.ms(save["max"]), "1.00x"],
        ["make_checkpoint()", C.ms(mk["median"]), C.ms(mk["min"]), C.ms(mk["max"]), f"{result['make_checkpoint_ratio']:.1f}x"],
        ["torch.save + make_checkpoint", C.ms(total["median"]), C.ms(total["min"]), C.ms(total["max"]),
         f"{result['save_plus_make_checkpoint_ratio']:.1f}x"],
    ]))
    print(f"\n{len(timed)} checkpoints after the first ({C.ms(first['make_checkpoint'])} for make_checkpoint); "
          f"{commits} checkpoint commits on {exp_ref}; dvc exp run took {C.secs(wall)} in all.")
    print("DVC 3 + expckpt on the same state: see bench/results/blocking.json (sync / async ratio to torch.save).")
    C.write_result("dvc2_blocking", result, packages=("dvc", "torch", "dulwich", "pygit2", "scmrepo"), command=_command())
    return 0


def _command() -> str:
    return f"cd {C.REPO} && bash bench/dvc2_blocking.sh {shlex.join(sys.argv[1:])}".rstrip()


if __name__ == "__main__":
    raise SystemExit(main())
