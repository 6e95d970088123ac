"""Staging: a checkpoint's tensors as CPU tensors, so every file holds the same kind of bytes.

``torch.save`` writes each storage with its device tag (``cpu``, ``cuda:0``). If synchronous
saves wrote GPU tensors as they are and asynchronous ones wrote their CPU copies, the same state
would give two different files and two DVC cache objects. Both paths therefore go through here
and write CPU tensors only (loading already uses ``map_location="cpu"``):

* ``to_cpu(state)`` (synchronous saves): CPU tensors are kept as they are -- ``write_temp``
  reads them before it returns -- and tensors on another device are copied to CPU memory.
* ``Stager.stage(state)`` (asynchronous saves): every tensor is copied into a buffer kept from
  one checkpoint to the next, because training goes on while the copy is written. Buffers for
  CUDA tensors are pinned and filled by non-blocking copies enqueued on the tensor's current
  CUDA stream, so the caller gets control back once the copies are *enqueued*: the next
  optimizer step, enqueued on the same stream after them, cannot run before they are done
  (the trap of pytorch #144657). ``Staged.wait_ready()`` waits for a CUDA event recorded after
  the copies; the background writer calls it before reading the buffers.

Both keep the state's structure *and its storage sharing*: an object met twice is copied once,
and tensors that are views of one storage (tied weights, slices) stay views of one copied
storage, so ``torch.save`` writes exactly the records it would write for the original.

Both also make the pickle depend on values only, not on which objects happen to be shared:
pickle writes an object met a second time as a back-reference, so a key ``"step"`` that is the
interned literal in a fresh run but a separately unpickled string in a resumed one gave two
different files for equal states. Strings are interned and equal tuples of plain values are
made one object, so a resumed run's checkpoint is byte for byte the uninterrupted run's.
Nothing here touches CUDA unless the state holds a CUDA tensor (no context is created for a
CPU-only run).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Staged", "Stager", "cpu_storages", "to_cpu"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_SCALARS = (str, int, float, bool, type(None))


def _is_plain(tensor: torch.Tensor) -> bool:
    """A dense tensor whose bytes are one untyped storage (what can be staged by storage)."""
    return type(tensor) in _PLAIN and tensor.layout == torch.strided and not tensor.is_quantized


def _rebuild(tensor: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
    """``tensor``'s view (offset, size, stride) over ``storage``, as the same kind of tensor."""
    view = torch.empty(0, dtype=tensor.dtype).set_(storage, tensor.storage_offset(), tensor.size(), tensor.stride())
    if type(tensor) is torch.nn.Parameter:
        return torch.nn.Parameter(view, requires_grad=tensor.requires_grad)
    if tensor.requires_grad:
        view.requires_grad_(True)
    return view


