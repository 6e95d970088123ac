"""``expckpt resume <exp>``: continue an experiment (a paused one, typically) from its newest checkpoint.

It is ``dvc exp apply <checkpoint> && dvc exp run`` with the checkpoint found for you: the newest
checkpoint of the experiment (a pause's, when it paused), applied by its commit (a name may repeat
across baselines), then a new run that resumes from it. DVC's own commands do the work, started
with argument lists (nothing read from Git reaches a shell).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from expckpt.store.catalog import Catalog
from expckpt.store.records import CheckpointRecord
from expckpt.text import terminal_safe

__all__ = ["resume_experiment"]


def resume_experiment(
    catalog: Catalog, exp: str, workspace: Path, *, run_args: Sequence[str] = (), echo: Callable[[str], None] = print
) -> int:
    """Apply ``exp``'s newest checkpoint and run again; the exit status of the DVC command that
    ended it (``UnknownCheckpointError`` when ``exp`` has no checkpoint)."""
    record: CheckpointRecord | None = catalog.last(exp)
    if record is None:
        raise catalog.unknown(exp)
    paused = " (paused)" if record.paused else ""
    echo(f"Continuing {terminal_safe(record.name)}{paused}: dvc exp apply {record.commit[:7]} && dvc exp run")
    applied = subprocess.run(["dvc", "exp", "apply", record.commit], cwd=workspace)
    if applied.returncode != 0:
        return applied.returncode
    return subprocess.run(["dvc", "exp", "run", *run_args], cwd=workspace).returncode
