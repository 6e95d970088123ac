"""The one text sanitiser: Git-sourced or remote-sourced text printed escaped, on one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from expckpt.store.gclock import lock_holders
from expckpt.text import is_printable, one_line, terminal_safe


def test_terminal_safe_escapes_controls_bidi_and_separators_and_keeps_the_rest() -> None:
    assert terminal_safe("epoch 3 \u00e9t\u00e9 \U0001f600") == "epoch 3 \u00e9t\u00e9 \U0001f600"
    assert terminal_safe("a\x1b[2Jb\nc\rd\te\x7f\x9b") == "a\\x1b[2Jb\\nc\\rd\\te\\x7f\\x9b"
    assert terminal_safe("x\u202ey\u2028z\U000e0001") == "x\\u202ey\\u2028z\\U000e0001"
    assert terminal_safe(b"bytes".decode()) == "bytes" and terminal_safe(7) == "7"
    assert is_printable("plain name") and not is_printable("tab\there")


def test_one_line_collapses_whitespace_escapes_what_is_left_and_cuts_long_text() -> None:
    assert one_line("fatal: \x1b]0;pwned\x07 bad\r\nthing\x1b[2J") == "fatal: \\x1b]0;pwned\\x07 bad thing\\x1b[2J"
    assert one_line("  several\n\n  lines\t here ") == "several lines here"
    cut = one_line("x" * 1000)
    assert cut == "x" * 297 + "..." and len(one_line("y" * 1000, 50)) == 50
    assert one_line("z" * 300) == "z" * 300


def test_a_gc_lock_holders_command_line_is_shown_escaped_and_short(tmp_path: Path) -> None:
    git_dir = tmp_path / ".git"
    holders = git_dir / "expckpt" / "gc-holders"
    holders.mkdir(parents=True)
    command = "python train.py \x1b]0;owned\x07" + " --flag" * 40
    (holders / f"{os.getpid()}-0.json").write_text(
        json.dumps({"pid": os.getpid(), "mode": "shared", "command": command})
    )
    [holder] = lock_holders(git_dir)
    assert holder.pid == os.getpid() and holder.mode == "shared"
    assert holder.command.startswith("python train.py \\x1b]0;owned\\x07 --flag") and holder.command.endswith("...")
    assert len(holder.command) == 120 and "\x1b" not in holder.command
