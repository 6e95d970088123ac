"""Progress within a long step: a bar on a terminal, plain lines in logs (issue #14.10)."""

from __future__ import annotations

import io
import os

from expckpt.train.progress import Progress


def test_logs_get_a_plain_line_now_and_then() -> None:
    log = io.StringIO()
    with Progress("epoch 3", total=10, stream=log, every_seconds=0) as progress:
        for _ in range(10):
            progress.advance()
    lines = log.getvalue().splitlines()
    assert lines[0] == "epoch 3: 10% (1/10)" and lines[-1] == "epoch 3: 90% (9/10)"
    assert len(lines) == 9 and "\r" not in log.getvalue()  # no bar codes in a log, no 100% line


def test_logs_stay_quiet_for_short_steps() -> None:
    log = io.StringIO()
    with Progress("epoch 0", total=5, stream=log) as progress:
        progress.advance(5)
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar_that_goes_away() -> None:
    main, child = os.openpty()
    with os.fdopen(child, "w") as tty:
        with Progress("epoch 1", total=4, stream=tty) as progress:
            for _ in range(4):
                progress.advance()
            tty.flush()
    chunks = []
    while True:  # a pty hands its bytes over in pieces; EIO once the writer's end is closed
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    drawn = b"".join(chunks).decode(errors="replace")
    assert "epoch 1:" in drawn and "/4 [" in drawn  # tqdm's bar, redrawn in place
    assert drawn.endswith("\r") and drawn.rstrip("\r").split("\r")[-1].strip() == ""  # and erased at the end
