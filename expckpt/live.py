"""dvclive integration: ``next_step()`` checkpoints the step it completes.

    state = TrainingState(model=model, optimizer=optimizer)
    checkpointer = Checkpointer.from_env("model.pt", params.get("checkpoint"))
    checkpointer.restore(state)
    with CheckpointLive(checkpointer, state) as live:
        for epoch in range(live.step, params["epochs"]):
            ...
            live.log_metric("acc", acc)
            live.next_step()        # -> checkpoint experiment '<exp>@<step>'
"""

from __future__ import annotations

from typing import Any

from dvclive import Live

from expckpt.checkpointer import Checkpointer, StopTraining
from expckpt.state import TrainingState

__all__ = ["CheckpointLive"]


class CheckpointLive(Live):
    """A dvclive ``Live`` whose ``next_step()`` also saves and publishes a checkpoint.

    It resumes dvclive's step from the restored state, so metrics and checkpoints agree; it
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
        if state.step >= 0:
            self.step = state.step + 1

    def next_step(self) -> None:
        step = self.step
        metrics = dict(self.summary)
        super().next_step()
        self.checkpointer.step_completed(self.state, step, metrics)

    def __enter__(self) -> CheckpointLive:
        self.checkpointer.stop.install()
        return super().__enter__()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        try:
            if exc_type is None or exc_type is StopTraining:
                self.checkpointer.finish(self.state)
            else:
                self.checkpointer.close()
        finally:
            self.checkpointer.stop.uninstall()
            super().__exit__(exc_type, exc_val, exc_tb)
        self.checkpointer.close()
        return exc_type is StopTraining
