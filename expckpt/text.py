"""Making text that came from Git safe to print on a terminal.

Commit messages, tree entry names and ref names are written by whoever made the commit, and a
pulled experiment ref is anyone's. Printed raw, an ESC or CSI sequence can recolour, move the
cursor, rewrite the title or hide text, and a newline or CR can forge whole table rows. Every
printer passes Git-sourced strings through ``terminal_safe`` first; ``one_line`` does the same
for a message that must fit one short line (a remote's error, a process's command line).

This is expckpt's one text sanitiser: nothing else escapes or strips characters for printing.
"""

from __future__ import annotations

import unicodedata

__all__ = ["is_printable", "one_line", "terminal_safe"]

# Cc: C0 (incl. ESC, CR, LF, TAB), DEL, C1 (incl. CSI U+009B); Cf: bidi overrides and other
# invisible format characters that can reorder what is shown; Zl/Zp: line/paragraph separators;
# Cs: lone surrogates (bytes that were not UTF-8, decoded with surrogateescape).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def is_printable(text: str) -> bool:
    """True when ``text`` has no character ``terminal_safe`` would escape."""
    return not any(_unsafe(c) for c in text)


def terminal_safe(text: object) -> str:
    """``text`` with every control or invisible format character escaped (``\\x1b``, ``\\n``,
    ``\\u202e``), so it prints on one line and exactly as the characters it holds."""
    text = str(text)
    if is_printable(text):
        return text
    out = []
    for char in text:
        if not _unsafe(char):
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to one space, made
    ``terminal_safe``, and cut to ``limit`` characters (ending ``...`` when cut)."""
    flat = terminal_safe(" ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
