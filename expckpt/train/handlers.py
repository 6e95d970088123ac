"""How a checkpoint's state becomes files and back: the part of a save that differs by front end.

The core (``expckpt.train.checkpointer``) decides when to save, what to keep and how to publish; a
handler only turns the training state into complete temp files (and loads them back), as
orbax's ``CheckpointManager`` hands bytes to a per-format handler. A handler has:

- ``collective``: True when ``write`` runs on every rank (each writes its own shard), False when
  rank 0 writes alone (the others only take part in ``capture``);
- ``supports_async``: whether the core may write in a background thread;
- ``clean()`` and ``present()`` (rank 0, before resuming): remove what dead writers left, and
  whether the workspace holds a checkpoint to resume from;
- ``load(state, defer_rng)`` (every rank) -> ``Loaded``; ``capture(state, step, watch)`` (every
  rank) -> a payload; ``write(payload)`` -> ``Written`` items (rank 0's are published);
  ``published(items)``/``done()`` after the publish; ``set_step(state, step)`` at every
  completed step and ``step_of(state)``, the last one;
- ``init_from(state, source, restore, strict, echo)`` (every rank): a fresh trial's start from
  another checkpoint's weights (``checkpoint.init_from``; the source was resolved and verified
  on rank 0), and ``lineage()`` (rank 0): which source the workspace's checkpoint started from.

``FileHandler`` is the plain one: each checkpoint output a ``torch.save`` file or a directory of
them, written by rank 0, with every rank's RNG states inside. The sharded handler
(``torch.distributed.checkpoint``) lives in ``expckpt.integrations.dcp``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from expckpt.serialize.checkpoint_file import check_architecture
from expckpt.publish.committer import Written
from expckpt.train.coordination import Coordinator
from expckpt.train.initfrom import file_lineage, init_state
from expckpt.train.initsource import InitSource
from expckpt.serialize.loading import load_state
from expckpt.train.outputs import OutputFiles
from expckpt.train.resume import remove_stale_temps
from expckpt.state.rng import capture_rng
from expckpt.state.state import TrainingState
from expckpt.state.stateset import StateFiles, as_state_files
from expckpt.train.wiring import Wiring

__all__ = ["RANK_RNG", "FileHandler", "Handler", "Loaded"]

RANK_RNG = "_expckpt_rank_rng"
"""``extras`` key of every rank's RNG states (a list by rank) in a checkpoint of several ranks."""


@dataclass(frozen=True)
class Loaded:
    """What a handler found in the checkpoint it loaded."""

    step: int
    library: Mapping[str, Any]
    """expckpt's own entries of the checkpoint: the training watch's state (rank 0's), a fresh
    trial's lineage."""


class Handler(Protocol):
    collective: bool
    supports_async: bool

    def clean(self) -> None: ...
    def present(self) -> bool: ...
    def load(self, state: Any, *, defer_rng: bool, echo: Callable[[str], None]) -> Loaded: ...
    def capture(self, state: Any, step: int, watch: Mapping[str, Any] | None) -> Any: ...
    def write(self, payload: Any) -> list[Written]: ...
    def published(self, items: list[Written]) -> None: ...
    def done(self) -> None: ...
    def set_step(self, state: Any, step: int) -> None: ...
    def step_of(self, state: Any) -> int: ...
    def init_from(
        self, state: Any, source: InitSource, *, restore: tuple[str, ...], strict: bool, echo: Callable[[str], None]
    ) -> None: ...
    def lineage(self) -> object: ...


def _pack(value: Any) -> bytes:
    """Tensors do not travel in ``all_gather_object`` with gloo; their serialised bytes do."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


class FileHandler:
    """Checkpoint outputs written with ``torch.save`` (files, or directories of files) by rank 0."""

    collective = False
    supports_async = True

    def __init__(self, wiring: Wiring, coord: Coordinator) -> None:
        self.wiring = wiring
        self.coord = coord
        self.files = OutputFiles(wiring.outputs)

    def group(self, state: Any) -> StateFiles:
        """``state`` as one TrainingState per checkpoint output."""
        return as_state_files(state, [o.rel_path for o in self.wiring.outputs])

    def set_step(self, state: Any, step: int) -> None:
        self.group(state).step = step

    def step_of(self, state: Any) -> int:
        return self.group(state).step

    def clean(self) -> None:
        for out in self.wiring.outputs:
            remove_stale_temps(out.path)

    def present(self) -> bool:
        return self.wiring.path.exists()

    def load(self, state: Any, *, defer_rng: bool, echo: Callable[[str], None]) -> Loaded:
        group = self.group(state)
        if self.coord.world_size > 1:
            group.first.extras  # noqa: B018  (a TrainingState restores only what it holds: make it hold extras)
        for out in self.wiring.outputs:
            st = group.states.get(out.rel_path)
            if st is None or not out.path.exists():
                continue
            payload = load_state(out.path)
            for name, module in st.modules().items():
                check_architecture(module, payload.get(name), out.path)
            for line in st.restore(payload, defer_rng=True):
                echo(line)
        self._own_rank_rng(group.first)
        if not self.coord.is_main:
            group.first.objects.get("extras", {}).pop(RANK_RNG, None)
        self.files.remember_noted(self.wiring.workspace)
        if not defer_rng:
            group.apply_rng()
        return Loaded(step=group.step, library=dict(group.library))

    def _own_rank_rng(self, state: TrainingState) -> None:
        """With several ranks each gets back its own RNG states, not rank 0's."""
        ranks = (state.objects.get("extras") or {}).get(RANK_RNG)
        if self.coord.world_size > 1 and ranks and self.coord.rank < len(ranks):
            state._pending_rng = ranks[self.coord.rank]

    def init_from(
        self, state: Any, source: InitSource, *, restore: tuple[str, ...], strict: bool, echo: Callable[[str], None]
    ) -> None:
        """Every rank loads the source file rank 0 verified (the same weights everywhere)."""
        init_state(self.group(state).first, source, restore=restore, strict=strict, echo=echo)

    def lineage(self) -> object:
        return file_lineage(self.wiring.path)

    def capture(self, state: Any, step: int, watch: Mapping[str, Any] | None) -> Any:
        group = self.group(state)  # its step is the last completed one (a pause saves mid-step)
        if watch is not None:
            group.library["watch"] = dict(watch)
        if self.coord.world_size > 1:  # every rank's RNG states, saved by rank 0
            packed = self.coord.gather(_pack(capture_rng()))
            if self.coord.is_main:
                group.first.extras[RANK_RNG] = [_unpack(p) for p in packed]
        return self.files.capture(group) if self.coord.is_main else None

    def write(self, payload: Any) -> list[Written]:
        return self.files.write(payload)

    def published(self, items: list[Written]) -> None:
        self.files.published(items)

    def done(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"FileHandler({', '.join(o.rel_path for o in self.wiring.outputs)})"
