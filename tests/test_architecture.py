"""The package's shape: subpackages that only import downwards, no cycles, a core without torch.

Every import counts, module-level and function-local alike (only ``if TYPE_CHECKING:`` blocks,
which import nothing at run time, are left out), in ``integrations/`` too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "expckpt"

ORDER = ["", "policy", "state", "serialize", "store", "publish", "ops", "train", "integrations", "cli"]
"""Bottom to top; ``""`` is the foundation at the top level (errors, text, phases, faults)."""

CORE_WITHOUT_TORCH = [
    "publish.committer",
    "ops.gc",
    "ops.verify",
    "ops.showtree",
    "train.resume",
    "cli",
    "store.catalog",
    "publish.retention",
    "train.wiring",
    "ops.reset",
    "publish.remote",
    "publish.pusher",
    "ops.cloudgc",
]
"""What `expckpt show/list/gc/verify/reset` load: it must work on a machine without torch."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _package(module: str) -> str:
    head = module.split(".")[0]
    return head if head in ORDER and (PACKAGE / head).is_dir() else ""


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, known: set[str]) -> set[str]:
    """expckpt modules ``path`` imports, anywhere in the file but ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def add(name: str) -> None:
        name = name.removeprefix("expckpt.")
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    def walk(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "expckpt":
            for alias in node.names:
                add(
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}".removeprefix("expckpt.") in known
                    else node.module
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "expckpt":
                    add(alias.name)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_every_folder_is_a_known_package_with_a_docstring() -> None:
    folders = sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))
    )
    assert [f for f in folders if f not in ORDER] == []
    for folder in folders:
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder


def test_imports_only_go_down() -> None:
    rank = {pkg: i for i, pkg in enumerate(ORDER)}
    upward = [
        f"{name} ({_package(name) or 'top'}) imports {dep} ({_package(dep) or 'top'})"
        for name, deps in _graph().items()
        for dep in deps
        if name and dep and rank[_package(dep)] > rank[_package(name)]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep:  # the package root (``expckpt/__init__``) re-exports lazily
                visit(dep, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


def test_the_architecture_test_sees_function_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from expckpt.store.refs import CheckpointRef\n")
    assert _imports(source, {"store.refs", "store"}) == {"store.refs"}


def test_core_imports_without_torch() -> None:
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
