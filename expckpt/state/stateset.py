"""Several checkpoint outputs of one stage, each holding its own ``TrainingState``.

    CheckpointLive.from_env({"model.pt": state, "ema.pt": ema_state}, params)

All files of one step are published in one checkpoint (one commit, one ref) and resumed together.
The step and the RNG states are the process's, so they are set on every state and put back once;
expckpt's own state (the training watch) travels in the first file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from expckpt.errors import ConfigError
from expckpt.state.state import TrainingState

__all__ = ["StateFiles", "as_state_files"]


class StateFiles:
    """``checkpoint output path -> TrainingState``, used where one ``TrainingState`` is."""

    def __init__(self, states: Mapping[str, TrainingState]) -> None:
        self.states = dict(states)
        self.first = next(iter(self.states.values()))

    @property
    def step(self) -> int:
        return self.first.step

    @step.setter
    def step(self, value: int) -> None:
        for state in self.states.values():
            state.step = value

    @property
    def library(self) -> dict[str, Any]:
        return self.first.library

    def apply_rng(self, *, keep: bool = False) -> None:
        self.first.apply_rng(keep=keep)
        if not keep:  # the RNGs are the process's: the first file's are put back, once
            for state in list(self.states.values())[1:]:
                state._pending_rng = None


def as_state_files(state: TrainingState | StateFiles | Mapping[str, TrainingState], paths: list[str]) -> StateFiles:
    """``state`` for the checkpoint outputs ``paths`` (one ``TrainingState``: the first output)."""
    if isinstance(state, StateFiles):
        return state
    if isinstance(state, TrainingState):
        return StateFiles({paths[0]: state})
    if isinstance(state, Mapping):
        given = {str(k).rstrip("/"): v for k, v in state.items()}
        bad = [k for k, v in given.items() if not isinstance(v, TrainingState)]
        if not given or bad:
            raise ConfigError(
                "pass a TrainingState, or a dict of checkpoint output path -> TrainingState"
                f" (got {type(state[bad[0]]).__name__ if bad else 'an empty dict'} for {bad[0] if bad else 'it'!r})",
                key="state",
            )
        return StateFiles({p: given[p] for p in paths if p in given})
    raise ConfigError(
        f"expected a TrainingState, got a {type(state).__name__}", key="state", value=type(state).__name__
    )
