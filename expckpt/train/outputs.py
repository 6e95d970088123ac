"""A checkpoint's output files: capture each output's state, write its temp files, and remember
what a directory output holds, so an unchanged file inside it is neither rewritten nor rehashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from expckpt.serialize.checkpoint_file import write_temp
from expckpt.publish.committer import Written
from expckpt.serialize.dirout import FileStat, WrittenDir
from expckpt.serialize.dirstate import split_payload, write_dir_temp
from expckpt.store.session import SessionNote
from expckpt.state.stateset import StateFiles
from expckpt.train.wiring import OutputSpec

__all__ = ["OutputFiles"]


class OutputFiles:
    """The checkpoint outputs of one run (one file, several files, or directories)."""

    def __init__(self, outputs: Sequence[OutputSpec]) -> None:
        self.outputs = tuple(outputs)
        self._dir_files: dict[str, Mapping[str, FileStat]] = {}

    def remember_noted(self, workspace: Path) -> None:
        """Take the per-file stats of directory outputs from the workspace's notes (on resume)."""
        for out in self.outputs:
            note = SessionNote.read(workspace, out.rel_path)
            if out.is_dir and note is not None and note.files:
                self._dir_files[out.rel_path] = {k: tuple(v) for k, v in note.files.items()}

    def capture(self, state: StateFiles) -> dict[str, Any]:
        """``output path -> payload`` (a directory output: ``relpath inside it -> payload``)."""
        payloads: dict[str, Any] = {}
        for out in self.outputs:
            st = state.states[out.rel_path]
            payloads[out.rel_path] = split_payload(st.capture(), st.modules()) if out.is_dir else st.capture()
        return payloads

    def write(self, payloads: Mapping[str, Any]) -> list[Written]:
        """Every output's temp files, complete and hashed (nothing published yet)."""
        items: list[Written] = []
        try:
            for out in self.outputs:
                if out.is_dir:
                    items.append(write_dir_temp(payloads[out.rel_path], out.path, self._dir_files.get(out.rel_path)))
                else:
                    items.append(write_temp(payloads[out.rel_path], out.path))
        except BaseException:
            for item in items:
                item.discard()
            raise
        return items

    def published(self, items: Sequence[Written]) -> None:
        """Remember what the published directory outputs hold now."""
        for out, item in zip(self.outputs, items):
            if isinstance(item, WrittenDir):
                self._dir_files[out.rel_path] = item.stats()
