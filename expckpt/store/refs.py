"""Checkpoint names and their Git refs, built and parsed in one place.

A checkpoint of experiment ``tut`` at dvclive step 3, based on commit ``<baseline>``, lives at

    refs/exps/<baseline[:2]>/<baseline[2:]>/tut@3

which is DVC 3's own experiment-ref layout, so ``dvc exp show/apply/branch/remove`` see it as an
experiment named ``tut@3``. Experiment names are checked here before they reach Git: only
``[A-Za-z0-9._-]``, starting with a letter or digit, so no name can escape the namespace or
form an invalid ref.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from expckpt.errors import InvalidNameError

__all__ = ["EXEC_APPLY", "EXPS_PREFIX", "CheckpointRef", "parse_checkpoint_name", "validate_exp_name"]

EXPS_PREFIX = "refs/exps/"
EXEC_APPLY = "refs/exps/exec/EXEC_APPLY"
"""Where ``dvc exp apply`` records the experiment it applied (until HEAD moves)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA = re.compile(r"[0-9a-f]{40}")
_CHECKPOINT_NAME = re.compile(r"(?P<exp>[^@/]+)@(?P<step>0|[1-9][0-9]{0,11})")


def validate_exp_name(name: str) -> str:
    """Return ``name`` if it is a safe experiment name, else raise ``InvalidNameError``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.endswith((".lock", ".")):
        raise InvalidNameError(
            f"experiment name {name!r} cannot be used for checkpoints: use 1-100 letters, digits,"
            " '.', '_' or '-', starting with a letter or digit (e.g. 'tut' or 'lr-0.01')",
            ref=str(name),
        )
    return name


def parse_checkpoint_name(name: str) -> tuple[str, int]:
    """Split ``'tut@3'`` into ``('tut', 3)``; raise ``InvalidNameError`` for anything else."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    if not match:
        raise InvalidNameError(
            f"{name!r} is not a checkpoint name: expected <experiment>@<step>, e.g. 'tut@3'",
            ref=name,
        )
    return validate_exp_name(match["exp"]), int(match["step"])


@dataclass(frozen=True, order=True)
class CheckpointRef:
    """Where one checkpoint lives: its baseline commit, experiment name and step."""

    baseline: str
    """Full 40-hex sha of the commit the experiment is based on."""
    exp: str
    """Experiment name, e.g. ``tut``."""
    step: int
    """dvclive step the checkpoint was taken at (the first epoch is 0)."""

    def __post_init__(self) -> None:
        if not _SHA.fullmatch(self.baseline):
            raise InvalidNameError(f"baseline {self.baseline!r} is not a full 40-hex commit sha", ref=self.baseline)
        validate_exp_name(self.exp)
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise InvalidNameError(f"step must be an integer >= 0, got {self.step!r}")

    @property
    def name(self) -> str:
        """The experiment name DVC shows: ``tut@3``."""
        return f"{self.exp}@{self.step}"

    @property
    def ref(self) -> str:
        """The full Git ref."""
        return f"{EXPS_PREFIX}{self.baseline[:2]}/{self.baseline[2:]}/{self.name}"

    @classmethod
    def parse(cls, ref: str) -> CheckpointRef | None:
        """Parse a full ref; ``None`` when it is not a checkpoint ref (e.g. a plain experiment)."""
        if not ref.startswith(EXPS_PREFIX):
            return None
        parts = ref[len(EXPS_PREFIX) :].split("/")
        if len(parts) != 3 or len(parts[0]) != 2:
            return None
        match = _CHECKPOINT_NAME.fullmatch(parts[2])
        baseline = parts[0] + parts[1]
        if not match or not _SHA.fullmatch(baseline):
            return None
        try:  # e.g. 'x.@3' is a valid Git ref but no experiment name expckpt writes
            return cls(baseline=baseline, exp=match["exp"], step=int(match["step"]))
        except InvalidNameError:
            return None
