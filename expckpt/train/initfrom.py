"""A fresh trial from another checkpoint's weights (``checkpoint.init_from``).

Only the modules' weights are loaded; the step stays at -1 and the optimizer, scheduler, RNG,
training watch and metric history stay fresh, unless ``checkpoint.init_restore`` names what
else to carry (any object of the state by name, ``rng`` for the RNG states). Loading uses
``load_checkpoint`` (``weights_only``: no code runs); the file was hashed against its record by
``initsource.find_source`` just before.

With ``init_strict: true`` (the default) the first key whose presence or shape differs stops
the run with one line; with ``false`` the matching keys are loaded and the counts printed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.serialize.dirstate import load_dir_checkpoint
from expckpt.errors import ArchitectureMismatchError, ConfigError, ExpCkptError
from expckpt.train.initsource import InitSource
from expckpt.store.session import SessionNote
from expckpt.train.wiring import Wiring
from expckpt.state.rng import restore_rng
from expckpt.state.safe_values import decode, restore_in_place
from expckpt.state.state import TrainingState

__all__ = ["LINEAGE_KEY", "file_lineage", "fitting_keys", "holds_trial", "init_state", "started_line"]

LINEAGE_KEY = "initialized_from"
"""The key in the state's ``library`` (saved in every checkpoint file) naming the trial's source."""


def _weights_of(payload: Mapping[str, Any], name: str, only_module: bool) -> Mapping[str, Any] | None:
    weights = payload.get(name)
    if (
        weights is None
        and only_module
        and "format" not in payload
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    ):
        return payload  # a plain torch.save(model.state_dict(), path)
    return weights if isinstance(weights, Mapping) else None


def _first_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str | None:
    for key in expected:  # the model's own order: the first layer that differs
        if key not in found:
            return f"{key} is missing from the source (the model has it with shape {list(expected[key])})"
        if expected[key] != found[key]:
            return f"{key} is {list(found[key])} in the source but {list(expected[key])} in the model"
    extra = next((k for k in found if k not in expected), None)
    return f"{extra} ({list(found[extra])}) is in the source but not in the model" if extra else None


def fitting_keys(
    name: str,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    source: InitSource,
    strict: bool,
    echo: Callable[[str], None],
) -> set[str]:
    """The keys of ``name`` to load from ``source``: every one when the shapes fit; else, with
    ``strict``, one line naming the first mismatch, without it, those that match (and the counts)."""
    mismatch = _first_mismatch(expected, found)
    if mismatch is None:
        return set(expected)
    if strict:
        raise ArchitectureMismatchError(
            f"checkpoint.init_from {source.describe()} does not fit {name}: {mismatch}; fix the model,"
            " or set checkpoint.init_strict: false to load only the weights that match",
            path=source.path,
        )
    loadable = {k for k in expected if k in found and found[k] == expected[k]}
    missing = len(expected) - len(loadable)
    unexpected = len([k for k in found if k not in expected])
    resized = len([k for k in found if k in expected and found[k] != expected[k]])
    echo(
        f"expckpt: init_from {source.describe()} into {name}: loaded {len(loadable)} keys,"
        f" {missing} missing (kept fresh, {resized} of them with another shape), {unexpected} unexpected (ignored)"
    )
    return loadable


def _load_module(
    name: str,
    module: torch.nn.Module,
    weights: Mapping[str, Any],
    source: InitSource,
    strict: bool,
    echo: Callable[[str], None],
) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    loadable = fitting_keys(name, expected, found, source, strict, echo)
    if loadable == set(expected) and set(found) == loadable:
        module.load_state_dict(weights)
    else:
        module.load_state_dict({k: v for k, v in weights.items() if k in loadable}, strict=False)


def init_state(
    state: TrainingState,
    source: InitSource,
    *,
    restore: tuple[str, ...],
    strict: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Load ``source``'s weights (and the objects ``restore`` names) into the fresh ``state``."""
    if source.files is not None:
        raise ConfigError(
            f"checkpoint.init_from {source.describe()} is a directory checkpoint (DCP's shards), which only"
            " DcpHandler loads; name a checkpoint file, or train with handler=DcpHandler",
            key="checkpoint.init_from",
            value=source.spec,
        )
    payload = load_checkpoint(source.path)
    modules = state.modules()
    for name, module in modules.items():
        weights = _weights_of(payload, name, len(modules) == 1)
        if weights is None:
            raise ConfigError(
                f"checkpoint.init_from {source.describe()} holds no weights for {name!r} (it has:"
                f" {', '.join(sorted(str(k) for k in payload)[:8])}); name the module as it was saved",
                key="checkpoint.init_from",
                value=source.spec,
            )
        _load_module(name, module, weights, source, strict, echo)
    for name in restore:
        if name == "rng":
            if not isinstance(payload.get("rng"), Mapping):
                raise ConfigError(
                    f"checkpoint.init_restore names rng, but {source.describe()} holds no RNG states;"
                    " remove it from init_restore",
                    key="checkpoint.init_restore",
                    value=name,
                )
            restore_rng(payload["rng"])
            continue
        obj = state.objects.get(name)
        if obj is None or payload.get(name) is None:
            where = "this run's state" if obj is None else f"{source.describe()}"
            raise ConfigError(
                f"checkpoint.init_restore names {name!r}, which {where} does not have (state: "
                f"{', '.join(state.objects)}); remove it or name one of those",
                key="checkpoint.init_restore",
                value=name,
            )
        saved = decode(payload[name])
        if isinstance(obj, dict):
            restore_in_place(obj, saved)
        else:
            obj.load_state_dict(saved)
    state.library[LINEAGE_KEY] = source.identity
    echo(started_line(source, restore))


def started_line(source: InitSource, restore: tuple[str, ...]) -> str:
    """What a fresh trial says once the source is loaded (every handler alike)."""
    carried = f" and {', '.join(restore)}" if restore else ""
    return f"expckpt: fresh trial from {source.describe()}: its weights{carried}; step 0, everything else fresh"


def file_lineage(path: Path) -> object:
    """The lineage a ``torch.save`` checkpoint (file or directory of them) holds, if any."""
    try:
        payload = load_dir_checkpoint(path) if path.is_dir() else load_checkpoint(path)
    except (ExpCkptError, OSError):
        return None
    library = payload.get("expckpt")
    return library.get(LINEAGE_KEY) if isinstance(library, Mapping) else None


def holds_trial(wiring: Wiring, source: InitSource, lineage: Callable[[], object] | None = None) -> bool:
    """Whether the workspace's checkpoint belongs to a trial started from ``source`` (then the
    run resumes that chain; a rerun after an interruption never starts over from the source).
    ``lineage`` reads what the workspace's checkpoint holds (the handler's; a file's by default)."""
    path = wiring.path
    if not path.exists() or SessionNote.was_reset(wiring.workspace, wiring.rel_path):
        return False
    found = lineage() if lineage is not None else file_lineage(path)
    return found == source.identity
