"""Hugging Face ``Trainer``: each Trainer save a checkpoint experiment, and resume found for you.

    from expckpt.integrations.hf import ExpCkptTrainerCallback

    expckpt_cb = ExpCkptTrainerCallback(config=params.get("checkpoint"))
    trainer = Trainer(model=model, args=args, ..., callbacks=[expckpt_cb])
    trainer.train(resume_from_checkpoint=expckpt_cb.resume_from_checkpoint)   # None on a fresh start

Whenever the Trainer saves (``save_strategy``/``save_steps``), it writes ``checkpoint-<step>/`` in
``output_dir``; the callback then logs the step's metrics (from ``state.log_history``; run times
and throughputs, which differ between identical runs, stay in ``trainer_state.json`` only) with
dvclive at step = ``global_step`` and hands the step to expckpt's ``Checkpointer``, which publishes
``<exp>@<global_step>`` and applies retention. The checkpoint file holds the model's weights and
the rest of that directory (optimizer, scheduler, scaler, RNG states, ``trainer_state.json``) as
byte tensors, so it loads with ``weights_only=True``; ``training_args.bin`` (a pickle) is left
out: the arguments come from your script.

The Trainer's own ``checkpoint-*`` folders are a cache, per run: inside ``dvc exp run`` the
callback removes those an earlier run left (another experiment's, or stale after ``expckpt
reset`` or ``dvc exp apply``), deletes each new one once expckpt has published it, and keeps
only the best one's model files while ``load_best_model_at_end`` needs them. It records
``output_dir`` (``expckpt.store.trainerdirs``) so that ``expckpt reset`` removes them too. The
Trainer still writes each folder in full: its files are in the Trainer's own formats (DeepSpeed,
FSDP and XLA write others), which expckpt stores as bytes and gives back for the Trainer's own
resume; ``bench/hf_writes.py`` measures what a save writes.

When the ``Trainer`` is built inside ``dvc exp run``, the callback restores the last (or the
applied) checkpoint and writes it back as ``<output_dir>/checkpoint-<step>``, which
``Trainer.train`` resumes from with its own machinery (optimizer, scheduler, data position, RNG):
exact, also mid-epoch. ``resume_from_checkpoint=True`` finds that same folder; if the Trainer
ever resumes at another global step than expckpt restored, the run stops with one line.
The best model ``load_best_model_at_end`` asks for comes from expckpt's kept best checkpoint
(``expckpt.integrations.hfbest``), and at the end ``model.pt`` holds that best model, as the
Trainer's final model does; the run's last line names it and the last checkpoint.

Retention: with no ``checkpoint:`` section given, ``save_total_limit`` becomes ``keep_last`` and
``metric_for_best_model``/``greater_is_better`` become ``monitor``/``mode`` with ``keep_best: 1``
(``config_from_training_args``); each checkpoint records them, so ``expckpt list``/``report``/``gc``
use them too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from expckpt.train.checkpointer import Checkpointer
from expckpt.integrations.hfbest import find_kept, kept_weights, put_file
from expckpt.integrations.loop import StepLog
from expckpt.state.state import TrainingState
from expckpt.store.trainerdirs import record_trainer_dir
from expckpt.text import terminal_safe

__all__ = ["ExpCkptTrainerCallback", "ResumeMismatch", "TrainerFiles", "config_from_training_args", "step_metrics"]

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
NOT_SAVED = (*WEIGHTS, "training_args.bin")  # weights: saved once as "model"; args: a pickle, from the script
FOLDER = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
TRAINING_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
"""A Trainer folder's files that resuming reads and ``load_best_model_at_end`` does not
(transformers' ``OPTIMIZER_NAME``, ``SCHEDULER_NAME``, ``SCALER_NAME``, ``TRAINER_STATE_NAME``,
``TRAINING_ARGS_NAME``; ``rng_state[_<rank>].pth`` too)."""
SAVE_ONLY_MODEL = (
    "expckpt: warning: save_only_model=True: the Trainer saves no optimizer, scheduler or RNG state, so"
    " neither do expckpt's checkpoints and a resume starts them afresh (not exact); leave save_only_model"
    " unset for an exact resume"
)
_RNG_FILE = re.compile(r"rng_state(_[0-9]+)?\.pth")
TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second", "total_flos")
"""Logged names ending so are run times and throughputs: not metrics (they differ between identical runs)."""


class ResumeMismatch(SystemExit):
    """The Trainer resumed at another global step than the checkpoint expckpt restored (exit 1)."""

    def __init__(self, line: str) -> None:
        super().__init__(1)
        self.line = line


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

    def trainer_state(self) -> dict[str, Any]:
        """The restored ``trainer_state.json`` ({} when there is none or it does not parse)."""
        data = (self.loaded or {}).get("trainer_state.json")
        try:
            state = json.loads(data.numpy().tobytes()) if data is not None else {}
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    def write(self, directory: Path, model: torch.nn.Module, trainer_state: Mapping[str, Any] | None = None) -> None:
        """Put the files back as a Trainer checkpoint directory, the (restored) weights included."""
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in (self.loaded or {}).items():
            if "/" in name or name in ("", ".", ".."):  # names come from a checkpoint file: untrusted
                continue
            (directory / name).write_bytes(data.numpy().tobytes())
        if trainer_state is not None:
            (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
        write_weights(directory, model)


def write_weights(directory: Path, model: torch.nn.Module, weights: Mapping[str, torch.Tensor] | None = None) -> None:
    """The model's weights (or ``weights``) as the Trainer saves them in a checkpoint folder."""
    directory.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS[0]))
    elif callable(save_pretrained := getattr(model, "save_pretrained", None)):
        save_pretrained(directory)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS[0]))


