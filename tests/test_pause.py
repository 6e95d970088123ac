"""Pause at the next batch boundary (issue 24, B): SIGTERM/SIGUSR1/``expckpt stop``, exit 75,
and a resume whose later checkpoints are bitwise an uninterrupted run's.

In process: the signals are real (``os.kill`` of this process; pytest runs tests in the main
thread), the repository and the publishing are real; a tiny model trained in batches with a
``DataPosition`` whose epoch order comes from the global torch RNG.
"""

from __future__ import annotations

import re
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from expckpt import phases
from expckpt.state.datapos import DataPosition
from expckpt.train.pause import PAUSED_EXIT, TrainingPaused, paused_mark, request_stop
from expckpt.state.state import TrainingState
from inprocess import checkpointer, dvc_env, new_repo, new_state
from oracle import check_consistent, cli, git, locked_model

SAMPLES, BATCH, TOTAL = 48, 16, 5  # 3 batches a step
Hook = Callable[[int, int], None]


class _Leave(Exception):
    pass


def meta(project: Path, commit: str) -> dict:
    message = git(project, "show", "-s", "--format=%B", commit)
    return json.loads(next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))[14:])


def run(project: Path, exp: str, hook: Hook | None = None, config: dict | None = None) -> tuple[int, list[str]]:
    """Restore, train in batches to TOTAL with a pause point after every batch; (exit status, output)."""
    os.chdir(project)  # the fixtures' monkeypatch.chdir puts the test's directory back
    lines: list[str] = []
    state: TrainingState = new_state()
    position = DataPosition()
    state.add("position", position)
    ckpt = checkpointer(project, exp, config)
    ckpt.echo = lines.append
    ckpt.restore(state)
    ckpt.stop.install()
    status = 0
    try:
        try:
            for step in range(state.step + 1, TOTAL):
                g = torch.Generator().manual_seed(step)
                x, y = torch.randn(SAMPLES, 4, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)
                for b, idx in enumerate(position.batches(step, lambda: torch.randperm(SAMPLES), BATCH)):
                    state.optimizer.zero_grad()
                    nn.functional.cross_entropy(state.model(x[idx]), y[idx]).backward()
                    state.optimizer.step()
                    if hook:
                        hook(step, b)
                    if ckpt.pause_point(state):
                        raise _Leave
                if hook:
                    hook(step, -1)  # between the last batch and the step's save
                loss = nn.functional.cross_entropy(state.model(x), y).item()
                if ckpt.save(state, step, {"loss": loss}).stop:
                    break
        except _Leave:
            pass
        try:
            ckpt.close(state)
        except TrainingPaused as paused:
            status = int(paused.code)  # type: ignore[arg-type]
    finally:
        ckpt.stop.uninstall()
    return status, lines


