"""dvclive integration: each ``next_step()`` checkpoints the step it completes.

state = TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)
with CheckpointLive.from_env(state, params) as live:     # restores; live.resumed says from what
    for epoch in live.steps(params["epochs"]):           # empty when already trained
        ...
        live.log_metric("acc", acc)
        live.next_step()                                  # -> checkpoint experiment '<exp>@<step>'
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from dvclive import Live

from expckpt.train.checkpointer import Checkpointer, StopTraining
from expckpt.train.resume import Resumed
from expckpt.state.state import TrainingState

__all__ = ["CheckpointLive"]


def _has_checkpoint_section(path: Path) -> bool:
    """Whether the params file ``path`` has a non-empty ``checkpoint`` mapping (unreadable: no)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, Mapping) and isinstance(data.get("checkpoint"), Mapping) and bool(data["checkpoint"])


class CheckpointLive(Live):
    """A dvclive ``Live`` whose ``next_step()`` also saves and publishes a checkpoint.

    It continues dvclive's step from the restored state, so metrics and checkpoints agree; it
    writes no dvc.yaml of its own (declare metrics and plots in dvc.yaml); and on leaving the
    ``with`` block it saves the last step if the save policy skipped it and waits for
    background writes.
    """

    def __init__(self, checkpointer: Checkpointer, state: TrainingState, **kwargs: Any) -> None:
        kwargs.setdefault("dir", checkpointer.live_dir)
        kwargs.setdefault("dvcyaml", None)
        kwargs.setdefault("save_dvc_exp", False)
        kwargs.setdefault("resume", state.step >= 0)
        super().__init__(**kwargs)
        self.checkpointer = checkpointer
        self.state = state
        self.resumed: Resumed | None = checkpointer.resumed
        """What was restored (``None``: a fresh start)."""
        self._in_steps = False
        self._stop: str | None = None
        if state.step >= 0:
            self.step = state.step + 1

    @classmethod
    def from_env(
        cls,
        state: TrainingState | Mapping[str, TrainingState],
        params: Mapping[str, Any] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        **live_kwargs: Any,
    ) -> CheckpointLive:
        """Restore ``state`` from the workspace's checkpoint and start logging after its step.

        ``params`` is the parsed params.yaml (its ``checkpoint`` section configures saving and
        retention); ``path`` defaults to the stage's ``checkpoint: true`` output. A stage with
        several checkpoint outputs passes ``{path: TrainingState}``, published together. The RNG
        states are put back when the first step begins, so seeding before the loop is safe.
        """
        config = params.get("checkpoint") if isinstance(params, Mapping) else None
        paths = (
            [str(p) for p in state] if isinstance(state, Mapping) and path is None else path
        )  # {"model.pt": state, ...}
        checkpointer = Checkpointer.from_env(paths, config, live_dir=live_kwargs.get("dir", "dvclive"))
        if isinstance(params, Mapping) and "checkpoint" not in params and _has_checkpoint_section(Path("params.yaml")):
            checkpointer.echo(  # e.g. vars(args) of an argparse script (issue 22)
                "expckpt: warning: the params given to CheckpointLive.from_env have no 'checkpoint' section but"
                " params.yaml has one, so its settings are not used; pass them too, e.g."
                " {**vars(args), 'checkpoint': yaml.safe_load(open('params.yaml'))['checkpoint']}"
            )
        checkpointer.restore(state, defer_rng=True)
        return cls(checkpointer, checkpointer.handler.group(state), **live_kwargs)  # type: ignore[attr-defined]

    def steps(self, total: int) -> Iterator[int]:
        """The steps left to reach ``total`` (none when already there); stops early on request."""
        start = self.state.step + 1
        if start >= total:
            what = self.checkpointer.rel_path
            print(f"{what} already has {start} steps (total {total}); nothing to train")
            return
        self.state.apply_rng()
        self._in_steps = True
        try:
            for step in range(start, total):
                yield step
                if self._stop:
                    return
        finally:
            self._in_steps = False

    def next_step(self) -> None:
        step = self.step
        metrics = dict(self.summary)
        super().next_step()
        decision = self.checkpointer.save(self.state, step, metrics)
        if decision.stop:
            self._stop = decision.stop
            if not self._in_steps:
                raise StopTraining(decision.stop)

    def pause_point(self) -> None:
        """Call between batches: when a pause was requested (SIGTERM, SIGUSR1, ``expckpt stop``)
        the state is saved as it is now and training ends; leaving the ``with`` block exits 75."""
        if self.checkpointer.pause_point(self.state):
            raise StopTraining(f"paused ({self.checkpointer.pause_requested})")

    def should_pause(self) -> bool:
        """Whether a pause was requested (for loops that save at their own boundary)."""
        return self.checkpointer.pause_requested is not None

    def __enter__(self) -> CheckpointLive:
        # Loops written without live.steps() begin right after entering; steps() puts the RNGs
        # back once more as its first step begins (the latest moment, whatever ran in between).
        self.state.apply_rng(keep=True)
        return super().__enter__()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        try:
            if exc_type is None or exc_type is StopTraining:
                self.checkpointer.close(self.state)
            else:
                self.checkpointer.close()
        finally:
            super().__exit__(exc_type, exc_val, exc_tb)
        return exc_type is StopTraining