def config_from_training_args(args: TrainingArguments) -> dict[str, Any]:
    """A ``checkpoint:`` section equivalent to the Trainer's retention settings."""
    section: dict[str, Any] = {"every": 1, "keep_last": args.save_total_limit}
    if args.metric_for_best_model:
        section.update(
            monitor=_logged_name(args.metric_for_best_model),
            mode="max" if args.greater_is_better else "min",
            keep_best=1,
        )
    return section


def _logged_name(metric: str) -> str:
    """HF's spelling of a metric (``accuracy``) as the Trainer logs it (``eval_accuracy``)."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def step_metrics(state: TrainerState) -> dict[str, Any]:
    """What the Trainer logged at the current global step (train logs and evaluation), but
    run times and throughputs (``TIMINGS``): they stay in ``trainer_state.json``'s log history."""
    metrics: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") == state.global_step:
            metrics.update({k: v for k, v in entry.items() if not k.endswith(TIMINGS)})
    return metrics


def _weights_only(folder: Path) -> None:
    """Leave in the best folder what the Trainer loads at the end (the model's files): the
    optimizer, scheduler and RNG states are in expckpt's checkpoint, and nothing reads them there."""
    for path in folder.iterdir():
        if path.is_file() and (path.name in TRAINING_ONLY or _RNG_FILE.fullmatch(path.name)):
            path.unlink()


def _folders(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(FOLDER))


