"""The package's shape: layers that only import downwards, no cycles, a core without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "expckpt"

LAYERS: dict[str, int] = {
    # 0: pure values and rules, no Git, no DVC, no torch
    "errors": 0, "refs": 0, "ranking": 0, "checks": 0, "text": 0, "phases": 0, "faults": 0, "atomic": 0,
    "policy": 0, "saving": 0, "config": 0, "progress": 0, "gclock": 0, "__init__": 0, "seeding": 0,
    "stopafter": 0, "doctor_hints": 0,
    # 1: storage: Git, the DVC cache and project files
    "gitstore": 1, "cache": 1, "records": 1, "session": 1, "project": 1, "lockfile": 1, "catalog": 1,
    "report": 1, "watch": 1, "inuse": 1, "history": 1, "gitlocks": 1, "gitwrites": 1, "gittrees": 1,
    "dirout": 1, "headstate": 1, "outside": 1, "recorded": 1, "pause": 1, "branchpoints": 1, "execdir": 1,
    # 2: operations on checkpoints, still without torch
    "committer": 2, "resume": 2, "livefiles": 2, "gc": 2, "verify": 2, "show": 2, "reset": 2, "retention": 2,
    "wiring": 2, "signals": 2, "remote": 2, "pusher": 2, "cloudgc": 2, "workspace_guard": 2, "doctor_run": 2, "cli": 3,
    "initsource": 2, "continuing": 2, "exprwlock": 2, "remotename": 2, "unsafe": 2, "quarantine": 2, "orphan": 1,
    "readwait": 1,
    # 4: torch
    "rng": 4, "safe_values": 4, "hparams": 4, "state": 4, "checkpoint_file": 4, "writer": 4, "staging": 4, "streaming": 0,
    "dirstate": 4, "stateset": 4, "doctor_compare": 4, "generators": 4, "torchsched": 4, "initfrom": 4, "datapos": 4,
    # 5: training-loop integrations
    "outputs": 4, "loading": 4, "coordination": 0, "handlers": 4, "checkpointer": 5, "live": 6,
    # issue 26: the checkpoint tree and its views
    "lineage": 2, "showtree": 2, "htmlreport": 2, "htmlassets": 1,
    "doctor": 5,
}
"""Each module's layer: a module may import only from its own layer or lower ones."""

CORE_WITHOUT_TORCH = ["committer", "gc", "verify", "show", "resume", "cli", "catalog", "retention", "wiring", "reset",
                      "remote", "pusher", "cloudgc", "doctor_run", "doctor_hints", "stopafter"]


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in PACKAGE.glob("*.py")}


def _imports(path: Path) -> set[str]:
    """expckpt modules imported at module level (imports inside functions are lazy by design)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("expckpt."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("expckpt."))
    return found


def test_every_module_has_a_layer() -> None:
    assert sorted(set(_modules()) - set(LAYERS)) == []


def test_imports_only_go_down() -> None:
    upward = [
        f"{name} (layer {LAYERS[name]}) imports {dep} (layer {LAYERS[dep]})"
        for name, path in _modules().items()
        for dep in _imports(path)
        if dep in LAYERS and LAYERS[dep] > LAYERS[name]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = {name: _imports(path) for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.slow
def test_core_imports_without_torch() -> None:
    """committer, gc, verify, show, resume and the CLI work on a machine without torch."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'dvclive'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import expckpt.{m}\n" for m in CORE_WITHOUT_TORCH)
        + "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
