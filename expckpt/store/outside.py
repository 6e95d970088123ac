"""Steps trained outside ``dvc exp run``, and saying so when a later ``dvc exp run`` drops them.

``python train.py`` saves and resumes the checkpoint file like any run, but makes no experiment
refs. The next ``dvc exp run`` begins with a forced checkout of the workspace dvc.lock's outputs,
which puts the last *committed* checkpoint back over that file before training starts: the steps
trained outside are gone, and were retrained without a word. So a save outside DVC leaves a note
(``<file>.outside.json`` beside the session note: the step, and the file's stat), and the next
run inside DVC that finds another file there says which file and step it lost, once.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.serialize.dirout import output_stat
from expckpt.store.session import SessionNote

__all__ = ["dropped_outside_line", "note_outside_step"]


def _path(workspace: Path, rel_path: str) -> Path:
    return SessionNote.path_for(workspace, rel_path).with_suffix(".outside.json")


def note_outside_step(workspace: Path, rel_path: str, path: Path, step: int) -> None:
    """``path`` now holds ``step``, saved outside ``dvc exp run`` (only in a DVC project)."""
    if not (workspace / ".dvc").is_dir():
        return
    note = _path(workspace, rel_path)
    with contextlib.suppress(OSError):
        note.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(note, json.dumps({"step": step, "stat": output_stat(path)}).encode(), durable=False)


def dropped_outside_line(
    workspace: Path, rel_path: str, path: Path, resumed_step: int, checked_out: str | None
) -> str | None:
    """Inside ``dvc exp run``: the line saying the step saved outside DVC is lost (then forget it).

    None when nothing was saved outside, when ``path`` is still that file (training resumes from
    it), or when this run resumes at or after that step anyway.
    """
    note = _path(workspace, rel_path)
    try:
        data = json.loads(note.read_text())
        step, stat = int(data["step"]), data["stat"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    with contextlib.suppress(OSError):
        note.unlink()
    if json.loads(json.dumps(output_stat(path))) == stat:
        return None  # still that file: training resumes from it
    if step <= resumed_step:
        return None
    over = f"checked out {checked_out} over it" if checked_out else "replaced it"
    return (
        f"expckpt: warning: {rel_path} held step {step}, trained outside `dvc exp run` (no checkpoint experiment"
        f" was made of it); DVC {over} before this run started, so training goes on from step {resumed_step + 1}"
        f" and step {step} is trained again (run training inside `dvc exp run` to keep every step)"
    )