class ExpCkptTrainerCallback(TrainerCallback):
    """Makes each Trainer save a checkpoint experiment ``<exp>@<global_step>``; finds the resume point."""

    def __init__(
        self, path: str | None = None, config: Mapping[str, Any] | None = None, *, live_dir: str = "dvclive"
    ) -> None:
        self.path = path
        self.config = config
        self.live_dir = live_dir
        self.files = TrainerFiles()
        self.steps: StepLog | None = None
        self.resumed: Any = None
        self.resume_from_checkpoint: str | None = None
        self.monitor: str | None = None

    def _checkpointer(self, args: TrainingArguments) -> Checkpointer:
        config = self.config if self.config is not None else config_from_training_args(args)
        return Checkpointer.from_env(self.path, config, live_dir=self.live_dir)

    def _core(self) -> Checkpointer | None:
        return self.steps.checkpointer if self.steps is not None else None

    def _committer(self) -> Any:
        core = self._core()
        return core.wiring.committer if core is not None else None

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        model = kwargs["model"]
        checkpointer = self._checkpointer(args)
        self.monitor = checkpointer.config.monitor
        # HF's global_step counts the steps done; the core's line counts from index 0
        checkpointer.echo = _count_steps_from_one(checkpointer.echo)
        self.steps = StepLog(checkpointer, TrainingState(model=model, hf=self.files))
        self.resumed = self.steps.restore()
        output_dir = Path(args.output_dir)
        core = self._core()
        if args.should_save and core is not None and self._committer() is not None:
            record_trainer_dir(core.wiring.workspace, output_dir)  # `expckpt reset` cleans it too
            self._remove_folders(output_dir, keep=None, say=True)
        if getattr(args, "save_only_model", False) and checkpointer.coord.is_main:
            print(SAVE_ONLY_MODEL, file=sys.stderr, flush=True)
        if self.resumed is None or not self.files.loaded:
            return
        directory = output_dir / f"{FOLDER}{self.resumed.step}"
        if args.should_save:
            trainer_state = self._best_folder(args, model, self.files.trainer_state())
            self.files.write(directory, model, trainer_state)
        if args.world_size > 1:
            torch.distributed.barrier()  # the other ranks read what rank 0 wrote
        self.resume_from_checkpoint = str(directory)
        args.resume_from_checkpoint = self.resume_from_checkpoint

    def _best_folder(
        self, args: TrainingArguments, model: torch.nn.Module, trainer_state: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Point the resumed state's best model at a folder holding expckpt's kept best checkpoint
        (HF's own folder is another run's, or gone); None leaves ``trainer_state.json`` as it is."""
        best_step, best_value = trainer_state.get("best_global_step"), trainer_state.get("best_metric")
        if (
            not args.load_best_model_at_end
            or not isinstance(best_step, int)
            or not isinstance(best_value, (int, float))
        ):
            return None
        folder = Path(args.output_dir) / f"{FOLDER}{best_step}"
        exp = self.resumed.record.exp if getattr(self.resumed, "record", None) is not None else ""
        if best_step != self.resumed.step:
            record = find_kept(self._committer(), best_step, self.monitor, float(best_value), exp)
            core = self._core()
            weights = kept_weights(self._committer(), record, core.rel_path) if record is not None and core else None
            if weights is None:
                return None  # HF says it ignores the missing best; expckpt's report still names it
            write_weights(folder, model, weights)
        return {**trainer_state, "best_model_checkpoint": str(folder)}

    def _remove_folders(self, output_dir: Path, *, keep: str | None, say: bool = False) -> None:
        """Remove the Trainer's ``checkpoint-*`` folders but ``keep`` (expckpt holds its own copies)."""
        stale = [p for p in _folders(output_dir) if keep is None or not os.path.samefile(p, keep)]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        if stale and say and self.steps is not None and self.steps.checkpointer.coord.is_main:
            names = ", ".join(p.name for p in stale[:3]) + (", ..." if len(stale) > 3 else "")
            print(
                terminal_safe(
                    f"expckpt: removed {len(stale)} Trainer folder(s) an earlier run left in {output_dir}"
                    f" ({names}); expckpt keeps its own copies"
                ),
                flush=True,
            )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        expected = self.resumed.step if self.resumed is not None and self.files.loaded else 0
        if self.steps is None or state.global_step == expected:
            return
        record = getattr(self.resumed, "record", None)
        ours = (
            f"model.pt at step {expected}" + (f" ({record.name})" if record is not None else "")
            if expected
            else "nothing (a fresh start)"
        )
        line = (
            f"expckpt: error: the Trainer resumed at global step {state.global_step} but expckpt restored {ours}; "
            f"call trainer.train(resume_from_checkpoint=<callback>.resume_from_checkpoint), not True or a path, "
            f"and keep {args.output_dir} to one experiment at a time"
        )
        steps, self.steps = self.steps, None
        steps.close()
        print(terminal_safe(line), file=sys.stderr, flush=True)
        raise ResumeMismatch(line)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """A requested pause (SIGTERM, SIGUSR1, ``expckpt stop``) saves at this step: the Trainer's
        save, then the core's (paused, exit 75); every rank gets rank 0's answer."""
        core = self._core()
        if core is not None and core.pause_wanted():
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.steps is None:
            return
        self.files.directory = Path(args.output_dir) / f"{FOLDER}{state.global_step}"
        decision = self.steps.completed(state.global_step, step_metrics(state))
        if decision.stop:
            control.should_training_stop = True
        # published: HF's folder is a spare copy now (one the policy skipped stays for the final save)
        if decision.saved and args.should_save and self._committer() is not None:
            best = state.best_model_checkpoint if args.load_best_model_at_end else None
            keep = best if best and os.path.isdir(best) else None
            self._remove_folders(Path(args.output_dir), keep=keep)
            if keep is not None:
                _weights_only(Path(keep))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.steps is None:
            return
        inside_dvc = self._committer() is not None
        steps, self.steps = self.steps, None
        steps.finish()
        if args.should_save and inside_dvc:
            self._final_model(args, state, steps)
            self._remove_folders(Path(args.output_dir), keep=None)  # HF loaded its best already

    def _final_model(self, args: TrainingArguments, state: TrainerState, steps: StepLog) -> None:
        """``model.pt`` holds what the Trainer's final model is: with ``load_best_model_at_end``
        the best checkpoint's file, else the last; the last line says which, and how to get the other."""
        core = steps.checkpointer
        committer, last = core.wiring.committer, core.last_record
        if committer is None or last is None:
            return
        rel_path = core.rel_path
        best = None
        if args.load_best_model_at_end and isinstance(state.best_global_step, int) and state.best_metric is not None:
            best = find_kept(committer, state.best_global_step, self.monitor, float(state.best_metric), last.exp)
        if best is None or best.commit == last.commit or not put_file(committer, best, rel_path, core.path):
            print(terminal_safe(f"expckpt: {rel_path} holds the last checkpoint, {last.name}"), flush=True)
            return
        value = best.metrics.get(self.monitor or "", math.nan)
        print(
            terminal_safe(
                f"expckpt: {rel_path} holds the best checkpoint, {best.name} ({self.monitor} {value:.4g}), as the Trainer's"
                f" final model (load_best_model_at_end); the last is {last.name}: dvc exp apply {last.name} to continue"
                " from it"
            ),
            flush=True,
        )


def _count_steps_from_one(echo: Any) -> Any:
    """``echo`` with the core's "Resuming from ...: N steps done" line counting HF's way (N = global_step)."""

    def say(line: str) -> None:
        head, sep, tail = line.rpartition(": ")
        if line.startswith("Resuming from ") and sep and tail.endswith(" steps done"):
            count = tail.removesuffix(" steps done")
            if count.isdigit():
                line = f"{head}: {int(count) - 1} steps done"
        echo(line)

    return say
