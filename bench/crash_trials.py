#!/usr/bin/env python
"""Randomized crash trials: the long form of tests/test_faults.py (a script, not a test).

Each trial copies one prepared project (the example pipeline, ``--epochs`` epochs, data made by
``dvc repro download`` and committed), starts training in it and SIGKILLs it, either

- at a crash point of ``expckpt.faults`` (random point, random step: ``EXPCKPT_CRASH_AT``), or
- at a random moment (the whole process group: ``dvc exp run`` and train.py together), chosen
  uniformly, counted from the first ``epoch`` line, over the training of an uninterrupted run
  (its first ``epoch`` line to its last checkpoint line, measured once at the start) +30%,
  plus ``--dvc-tail`` seconds of DVC's own work for ``dvc exp run`` trials,

running train.py directly with the variables ``dvc exp run`` sets, or every ``--dvc-every``-th
trial through the real ``dvc exp run``, in synchronous or (``--async-share``) asynchronous
checkpoint mode. After the kill it checks:

1. every checkpoint ref resolves to a commit whose dvc.lock names a model.pt object that is in
   the DVC cache and hashes to its name (checked independently, and by ``expckpt verify --all``);
2. no temp file (``.expckpt-tmp-``) is a ref, a row of ``expckpt list``, or in a commit;
3. the checkpoints form an unbroken run of steps 0..k (for a crash point: exactly the expected
   k), and the run started again resumes from the last complete one (step k + 1), finishes,
   and ends with model and optimizer tensors bitwise equal to an uninterrupted run's.

The checks are tests/oracle.py's, the same the fault, signal and workflow tests make.

    python bench/crash_trials.py --trials 100     # the long form (~20-40 min on 2 cores)
    python bench/crash_trials.py --trials 5       # a quick look (~2 min)

Prints one line per trial, then trials/failures and the command; writes
bench/results/crash_trials.json. Exit status 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
import _common as C  # noqa: E402
import oracle  # noqa: E402  (tests/oracle.py: the crash-safety checks the tests make)
from expckpt.faults import POINTS  # noqa: E402

EXP = "trial"


class TrialFailure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise TrialFailure(message)


# -- running things ----------------------------------------------------------------------------------
def git(project: Path, env: dict[str, str], *args: str, check_rc: bool = True) -> str:
    return C.run(["git", *args], cwd=project, env=env, check=check_rc).stdout


def trial_env(base: dict[str, str], project: Path, head: str, runner: str, extra: dict[str, str]) -> dict[str, str]:
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    if runner == "direct":
        env.update(DVC_ROOT=str(project), DVC_EXP_NAME=EXP, DVC_EXP_BASELINE_REV=head, DVC_STAGE="train")
    return env


def command(runner: str, name: str = EXP) -> list[str]:
    return ["python", "train.py"] if runner == "direct" else ["dvc", "exp", "run", "-n", name]


def dvc_finished(project: Path, env: dict[str, str]) -> bool:
    """Whether DVC wrote its own experiment ref for the trial (it does so once training is done)."""
    refs = git(project, env, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return any(ref.rsplit("/", 1)[-1] == EXP and not ref.startswith("refs/exps/exec/") for ref in refs)


def run_and_kill(args: list[str], project: Path, env: dict[str, str], delay: float | None, timeout: float) -> tuple[int, str, str, bool]:
    """Run ``args`` in its own process group; with ``delay``, SIGKILL the group that many seconds
    after the first ``epoch`` line. Return (exit status, stdout, stderr, killed by us)."""
    proc = subprocess.Popen(args, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    started = threading.Event()

    def pump(stream, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line)
            if watch and line.startswith("epoch "):
                started.set()

    threads = [threading.Thread(target=pump, args=(proc.stdout, out, True), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, False), daemon=True)]
    for t in threads:
        t.start()
    killed = False
    if delay is not None:
        deadline = time.monotonic() + timeout
        while not started.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
        if started.is_set():
            time.sleep(delay)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        raise TrialFailure(f"{args} did not finish in {timeout} s")
    finally:
        for t in threads:
            t.join(10)
    if killed:  # the group: no straggler (a git child) may outlive the kill
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return code, "".join(out), "".join(err), killed


# -- the oracle ------------------------------------------------------------------------------------------
def check_invariants(project: Path) -> list[int]:
    """Invariants 1 and 2; return the steps of the trial's checkpoints (an unbroken 0..k)."""
    problems = oracle.consistency_problems(project) + oracle.unbroken_problems(project, EXP)
    check(not problems, "; ".join(problems))
    return oracle.steps(project, EXP)