class _Walk:
    """Maps every tensor of a nested state through ``copy_storage``, keeping structure and sharing."""

    def __init__(self, copy_storage: Callable[[torch.Tensor, tuple[Any, ...]], torch.UntypedStorage | None]) -> None:
        self._copy_storage = copy_storage
        self._memo: dict[int, Any] = {}
        self._tuples: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._storages: dict[int, torch.UntypedStorage | None] = {}

    def __call__(self, obj: Any, path: tuple[Any, ...] = ()) -> Any:
        if type(obj) is str:
            return sys.intern(obj)
        if id(obj) in self._memo:
            return self._memo[id(obj)]
        if isinstance(obj, torch.Tensor):
            copied: Any = self._tensor(obj, path)
        elif isinstance(obj, dict):
            copied = type(obj)() if isinstance(obj, OrderedDict) else {}
            self._memo[id(obj)] = copied
            for key, value in obj.items():
                copied[sys.intern(key) if type(key) is str else key] = self(value, (*path, key))
            if hasattr(obj, "_metadata"):
                copied._metadata = obj._metadata
        elif isinstance(obj, list):
            copied = []
            self._memo[id(obj)] = copied
            copied.extend(self(v, (*path, i)) for i, v in enumerate(obj))
        elif isinstance(obj, tuple):
            items = [self(v, (*path, i)) for i, v in enumerate(obj)]
            copied = obj if all(a is b for a, b in zip(items, obj)) else tuple(items)
            if type(obj) is tuple and all(type(v) in _SCALARS for v in items):
                key = tuple((type(v), repr(v)) for v in items)  # 1 == 1.0 == True, yet pickled apart
                copied = self._tuples.setdefault(key, copied)
        else:
            return obj  # immutable scalars and strings are shared, as in the original
        self._memo[id(obj)] = copied
        return copied

    def _tensor(self, tensor: torch.Tensor, path: tuple[Any, ...]) -> torch.Tensor:
        src = tensor.detach() if type(tensor) is torch.nn.Parameter else tensor
        if not _is_plain(tensor):  # sparse, quantised, subclasses: a plain CPU copy, not reused
            return tensor if tensor.device.type == "cpu" else tensor.detach().to("cpu")
        storage = src.untyped_storage()
        key = storage._cdata  # what torch.save itself keys storages by
        if key not in self._storages:
            self._storages[key] = self._copy_storage(src, path)
        copied = self._storages[key]
        return tensor if copied is None else _rebuild(tensor, copied)


def to_cpu(state: Any) -> Any:
    """``state`` with every tensor on the CPU: CPU tensors as they are, others copied (synchronously)."""

    def copy(tensor: torch.Tensor, path: tuple[Any, ...]) -> torch.UntypedStorage | None:
        if tensor.device.type == "cpu":
            return None
        return tensor.untyped_storage().cpu()

    return _Walk(copy)(state)


def cpu_storages(state: Any) -> list[tuple[int, int]]:
    """``(address, nbytes)`` of every CPU tensor storage in ``state`` (memory torch.save reads)."""
    spans: list[tuple[int, int]] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "cpu" and _is_plain(obj):
                storage = obj.untyped_storage()
                spans.append((storage.data_ptr(), storage.nbytes()))
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)

    visit(state)
    return spans


@dataclass
class Staged:
    """A staged copy of the state, and what to wait for before reading it."""

    state: Any
    events: list[Any] = field(default_factory=list)

    def wait_ready(self) -> None:
        """Block until the device-to-host copies are complete (no-op for CPU states)."""
        for event in self.events:
            event.synchronize()


class Stager:
    """Copies nested state into CPU buffers kept from one checkpoint to the next.

    One ``Stager`` serves one copy in flight: stage again only after the previous copy was
    written (``AsyncWriter`` keeps ``depth`` of them and hands one out when it is free).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.UntypedStorage] = {}

    def stage(self, state: Any) -> Staged:
        """Copy ``state``; returns once CPU copies are done and CUDA copies are enqueued."""
        devices: set[torch.device] = set()

        def copy(tensor: torch.Tensor, path: tuple[Any, ...]) -> torch.UntypedStorage:
            source = tensor.untyped_storage()
            on_cuda = tensor.device.type == "cuda"
            buffer = self._buffers.get(path)
            if buffer is None or buffer.nbytes() != source.nbytes() or buffer.is_pinned() != on_cuda:
                buffer = torch.empty(source.nbytes(), dtype=torch.uint8, pin_memory=on_cuda).untyped_storage()
                self._buffers[path] = buffer
            if on_cuda:
                devices.add(tensor.device)
                buffer.copy_(source, non_blocking=True)  # on the device's current stream
            else:
                buffer.copy_(source)
            return buffer

        # One thread: a memcpy gains nothing from OpenMP, and a parallel region per tensor
        # stalls whenever the writer thread holds the other core (measured 76 ms -> 3 ms for
        # 12 MB on 2 cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            state = _Walk(copy)(state)
        finally:
            torch.set_num_threads(threads)
        events = []
        for device in devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        return Staged(state=state, events=events)
