"""A ``HEAD`` that DVC left detached: said at the next run, with the user's own branch name.

``dvc exp run`` detaches ``HEAD`` at the baseline while it runs and puts it back at the end. A
run killed with SIGKILL (or a lost machine) never puts it back, and every later run starts from,
and ends at, that detached ``HEAD``: nothing says so, and ``git status`` only says "HEAD
detached at 1a2b3c4".

Inside a workspace ``dvc exp run`` the training process cannot see ``HEAD`` as the user left it,
but Git's reflog shows it: DVC writes ``refs/exps/exec/EXEC_MERGE`` (this run's own stash
commit, so the file is always rewritten) just before it detaches ``HEAD``, and detaching a
``HEAD`` that was on a branch writes a reflog entry. When the newest ``HEAD`` reflog entry is
older than ``EXEC_MERGE``, ``HEAD`` was detached already when this run began (measured on DVC
3.67: ``EXEC_HEAD`` is not rewritten when its value does not change, ``EXEC_MERGE`` is).

The branch to go back to is the one whose tip is the baseline (the reflog's last
``Restore HEAD to '<branch>'`` / ``moving from <branch>`` picks among several, or names it when
none points there); with no branch at all (detached on purpose at an old commit) nothing is said.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from expckpt.text import terminal_safe

__all__ = ["detached_head_note"]

_EXEC_MERGE = "refs/exps/exec/EXEC_MERGE"
_BRANCH_IN_LOG = re.compile(r"(?:Restore HEAD to '([^']+)'|checkout: moving from (\S+) to )")
_TAIL = 64 * 1024


def _reflog(git_dir: Path) -> list[tuple[int, str]]:
    """``(unix time, message)`` of the last entries of ``HEAD``'s reflog, oldest first."""
    try:
        with open(git_dir / "logs" / "HEAD", "rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - _TAIL))
            data = log.read().decode("utf-8", "replace")
    except OSError:
        return []
    entries = []
    for line in data.splitlines():
        head, _, message = line.partition("\t")
        fields = head.split(" ")
        if len(fields) >= 2 and fields[-2].isdigit():
            entries.append((int(fields[-2]), message))
    return entries


def _branch(entries: list[tuple[int, str]], branches: Mapping[str, str], baseline: str) -> str | None:
    at_baseline = sorted(name for name, commit in branches.items() if commit == baseline)
    named = []
    for _, message in entries:
        match = _BRANCH_IN_LOG.search(message)
        name = match and (match.group(1) or match.group(2))
        if name and name in branches:
            named.append(name)
    for name in reversed(named):
        if not at_baseline or name in at_baseline:
            return name
    return at_baseline[0] if at_baseline else None


def detached_head_note(git_dir: Path, baseline: str, tips: Mapping[str, str]) -> str | None:
    """One line when ``HEAD`` was detached before this ``dvc exp run`` began (see the module
    docstring), naming the branch to check out; None otherwise. ``tips``: ref name -> commit."""
    try:
        started = int((git_dir / _EXEC_MERGE).stat().st_mtime)
    except OSError:
        return None  # not inside a workspace `dvc exp run`, or its refs are packed
    entries = _reflog(git_dir)
    if not entries or entries[-1][0] >= started:
        return None  # this run detached HEAD itself: the user was on a branch
    branches = {ref[len("refs/heads/") :]: commit for ref, commit in tips.items() if ref.startswith("refs/heads/")}
    branch = _branch(entries, branches, baseline)
    if branch is None:
        return None
    return (
        f"expckpt: note: HEAD was already detached at {baseline[:7]} when this run began (a `dvc exp run`"
        " killed earlier leaves it so), and DVC leaves it detached after this run too;"
        f" `git checkout {terminal_safe(branch)}` puts it back"
    )