# -- setup and one trial ------------------------------------------------------------------------------
def prepare(root: Path, env: dict[str, str], epochs: int) -> tuple[Path, Path, float]:
    """The template project, and model.pt of an uninterrupted run with its training time."""
    template = C.make_project(root / "template", env, epochs=epochs)
    C.run(["dvc", "repro", "download"], cwd=template, env=env)
    C.run(["git", "add", "dvc.lock"], cwd=template, env=env)
    C.run(["git", "commit", "-qm", "download stage"], cwd=template, env=env)
    straight = root / "straight"
    shutil.copytree(template, straight, symlinks=True)
    head = C.head(straight, env)
    proc = subprocess.Popen(command("direct"), cwd=straight, env=trial_env(env, straight, head, "direct", {}), stdout=subprocess.PIPE, text=True)
    first = last = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if first is None and line.startswith("epoch "):
            first = time.monotonic()
        if line.startswith("Checkpoint experiment"):
            last = time.monotonic()
    check(proc.wait() == 0 and first is not None and last is not None, "the uninterrupted run failed")
    return template, straight / "model.pt", last - first  # type: ignore[operator]


def one_trial(i: int, rng: random.Random, args: argparse.Namespace, root: Path, env: dict[str, str],
              template: Path, reference: Path, training_time: float) -> dict[str, Any]:
    runner = "dvc" if args.dvc_every and i % args.dvc_every == 0 else "direct"
    async_save = rng.random() < args.async_share
    kind = "point" if rng.random() < 0.5 else "delay"
    trial: dict[str, Any] = {"trial": i, "runner": runner, "async": async_save, "kind": kind}
    if kind == "point":
        trial["point"], trial["step"] = rng.choice(POINTS), rng.randrange(args.epochs)
        extra, delay = {"EXPCKPT_CRASH_AT": f"{trial['point']}:{trial['step']}"}, None
    else:
        # over training (first epoch line to last checkpoint line) +30%, which reaches into
        # train.py's exit; through DVC also over DVC's own work after train.py exits
        span = training_time * 1.3 + (args.dvc_tail if runner == "dvc" else 0)
        trial["delay"] = round(rng.uniform(0, span), 3)
        extra, delay = {}, trial["delay"]
    project = root / f"trial-{i:03d}"
    shutil.copytree(template, project, symlinks=True)
    if async_save:
        import yaml

        params = yaml.safe_load((project / "params.yaml").read_text())
        params["checkpoint"] = {**params["checkpoint"], "async": True}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    head = C.head(project, env)
    started = time.monotonic()
    try:
        code, out, err, killed = run_and_kill(command(runner), project, trial_env(env, project, head, runner, extra), delay, args.timeout)
        trial["crash_exit"] = code
        trial["killed_by_timer"] = killed
        if kind == "point":
            check(code == -signal.SIGKILL if runner == "direct" else code != 0, f"the crash point did not fire (exit {code}): {err[-500:]}")
        elif not killed:
            check(code == 0, f"the run ended on its own with exit {code} before the kill: {err[-500:]}")
        steps = check_invariants(project)
        last = steps[-1] if steps else None
        trial["last_complete"] = last
        if kind == "point":
            expected = trial["step"] if trial["point"] == "after-ref" else trial["step"] - 1
            check(last == (expected if expected >= 0 else None), f"expected last complete step {expected}, found {last}")

        # Killed after DVC recorded the finished experiment: `dvc exp run -n trial` would now
        # refuse the name (it exists), so the next run gets another one, as a user would do.
        again = EXP
        if runner == "dvc" and dvc_finished(project, env):
            check(last == args.epochs - 1, f"DVC recorded experiment {EXP} finished, but its last checkpoint is {last}")
            again = trial["rerun_as"] = f"{EXP}-again"
        code, out, err, _ = run_and_kill(command(runner, again), project, trial_env(env, project, head, runner, {}), None, args.timeout)
        check(code == 0, f"the resumed run exited {code}: {err.strip()[-800:]}")
        check("Traceback" not in err, f"traceback in the resumed run: {err[-800:]}")
        trial["resumed_at"] = oracle.resumed_from(out)[1]
        problems = oracle.resume_problems(out, EXP, last, args.epochs)
        check(not problems, "; ".join(problems) + f":\n{out[-800:]}")
        problems = oracle.final_problems(project, EXP, args.epochs, reference)
        check(not problems, "; ".join(problems[:5]))
        trial["ok"] = True
    except TrialFailure as exc:
        trial["ok"] = False
        trial["failure"] = str(exc)
        trial["project"] = str(project)
    trial["seconds"] = round(time.monotonic() - started, 2)
    if trial["ok"] and not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    return trial


