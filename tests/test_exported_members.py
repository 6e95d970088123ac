"""The public surface is explicit and pinned (httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import expckpt
import expckpt.errors

EXPORTED = [
    "PAUSED_EXIT",
    "CheckpointConfig",
    "CheckpointLive",
    "Checkpointer",
    "ConfigError",
    "DataPosition",
    "Decision",
    "ExpCkptError",
    "Resumed",
    "StopTraining",
    "TrainingPaused",
    "TrainingState",
    "load_checkpoint",
    "load_model",
]

MODULES = sorted(
    m.name.removeprefix("expckpt.")
    for m in pkgutil.walk_packages(expckpt.__path__, "expckpt.")
    if not m.ispkg
    and not m.name.startswith("expckpt.integrations")
    and not any(p.startswith("_") for p in m.name.split("."))
)
"""Every module of the core (the framework adapters need their frameworks: their own tests cover them)."""


def test_all_is_pinned() -> None:
    assert expckpt.__all__ == EXPORTED  # in ruff's order (RUF022): constants, classes, functions


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from expckpt import *", namespace)  # noqa: S102 - exactly what users write
    assert sorted(k for k in namespace if not k.startswith("__")) == sorted(EXPORTED)
    for name in EXPORTED:
        assert getattr(expckpt, name) is namespace[name]


def test_exports_come_from_a_public_module() -> None:
    """Each top-level name is the object its home module lists in its own ``__all__``."""
    homes = {}
    for module_name in MODULES:
        module = importlib.import_module(f"expckpt.{module_name}")
        for name in module.__all__:
            homes.setdefault(name, []).append(getattr(module, name))
    for name in EXPORTED:
        assert any(obj is getattr(expckpt, name) for obj in homes.get(name, [])), name


@pytest.mark.parametrize("module_name", MODULES)
def test_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(f"expckpt.{module_name}")
    assert isinstance(module.__all__, list) and module.__all__, f"expckpt.{module_name} has an empty __all__"
    assert len(set(module.__all__)) == len(module.__all__), f"duplicates in expckpt.{module_name}.__all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_every_error_is_rooted_at_expckpterror() -> None:
    errors = [getattr(expckpt.errors, name) for name in expckpt.errors.__all__]
    assert all(isinstance(e, type) and issubclass(e, expckpt.ExpCkptError) for e in errors)


def test_a_name_no_longer_exported_says_where_it_lives() -> None:
    with pytest.raises(
        AttributeError,
        match=r"^expckpt.UnsafeCheckpointError is not exported from the top level any more:"
        r" from expckpt.errors import UnsafeCheckpointError$",
    ):
        expckpt.UnsafeCheckpointError  # noqa: B018
