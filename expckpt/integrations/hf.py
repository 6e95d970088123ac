"""Hugging Face ``Trainer``: each Trainer save a checkpoint experiment, and resume found for you.

    from expckpt.integrations.hf import ExpCkptTrainerCallback

    expckpt_cb = ExpCkptTrainerCallback("model.pt", params.get("checkpoint"))
    trainer = Trainer(model=model, args=args, ..., callbacks=[expckpt_cb])
    trainer.train(resume_from_checkpoint=expckpt_cb.resume_from_checkpoint)   # None on a fresh start

Whenever the Trainer saves (``save_strategy``/``save_steps``), it writes ``checkpoint-<step>/`` in
``output_dir``; the callback then logs the step's metrics (from ``state.log_history``) with
dvclive at step = ``global_step`` and hands the step to expckpt's ``Checkpointer``, which publishes
``<exp>@<global_step>`` and applies retention. The checkpoint file holds the model's weights and
the rest of that directory (optimizer, scheduler, scaler, RNG states, ``trainer_state.json``) as
byte tensors, so it loads with ``weights_only=True``; ``training_args.bin`` (a pickle) is left
out: the arguments come from your script.

When the ``Trainer`` is built inside ``dvc exp run``, the callback restores the last (or the
applied) checkpoint and writes it back as a Trainer checkpoint directory
(``<output_dir>/.expckpt-resume/checkpoint-<step>``) that ``Trainer.train`` resumes from with its
own machinery (optimizer, scheduler, data position, RNG): exact, also mid-epoch. The Trainer
reads those files with ``weights_only=True`` and safetensors. It also sets
``args.resume_from_checkpoint``, which HF's example scripts pass to ``train()``.

Retention: with no ``checkpoint:`` section given, ``save_total_limit`` becomes ``keep_last`` and
``metric_for_best_model``/``greater_is_better`` become ``monitor``/``mode`` with ``keep_best: 1``
(``config_from_training_args``). The Trainer's own ``checkpoint-*`` directories are only a cache
of the last save(s): keep ``output_dir`` out of Git and ``save_total_limit`` small.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from expckpt.checkpointer import Checkpointer
from expckpt.integrations.loop import StepLog, training_state

__all__ = ["ExpCkptTrainerCallback", "TrainerFiles", "config_from_training_args"]

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
NOT_SAVED = (*WEIGHTS, "training_args.bin")  # weights: saved once as "model"; args: a pickle, from the script
RESUME_DIR = ".expckpt-resume"


class TrainerFiles:
    """The files of the Trainer's last ``checkpoint-<step>/`` (but the weights), as byte tensors."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.loaded: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.directory is None:
            return {}
        files = {}
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and path.name not in NOT_SAVED:
                files[path.name] = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return files

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.loaded = dict(state)

    def write(self, directory: Path, model: torch.nn.Module) -> None:
        """Put the files back as a Trainer checkpoint directory, the (restored) weights included."""
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in (self.loaded or {}).items():
            if "/" in name or name in ("", ".", ".."):  # names come from a checkpoint file: untrusted
                continue
            (directory / name).write_bytes(data.numpy().tobytes())
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(directory)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS[0]))


def config_from_training_args(args: TrainingArguments) -> dict[str, Any]:
    """A ``checkpoint:`` section equivalent to the Trainer's retention settings."""
    section: dict[str, Any] = {"every": 1, "keep_last": args.save_total_limit}
    if args.metric_for_best_model:
        metric = args.metric_for_best_model
        metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        section.update(monitor=metric, mode="max" if args.greater_is_better else "min", keep_best=1)
    return section


def _step_metrics(state: TrainerState) -> dict[str, Any]:
    """Everything the Trainer logged at the current global step (train logs and evaluation)."""
    metrics: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") == state.global_step:
            metrics.update(entry)
    return metrics


class ExpCkptTrainerCallback(TrainerCallback):
    """Makes each Trainer save a checkpoint experiment ``<exp>@<global_step>``; finds the resume point."""

    def __init__(self, path: str = "model.pt", config: Mapping[str, Any] | None = None, *, live_dir: str = "dvclive") -> None:
        self.path = path
        self.config = config
        self.live_dir = live_dir
        self.files = TrainerFiles()
        self.steps: StepLog | None = None
        self.resumed: Any = None
        self.resume_from_checkpoint: str | None = None

    def _checkpointer(self, args: TrainingArguments) -> Any:
        config = self.config if self.config is not None else config_from_training_args(args)
        if args.world_size > 1:
            from expckpt.integrations.distributed import DistributedCheckpointer

            return DistributedCheckpointer.from_env(self.path, config, live_dir=self.live_dir)
        return Checkpointer.from_env(self.path, config, live_dir=self.live_dir)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.steps = StepLog(
            self._checkpointer(args), training_state(model, hf=self.files), log=state.is_world_process_zero, live_dir=self.live_dir
        )
        self.resumed = self.steps.restore()
        resume_dir = Path(args.output_dir) / RESUME_DIR
        if args.should_save and resume_dir.exists():
            shutil.rmtree(resume_dir)  # left by an earlier run
        if self.resumed is None or not self.files.loaded:
            return
        directory = resume_dir / f"checkpoint-{self.resumed.step}"
        if args.should_save:
            self.files.write(directory, model)
        if args.world_size > 1:
            torch.distributed.barrier()  # the other ranks read what rank 0 wrote
        self.resume_from_checkpoint = str(directory)
        args.resume_from_checkpoint = self.resume_from_checkpoint

    def _core(self) -> Any:
        return getattr(self.steps.checkpointer, "checkpointer", self.steps.checkpointer) if self.steps else None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._core() is not None and args.world_size == 1:  # SIGTERM/SIGUSR1 pause (expckpt.pause)
            self._core().pause.install()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """A requested pause saves at this step (the Trainer's save, then ours: paused, exit 75);
        one process only: every rank would have to agree."""
        if self._core() is not None and args.world_size == 1 and self._core().pause_requested:
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.steps is None:
            return
        self.files.directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.steps.completed(state.global_step, _step_metrics(state)):
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.steps is not None:
            steps, self.steps = self.steps, None
            core = getattr(steps.checkpointer, "checkpointer", steps.checkpointer)
            try:
                steps.finish()  # raises TrainingPaused (exit 75) after a pause
            finally:
                core.pause.uninstall()
        if args.should_save:
            shutil.rmtree(Path(args.output_dir) / RESUME_DIR, ignore_errors=True)