def describe(trial: dict[str, Any]) -> str:
    how = f"{trial['point']}:{trial['step']}" if trial["kind"] == "point" else f"kill +{trial['delay']:.2f}s"
    mode = f"{trial['runner']}{'/async' if trial['async'] else ''}"
    if not trial["ok"]:
        return f"trial {trial['trial']:3d}  {mode:13s} {how:20s} FAILED: {trial['failure'].splitlines()[0][:200]}"
    last = trial.get("last_complete")
    return (f"trial {trial['trial']:3d}  {mode:13s} {how:20s} ok  last complete {'-' if last is None else last},"
            f" resumed at {trial['resumed_at']}, {trial['seconds']:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dvc-every", type=int, default=10, help="every N-th trial runs through `dvc exp run` (0: never)")
    parser.add_argument("--async-share", type=float, default=0.3, help="share of trials in async checkpoint mode")
    parser.add_argument("--dvc-tail", type=float, default=4, help="seconds added to the kill window of `dvc exp run` trials (DVC's work after training)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep every trial's project (failed ones are always kept)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    if args.seed is None:
        sys.argv += ["--seed", str(seed)]  # so the printed command reproduces this run
    rng = random.Random(seed)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== crash trials: {args.trials} randomized SIGKILLs, seed {seed}")
    print(f"   {os.cpu_count()} cores; load average now {load}\n")
    root = C.workdir("crash-trials", keep=True)
    env = C.isolated_env(root / "home")
    C.apply_env(env)  # the oracle (git, in-process `expckpt verify`/`list`) sees the same HOME and identity
    start = time.monotonic()
    template, reference, training_time = prepare(root, env, args.epochs)
    print(f"prepared in {time.monotonic() - start:.0f} s; an uninterrupted run trains and checkpoints for {training_time:.2f} s\n", flush=True)

    trials = []
    for i in range(args.trials):
        trial = one_trial(i, rng, args, root, env, template, reference, training_time)
        trials.append(trial)
        print(describe(trial), flush=True)

    failures = [t for t in trials if not t["ok"]]
    by_kind: dict[str, int] = {}
    for t in trials:
        key = t["point"] if t["kind"] == "point" else "random delay"
        by_kind[key] = by_kind.get(key, 0) + 1
    elapsed = time.monotonic() - start
    print()
    print(f"trials: {len(trials)}, failures: {len(failures)}  ({elapsed / 60:.1f} min)")
    print("   " + ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items()))
          + f"; through dvc exp run: {sum(t['runner'] == 'dvc' for t in trials)}"
          + f"; async: {sum(t['async'] for t in trials)}")
    for t in failures:
        print(f"   FAILED trial {t['trial']} ({t['project']}): {t['failure']}")
    C.write_result("crash_trials", {
        "seed": seed,
        "trials": len(trials),
        "failures": len(failures),
        "minutes": round(elapsed / 60, 1),
        "by_kind": by_kind,
        "runs": trials,
    })
    if not failures:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
