"""No private attribute of DVC or torch objects outside the one adapter module per dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "expckpt"
PRIVATE = {
    "_build": "dvc's Output._build: use dvc_data.hashfile.build.build",
    "_parameters": "torch Module._parameters: use named_parameters(recurse=False)",
    "_buffers": "torch Module._buffers: use named_buffers(recurse=False)",
    "_non_persistent_buffers_set": "torch Module._non_persistent_buffers_set: use state_dict() keys",
    "_modules": "torch Module._modules: use named_modules()/named_children()",
    "_get_lr_called_within_step": "torch LRScheduler internals: go through expckpt.state.torchsched",
    "_last_lr": "torch LRScheduler internals: go through expckpt.state.torchsched",
    "_get_closed_form_lr": "torch LRScheduler internals: go through expckpt.state.torchsched",
    "_checkpoint_connector": "Lightning's checkpoint connector: go through integrations.lightning_internals",
    "_loaded_checkpoint": "Lightning's checkpoint connector: go through integrations.lightning_internals",
    "_every_n_epochs": "ModelCheckpoint internals: go through integrations.lightning_internals",
}
ADAPTERS = {
    "torchsched": {"_last_lr", "_get_closed_form_lr"},
    "lightning_internals": {"_checkpoint_connector", "_loaded_checkpoint", "_every_n_epochs"},
}
"""Module (by name, wherever it lives in the package) -> the private names it alone may use."""


def uses(path: Path) -> set[str]:
    """Private names from ``PRIVATE`` read on anything but ``self`` (as attributes or getattr)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.add(node.attr)
        elif isinstance(node, ast.Constant) and node.value in PRIVATE:
            found.add(str(node.value))
    return found


def test_private_apis_of_dvc_and_torch_stay_in_their_adapters() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for name in sorted(uses(path) - ADAPTERS.get(path.stem, set())):
            offences.append(f"{rel}: {name} ({PRIVATE[name]})")
    assert offences == []
