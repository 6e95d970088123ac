"""The front ends of the contract suite (``tests/test_contract.py``): how to make each one's project,
which steps a run completes, and what of a checkpoint must be bitwise equal after a resume.

Every front end is a real example trained by a real ``dvc exp run``: the plain loop
(``examples/plain``), ``CheckpointLive`` (the repository's own pipeline), torchrun DDP and sharded
DCP with 2 gloo processes, Lightning and the HF ``Trainer``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import make_project, run
from integrationkit import checkpoint_refs, make_example_project, payload, training_state

EPOCHS = 5


@dataclass(frozen=True)
class FrontEnd:
    name: str
    example: str | None
    """``examples/<example>``, or None for the repository's own pipeline (``CheckpointLive``)."""
    monitor: str
    loss: str
    output: str = "model.pt"
    steps_per_epoch: int = 1
    """HF numbers checkpoints by global step: 23 batches per epoch of its example, one save each."""
    every: int = 2
    """Chosen so that the last step is not one the interval saves (the final save must)."""
    env: dict[str, str] = field(default_factory=dict)
    ranks: int = 1

    def steps(self) -> list[int]:
        """The steps a full run completes, in order."""
        return [self.steps_per_epoch * (n + 1) if self.steps_per_epoch > 1 else n for n in range(EPOCHS)]

    def saved(self) -> list[int]:
        """What the save policy saves of them: every ``every``-th, and the last one (the final save)."""
        steps = self.steps()
        chosen = [s for s in steps if (s + 1) % self.every == 0]  # the core's rule, on the step number
        return chosen if chosen[-1] == steps[-1] else [*chosen, steps[-1]]

    def checkpoint(self, **more: Any) -> dict[str, Any]:
        return {"every": self.every, "keep_last": 1, "keep_best": 1, "monitor": self.monitor, "mode": "max", **more}

    def make(self, path: Path) -> Path:
        if self.example is None:
            return make_project(path, epochs=EPOCHS, checkpoint=self.checkpoint())
        return make_example_project(path, self.example, epochs=EPOCHS, checkpoint=self.checkpoint())

    def exact(self, project: Path, commit: str, tmp: Path) -> Any:
        """What must be bitwise equal between a resumed run's checkpoint and an uninterrupted one's."""
        if self.name == "dcp":
            from test_integration_dcp import dcp_state

            return dcp_state(project, commit, tmp)
        state = payload(project, commit, self.output)
        if self.name == "hf":
            from test_integration_hf import exact_state

            return exact_state(state)
        return training_state(state)


FRONT_ENDS = [
    FrontEnd("plain", "plain", monitor="acc", loss="loss"),
    FrontEnd("live", None, monitor="acc", loss="loss"),
    FrontEnd("ddp", "ddp", monitor="acc", loss="loss", ranks=2),
    FrontEnd("dcp", "dcp", monitor="acc", loss="loss", output="ckpt", ranks=2),
    FrontEnd("lightning", "lightning", monitor="val_acc", loss="val_loss"),
    FrontEnd(
        "hf",
        "hf",
        monitor="eval_accuracy",
        loss="eval_loss",
        steps_per_epoch=23,
        every=3,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    ),
]


def _run_processes(exp: str, project: Path) -> list[int]:
    """Every process of the ``dvc exp run -n exp`` under way in ``project``: torchrun starts its
    workers in sessions of their own, so a process-group kill misses them; their environment
    names the run and its project (other tests may run an experiment of the same name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"DVC_EXP_NAME={exp}".encode() in environ and f"DVC_ROOT={project}".encode() in environ:
            found.append(int(entry.name))
    return found


def start(project: Path, exp: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ["dvc", "exp", "run", "-n", exp, *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(
    project: Path,
    base: str,
    exp: str,
    proc: subprocess.Popen,
    ready: Callable[[dict[int, str]], bool],
    timeout: float = 600,
) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(checkpoint_refs(project, base, exp)):
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{exp}: not ready (rc {proc.poll()}):\n{proc.communicate()[0] if proc.poll() is not None else ''}"
    )


def kill_tree(proc: subprocess.Popen, exp: str, project: Path) -> str:
    """SIGKILL ``dvc exp run`` and every process of its run, at once."""
    pids = [proc.pid, *_run_processes(exp, project)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    output = proc.communicate()[0]
    for pid in _run_processes(exp, project):  # none may linger and write on
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60  # gone, as after a real kill: DVC's lock names live pids only
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return output


def signal_training(exp: str, project: Path, signum: int) -> list[int]:
    """Send ``signum`` to the training processes of the run (not to ``dvc`` itself)."""
    pids = []
    for pid in _run_processes(exp, project):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"train.py" in cmdline and b"torchrun" not in cmdline and b"torch.distributed.run" not in cmdline:
            pids.append(pid)
    for pid in pids:
        os.kill(pid, signum)
    return pids


def back_to_branch(project: Path) -> None:
    """DVC leaves HEAD detached at the baseline when a run is killed; go back as a user would."""
    lock = project / ".git" / "index.lock"
    deadline = time.monotonic() + 30
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    run("git", "checkout", "-q", "main", cwd=project)