def checkpoints(project: Path) -> dict[str, str]:
    out = git(project, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    return {ref.rsplit("/", 1)[-1]: sha for ref, sha in (line.split() for line in out.splitlines()) if "@" in ref}


def usr1() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    return project


@pytest.fixture
def reference(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[int, str]:
    """step -> model.pt md5 of one uninterrupted run."""
    project = new_repo(tmp_path_factory, tmp_path / "reference")
    monkeypatch.chdir(project)
    assert run(project, "ref")[0] == 0
    return {int(n.split("@")[1]): locked_model(project, c)[0] for n, c in checkpoints(project).items()}


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_mid_step_saves_there_and_the_resume_is_bitwise(
    repo: Path, reference: dict[int, str], signum: signal.Signals
) -> None:
    status, lines = run(repo, "a", hook=lambda step, b: os.kill(os.getpid(), signum) if (step, b) == (2, 0) else None)

    assert status == PAUSED_EXIT == 75
    found = checkpoints(repo)
    assert sorted(found) == ["a@0", "a@1", "a@2"]
    assert meta(repo, found["a@2"])["paused"] is True and "paused" not in meta(repo, found["a@1"])
    assert any(f"paused by {signum.name} at step 2 (a@2)" in line for line in lines)
    assert paused_mark(repo).read_text() == "a@2\n"
    check_consistent(repo)

    status, lines = run(repo, "b")  # `dvc exp run` after the pause: the workspace holds a@2
    assert status == 0 and not paused_mark(repo).exists()
    resumed = checkpoints(repo)
    assert meta(repo, resumed["b@2"])["parent"] == found["a@2"]
    assert {s: locked_model(repo, resumed[f"b@{s}"])[0] for s in range(2, TOTAL)} == {
        s: reference[s] for s in range(2, TOTAL)
    }


def test_a_signal_at_the_step_boundary_pauses_at_that_step(repo: Path, reference: dict[int, str]) -> None:
    status, _ = run(repo, "a", hook=lambda step, b: usr1() if (step, b) == (1, -1) else None)
    assert status == 75
    found = checkpoints(repo)
    assert sorted(found) == ["a@0", "a@1"] and meta(repo, found["a@1"])["paused"] is True
    assert locked_model(repo, found["a@1"])[0] == reference[1], "a complete step: the uninterrupted run's bytes"
    assert run(repo, "b")[0] == 0
    assert locked_model(repo, checkpoints(repo)["b@4"])[0] == reference[4]


def test_a_second_signal_during_the_pause_save_changes_nothing(repo: Path, reference: dict[int, str]) -> None:
    def again(name: str, step: int) -> None:
        if name == "after-cache":
            usr1()
            os.kill(os.getpid(), signal.SIGTERM)

    unsubscribe = phases.subscribe(again)
    try:
        status, _ = run(
            repo, "a", hook=lambda step, b: (usr1(), phases.subscribe(again)) if (step, b) == (1, 1) else None
        )
    finally:
        unsubscribe()
    assert status == 75
    check_consistent(repo)
    assert run(repo, "b")[0] == 0
    assert locked_model(repo, checkpoints(repo)["b@4"])[0] == reference[4]


def test_expckpt_stop_pauses_the_named_run_only(repo: Path) -> None:
    request_stop(repo, "other")
    assert run(repo, "a", hook=lambda step, b: None)[0] == 0, "a request for another experiment"

    def stop(step: int, b: int) -> None:
        if (step, b) == (1, 1):
            result = cli(repo, "stop", "b")
            assert result.returncode == 0 and "Asked the run of b to pause" in result.stdout

    (repo / "model.pt").unlink()
    status, _ = run(repo, "b", hook=stop)
    assert status == 75 and sorted(n for n in checkpoints(repo) if n.startswith("b@")) == ["b@0", "b@1"]
    bad = cli(repo, "stop", "../x")
    assert bad.returncode == 1 and "cannot be used" in bad.stderr and "\n" not in bad.stderr.strip()


def test_a_stale_stop_request_does_not_pause_the_next_run(repo: Path) -> None:
    request_stop(repo, None)
    time.sleep(0.05)
    assert run(repo, "a")[0] == 0


@pytest.mark.slow
def test_pauses_at_20_random_moments_resume_bitwise(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[int, str]
) -> None:
    """Mid-batch (after any batch of any step), mid-save and mid-publish (any publishing phase of
    any step), each against the one reference run."""
    moments = random.Random(24)
    points = ["after-temp", "after-cache", "after-publish", "after-commit", "after-lock", "after-ref", "after-note"]
    problems = []
    for i in range(20):
        project = new_repo(tmp_path_factory, tmp_path / f"m{i}")
        monkeypatch.chdir(project)
        at_step = moments.randrange(TOTAL - 1)
        if i % 2:
            at_batch = moments.randrange(-1, SAMPLES // BATCH)
            what = f"after batch {at_batch} of step {at_step}"
            hook: Hook | None = lambda step, b, s=at_step, n=at_batch: usr1() if (step, b) == (s, n) else None  # noqa: E731
            listener = None
        else:
            point = moments.choice(points)
            what = f"at {point} of step {at_step}"
            hook = None
            listener = phases.subscribe(
                lambda name, step, p=point, s=at_step: usr1() if (name, step) == (p, s) else None
            )
        try:
            status, _ = run(project, f"p{i}", hook=hook)
        finally:
            if listener:
                listener()
        if status != 75:
            problems.append(f"{what}: exit {status}")
            continue
        check_consistent(project)
        assert run(project, f"r{i}")[0] == 0
        resumed = {int(n.split("@")[1]): c for n, c in checkpoints(project).items() if n.startswith(f"r{i}@")}
        paused = [n for n, c in checkpoints(project).items() if meta(project, c).get("paused")]
        if len(paused) != 1 or not resumed:
            problems.append(f"{what}: paused checkpoints {paused}, resumed steps {sorted(resumed)}")
        for step, commit in resumed.items():
            if locked_model(project, commit)[0] != reference[step]:
                problems.append(f"{what}: resumed step {step} differs from the uninterrupted run")
    assert problems == []


@pytest.mark.slow
def test_no_batch_boundary_before_the_deadline_exits_with_the_last_checkpoint_intact(repo: Path) -> None:
    script = textwrap.dedent("""
        import os, signal, sys, time
        sys.path.insert(0, sys.argv[1])
        from inprocess import checkpointer, new_state, train_step
        state = new_state()
        ckpt = checkpointer(__import__("pathlib").Path.cwd(), "slow", {"pause_deadline": 1})
        ckpt.restore(state)
        ckpt.stop.install()
        ckpt.save(state, 0, train_step(state, 0))
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(30)  # a batch that never ends
    """)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **dvc_env(repo, "slow")},
    )
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr
    assert time.time() - started < 25
    assert "no batch boundary within 1 s of SIGUSR1; exiting now; last complete checkpoint: slow@0" in proc.stderr
    assert sorted(checkpoints(repo)) == ["slow@0"]
    check_consistent(repo)


SBATCH = """\
#!/bin/bash
#SBATCH --job-name=train
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@90       # SIGUSR1 to the job step's processes 90 s before the time limit
#SBATCH --requeue              # let the job requeue itself
#SBATCH --open-mode=append     # one log across requeues
cd "$SLURM_SUBMIT_DIR"
# dvc ignores SIGUSR1 (it would die of it); expckpt's training process takes it over and pauses
srun bash -c 'trap "" USR1; exec dvc exp run'
if [ -e .dvc/tmp/expckpt/paused ]; then   # paused at a batch boundary: continue in a new job
  scontrol requeue "$SLURM_JOB_ID"
fi
"""


@pytest.mark.slow
def test_the_readme_slurm_script_pauses_and_requeues_through_dvc_exp_run(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The README's script, run locally: ``srun`` and ``scontrol`` stand-ins, SIGUSR1 sent to every
    process of the job step (dvc, its shell, train.py; not the batch shell) as SLURM does; the requeued job resumes and ends where an uninterrupted
    run ends."""
    from faultkit import FAST, clone, reference

    assert SBATCH in (Path(__file__).parent.parent / "README.md").read_text()
    expected = reference(tmp_path_factory)
    project = clone(tmp_path_factory, tmp_path / "p")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "requeued $*"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (project / "job.sh").write_text(SBATCH)
    env = {
        **os.environ,
        **FAST,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(project),
        "SLURM_JOB_ID": "42",
    }

    job = subprocess.Popen(
        ["bash", "job.sh"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (
            job.poll() is None
            and time.monotonic() < deadline
            and not any(n.endswith("@0") for n in checkpoints(project))
        ):
            time.sleep(0.05)
        import psutil  # DVC's own dependency

        for proc in psutil.Process(job.pid).children(recursive=True):  # the job step, not the batch shell:
            proc.send_signal(signal.SIGUSR1)  # what slurmstepd does 90 s before the time limit
        output = job.communicate(timeout=300)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert "exited with 75" in output and "requeued requeue 42" in output, output
    paused = [n for n, c in checkpoints(project).items() if meta(project, c).get("paused")]
    assert len(paused) == 1 and (project / ".dvc/tmp/expckpt/paused").read_text() == f"{paused[0]}\n"
    assert re.search(rf"^[╓═] {re.escape(paused[0])} .*\bpaused$", cli(project, "show").stdout, re.M)
    check_consistent(project)

    again = subprocess.run(["bash", "job.sh"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "requeued" not in again.stdout, again.stdout + again.stderr
    assert f"Resuming from model.pt ({paused[0]})" in again.stdout + again.stderr
    from oracle import same_state

    assert same_state(project / "model.pt", expected) == []


@pytest.mark.slow
def test_expckpt_stop_then_expckpt_resume_ends_where_one_run_ends(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """train.py as `dvc exp run -n a` starts it, paused by `expckpt stop a` mid-epoch; `expckpt
    resume a` applies the paused checkpoint and runs `dvc exp run`, which finishes bitwise."""
    from faultkit import FAST, Background, clone, reference
    from faultkit import dvc_env as run_env
    from oracle import same_state

    expected = reference(tmp_path_factory)
    project = clone(tmp_path_factory, tmp_path / "p")
    bg = Background.start(["python", "train.py"], project, run_env(project, "a"))
    bg.wait_for("Checkpoint experiment 'a@0'")
    assert cli(project, "stop", "a").returncode == 0
    assert bg.wait(120) == 75, bg.text()
    paused = [n for n, c in checkpoints(project).items() if meta(project, c).get("paused")]
    assert len(paused) == 1 and paused[0].startswith("a@")
    (project / "model.pt").unlink()  # whatever the workspace holds now: resume brings the pause back

    resumed = subprocess.run(
        ["expckpt", "resume", "a"], cwd=project, capture_output=True, text=True, timeout=300, env={**os.environ, **FAST}
    )  # one thread, as the reference ran

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Continuing {paused[0]} (paused): dvc exp apply" in resumed.stdout
    assert f"Resuming from model.pt ({paused[0]})" in resumed.stdout + resumed.stderr
    assert same_state(project / "model.pt", expected) == []
    unknown = cli(project, "resume", "nope")
    assert unknown.returncode == 1 and "no checkpoint named 'nope'" in unknown.stderr
