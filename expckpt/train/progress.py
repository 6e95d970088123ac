"""Progress within a long step: a bar on a terminal, a plain line now and then in logs and CI.

    with Progress(f"epoch {epoch}", total=len(dataset)) as progress:
        for batch in loader:
            ...
            progress.advance(len(batch))

On a terminal it draws tqdm's bar (tqdm comes with DVC) on stderr and removes it when the step
ends; elsewhere it prints ``epoch 3: 52% (740/1437)`` at most every ``every_seconds``.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, every_seconds: float = 30.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = every_seconds
        self._bar: Any = None
        self._last_line = time.monotonic()

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.label, file=self.stream, leave=False, unit="it")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_seconds and self.done < self.total:
            self._last_line = now
            percent = 100 * self.done // max(self.total, 1)
            print(f"{self.label}: {percent}% ({self.done}/{self.total})", file=self.stream, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
