"""Values a checkpoint may hold, checked at save time, and restoring plain state in place.

A checkpoint must load with ``torch.load(weights_only=True)``, which accepts tensors, numbers,
strings, bytes, ``None`` and lists, tuples and dicts of those. ``encode`` walks a value once per
save (no copies: tensors are passed by reference), turns NumPy arrays and scalars into tagged
tensors so they load safely and come back as NumPy, and refuses anything else with the key
named. ``decode`` reverses the tagging. ``restore_in_place`` loads saved plain state into the
user's own dict so references the user holds stay live.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from expckpt.errors import CheckpointError

__all__ = ["decode", "encode", "restore_in_place"]

_ARRAY = "__expckpt_ndarray__"
_SCALAR = "__expckpt_npscalar__"
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _numpy() -> Any:
    import sys

    return sys.modules.get("numpy")  # only values of an already imported NumPy can be NumPy values


def encode(value: Any, where: str) -> Any:
    """``value`` made safe to save; ``where`` names it in errors (``extras['ema']``)."""
    if type(value) in _PLAIN or isinstance(value, _TORCH):  # exact types: np.float64 is a float too
        return value
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype == object:
            raise _refuse(where, "a NumPy array of Python objects")
        return {_ARRAY: torch.from_numpy(value.copy() if not value.flags.writeable else value)}
    if np is not None and isinstance(value, np.generic):
        return {_SCALAR: torch.from_numpy(np.asarray(value).reshape(()).copy())}
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        changed = False
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None), tuple)):
                raise _refuse(f"{where}[{key!r}]", f"a key of type {type(key).__name__}")
            new = encode(item, f"{where}[{key!r}]")
            changed |= new is not item
            out[key] = new
        if not changed:
            return value
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        items = [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if isinstance(value, list) else tuple(items)
    raise _refuse(where, f"a {type(value).__module__}.{type(value).__qualname__}")


def _refuse(where: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{where} holds {what}, which a safe checkpoint (torch.load weights_only=True) cannot store;"
        " keep tensors, numbers, strings, lists and dicts there, or give the object state_dict()/load_state_dict()"
    )


def decode(value: Any) -> Any:
    """Undo ``encode``'s tagging of NumPy values (everything else is returned as it is)."""
    if isinstance(value, dict):
        if len(value) == 1 and _ARRAY in value and isinstance(value[_ARRAY], torch.Tensor):
            return value[_ARRAY].numpy()
        if len(value) == 1 and _SCALAR in value and isinstance(value[_SCALAR], torch.Tensor):
            return value[_SCALAR].numpy()[()]
        decoded = {k: decode(v) for k, v in value.items()}
        if all(decoded[k] is value[k] for k in value):
            return value
        return type(value)(decoded) if isinstance(value, OrderedDict) else decoded
    if type(value) in (list, tuple):
        items = [decode(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def restore_in_place(target: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """Make ``target`` equal ``saved`` while keeping the identity of what ``target`` holds.

    Nested dicts are updated recursively; lists are refilled; tensors and NumPy arrays of the
    same shape and dtype are overwritten in place; anything else is replaced.
    """
    for key in [k for k in target if k not in saved]:
        del target[key]
    np = _numpy()
    for key, value in saved.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            restore_in_place(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            current[:] = value
        elif (
            isinstance(current, torch.Tensor)
            and isinstance(value, torch.Tensor)
            and current.shape == value.shape
            and current.dtype == value.dtype
        ):
            with torch.no_grad():
                current.copy_(value)
        elif (
            np is not None
            and isinstance(current, np.ndarray)
            and isinstance(value, np.ndarray)
            and current.shape == value.shape
            and current.dtype == value.dtype
            and current.flags.writeable
        ):
            current[...] = value
        else:
            target[key] = value
