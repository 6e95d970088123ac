"""Where in the user's script a resume can leak: generators, schedulers, EMAs, data-loader workers.

``expckpt doctor`` decides *that* a resume is inexact from the runs; these hints say *where*, in
the user's words: the line that makes a NumPy ``Generator``, a ``torch.Generator``, a
``random.Random`` or an LR scheduler that no ``TrainingState(...)``/``state.add(...)`` call (nor
a ``GeneratorState(...)``, as in a DCP state dict) mentions, an EMA, or a ``DataLoader`` whose
workers keep their own random state. The script is parsed (``ast``), never run.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hint", "script_hints", "stage_scripts"]

_GENERATORS = {
    "default_rng": "a NumPy Generator",
    "Generator": "a NumPy Generator",
    "RandomState": "a NumPy RandomState",
    "Random": "a Python random.Random",
}
_EMA = ("AveragedModel", "ExponentialMovingAverage", "EMA", "ModelEma", "ModelEmaV2")


@dataclass(frozen=True)
class Hint:
    """One place in a script: ``kind`` is generator, scheduler, ema or workers."""

    kind: str
    file: str
    line: int
    what: str
    name: str = ""
    """The variable the script keeps it in, when there is one."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def stage_scripts(cmd: object, workspace: Path) -> list[Path]:
    """The ``.py`` files a stage's ``cmd`` names that exist in the workspace."""
    commands = cmd if isinstance(cmd, list) else [cmd]
    found: list[Path] = []
    for command in commands:
        try:
            words = shlex.split(str(command))
        except ValueError:
            continue
        for word in words:
            path = workspace / word
            if word.endswith(".py") and path.is_file() and path.resolve().is_relative_to(workspace.resolve()):
                found.append(path)
    return found


def _callee(node: ast.Call) -> tuple[str, str]:
    """(dotted name, last part) of what is called."""
    parts: list[str] = []
    func: ast.AST = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    dotted = ".".join(reversed(parts))
    return dotted, parts[0] if parts else ""


def _constructor(call: ast.Call) -> ast.Call:
    """``torch.Generator()`` for ``torch.Generator().manual_seed(0)``."""
    while (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "manual_seed"
        and isinstance(call.func.value, ast.Call)
    ):
        call = call.func.value
    return call


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _kind(dotted: str, last: str) -> tuple[str, str] | None:
    if (
        last in _GENERATORS
        and (last != "Generator" or "random" in dotted)
        and (last != "Random" or dotted.startswith("random"))
    ):
        return "generator", _GENERATORS[last]
    if dotted.endswith("Generator") and dotted.split(".")[0] == "torch":
        return "generator", "a torch.Generator"
    if "lr_scheduler" in dotted or last.endswith(("LR", "Scheduler")):
        return "scheduler", "an LR scheduler"
    if last in _EMA:
        return "ema", "an EMA / averaged model"
    return None


def script_hints(path: Path, root: Path) -> list[Hint]:
    """The hints for one script (none when it does not parse)."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    registered: set[str] = set()
    loader_generators: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            dotted, last = _callee(node)
            if last in ("TrainingState", "add", "training_state", "GeneratorState") or dotted.endswith("TrainingState"):
                registered |= {n for arg in [*node.args, *node.keywords] for n in _names(arg)}
            if last == "DataLoader":
                loader_generators |= {n for k in node.keywords if k.arg == "generator" for n in _names(k.value)}
    hints: list[Hint] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            dotted, last = _callee(_constructor(node.value))
            found = _kind(dotted, last)
            targets = {n for t in node.targets for n in _names(t)}
            if found and not targets & registered:
                kind, what = found
                name = ", ".join(sorted(targets))
                used = ", the DataLoader's generator," if targets & loader_generators else ""
                hints.append(
                    Hint(
                        kind,
                        rel,
                        node.lineno,
                        f"`{name}` is {what} ({dotted}(...)){used} not given to TrainingState",
                        name,
                    )
                )
        if isinstance(node, ast.Call) and _callee(node)[1] == "DataLoader":
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            workers = kw.get("num_workers")
            many = not (isinstance(workers, ast.Constant) and not workers.value) if workers is not None else False
            flag = kw.get("persistent_workers")
            persistent = isinstance(flag, ast.Constant) and flag.value is True
            if many and (persistent or "worker_init_fn" in kw):
                how = "persistent_workers=True" if persistent else "worker_init_fn"
                hints.append(
                    Hint(
                        "workers",
                        rel,
                        node.lineno,
                        f"DataLoader workers keep random state of their own ({how}), seeded once from the"
                        " global RNG when they start",
                    )
                )
    return sorted(hints, key=lambda h: h.line)
