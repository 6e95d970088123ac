#!/usr/bin/env python
"""Checkpoint file writing on GPU (or CPU) states: blocking and done times, side by side.

No Git, no DVC (it runs where only torch is installed: put the checkout on PYTHONPATH). For each
state size -- Linear(W, W) layers plus their Adam state on ``--device``, about that many MB of
tensors -- every case runs once per repetition, in a rotating order, with ``os.sync()`` before
each so no case pays for another's dirty pages:

* ``torch.save``          ``torch.save(state, path)``: the bytes reach the page cache only;
* ``torch.save+fsync``    the same into an open file, then flush + ``os.fsync``;
* ``md5``                 ``hashlib.md5`` of the file's bytes, from memory (DVC's hash, one core);
* ``pinned copy``         (cuda) the state copied into preallocated pinned buffers with
                          non-blocking copies, then synchronised: the floor of any async staging;
* ``sync write_temp``     expckpt's synchronous write (stream + hash + fsync): blocking = done;
* ``sync before``         (``--compare-with FILE``) the ``write_temp`` of another checkpoint_file.py,
                          e.g. main's, loaded beside this one;
* ``async``               ``AsyncWriter.submit`` (blocking), then until the file is written,
                          fsynced and renamed (done); buffers are reused across repetitions.
                          On CUDA the call returns once the copies are *enqueued*; ``async
                          copies done`` is the time until they completed (a synchronize after
                          the call): what the next step enqueued behind them waits for;
* ``dcp async_save``      (``--dcp``, default on CUDA) ``torch.distributed.checkpoint.async_save``
                          (blocking), ``future.result()`` (done).

Then, per size: **training-step slowdown** while an async publish runs in the background (median
step time of forward+backward+Adam on a batch, during the publish vs. before it), and the
**busy writer**: ``--busy-saves`` saves requested on consecutive short steps (an in-place
update of the weights), each policy
(``when_busy: wait`` / ``skip``), with the time each request blocked.

    python bench/gpu.py --sizes 100,1000,4000            # on a CUDA machine: every GPU figure
    python bench/gpu.py --device cpu --sizes 12,100,500 --compare-with /tmp/main/expckpt/serialize/checkpoint_file.py
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from expckpt.serialize.checkpoint_file import write_temp  # noqa: E402
from expckpt.serialize.writer import AsyncWriter  # noqa: E402

TARGET_ASYNC_VS_PINNED = 1.3
TARGET_SYNC_VS_FLOOR = 1.2
TARGET_STEP_SLOWDOWN = 0.02


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_state(megabytes: int, device: str, width: int) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    per_layer = (width * width + width) * 4 * 3  # weights + Adam exp_avg + exp_avg_sq
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_step(model, optimizer, width, device)
    info = {"layers": layers, "width": width,
            "tensor_bytes": sum(t.numel() * t.element_size() for t in state_of(model, optimizer)["model"].values())
            + sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor))}
    return model, optimizer, info


def state_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, width: int, device: str) -> None:
    x = torch.randn(64, width, device=device)
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def load_write_temp(path: Path) -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location("expckpt_bench_before_checkpoint_file", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_temp


class PinnedFloor:
    """The state's tensors copied into preallocated pinned buffers, non-blocking, then synchronised."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.pairs = [(t, torch.empty(t.shape, dtype=t.dtype, pin_memory=True)) for t in tensors(state)]

    def __call__(self) -> None:
        for src, dst in self.pairs:
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()


def tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def measure_size(megabytes: int, args: argparse.Namespace, work: Path, before: Callable[..., Any] | None) -> dict[str, Any]:
    device = args.device
    model, optimizer, info = build_state(megabytes, device, args.width)
    print(f"-- {megabytes} MB: {info['layers']} x Linear({args.width}) + Adam on {device} = "
          f"{info['tensor_bytes'] / 1e6:.0f} MB of tensors; {args.reps} repetitions")
    dest = work / "model.pt"
    times: dict[str, list[float]] = {}
    done: dict[str, list[float]] = {}
    published: list[Any] = []

    def publish(state: Any) -> None:
        written = write_temp(state, dest)
        written.publish()
        published.append(written.md5)

    writer = AsyncWriter(publish, depth=2)
    floor = PinnedFloor(state_of(model, optimizer)) if device.startswith("cuda") else None
    md5_bytes = b""

    def case(kind: str) -> None:
        nonlocal md5_bytes
        state = state_of(model, optimizer)
        for leftover in work.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        gc.collect()
        sync_device(device)
        os.sync()
        finished: float | None = None
        start = time.perf_counter()
        if kind == "torch.save":
            torch.save(state, dest)
        elif kind == "torch.save+fsync":
            with open(dest, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
        elif kind == "md5":
            start = time.perf_counter()
            hashlib.md5(md5_bytes, usedforsecurity=False).hexdigest()
        elif kind == "pinned copy":
            assert floor is not None
            floor()
        elif kind == "sync write_temp":
            write_temp(state, dest).publish()
        elif kind == "sync before":
            assert before is not None
            before(state, dest).publish()
        elif kind == "async":
            writer.submit(state, lambda snapshot: snapshot)
            blocked = time.perf_counter() - start
            if device.startswith("cuda"):  # the copies were only enqueued: when are they done?
                torch.cuda.synchronize()
                times.setdefault("async copies done", []).append(time.perf_counter() - start)
                done.setdefault("async copies done", []).append(time.perf_counter() - start)
            writer.drain()
            finished = time.perf_counter() - start
            start = time.perf_counter() - blocked  # report the blocking part
        elif kind == "dcp async_save":
            import torch.distributed.checkpoint as dcp

            future = dcp.async_save(state, checkpoint_id=str(work / "dcp"))
            blocked = time.perf_counter() - start
            future.result()
            finished = time.perf_counter() - start
            start = time.perf_counter() - blocked
        elapsed = time.perf_counter() - start
        times.setdefault(kind, []).append(elapsed)
        done.setdefault(kind, []).append(finished if finished is not None else elapsed)

    kinds = ["torch.save", "torch.save+fsync", "sync write_temp", "async", "md5"]
    if before is not None:
        kinds.insert(3, "sync before")
    if floor is not None:
        kinds.append("pinned copy")
    if args.dcp:
        kinds.append("dcp async_save")
    # warm-up (allocates the async buffers, DCP's staging, CUDA kernels), not timed
    torch.save(state_of(model, optimizer), dest)
    md5_bytes = dest.read_bytes()
    file_bytes = len(md5_bytes)
    for kind in list(kinds):
        try:
            case(kind)
        except Exception as exc:  # noqa: BLE001 - e.g. DCP missing or refusing: measure the rest
            if kind != "dcp async_save":
                raise
            print(f"   {kind} left out: {type(exc).__name__}: {exc}")
            kinds.remove(kind)
    times.clear()
    done.clear()
    for rep in range(args.reps):
        for kind in kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]:
            case(kind)
    md5_bytes = b""
    med = {k: statistics.median(v) for k, v in times.items()}
    med_done = {k: statistics.median(v) for k, v in done.items()}
    floor_sync = max(med["torch.save+fsync"], med["md5"])
    result: dict[str, Any] = {
        "size_mb": megabytes, **info, "file_bytes": file_bytes, "device": device,
        "blocking_s": {k: C.summary(v) for k, v in times.items()},
        "done_s": {k: C.summary(v) for k, v in done.items()},
        "sync_vs_floor": med["sync write_temp"] / floor_sync,
        "sync_vs_torch_save": med["sync write_temp"] / med["torch.save"],
        "sync_vs_torch_save_fsync": med["sync write_temp"] / med["torch.save+fsync"],
        "sync_vs_md5": med["sync write_temp"] / med["md5"],
    }
    if "sync before" in med:
        result["before_vs_floor"] = med["sync before"] / floor_sync
        result["before_vs_torch_save"] = med["sync before"] / med["torch.save"]
    if "pinned copy" in med:
        result["async_vs_pinned"] = med["async"] / med["pinned copy"]
        result["async_copies_done_vs_pinned"] = med["async copies done"] / med["pinned copy"]
    result["step_slowdown"] = step_slowdown(model, optimizer, writer, args)
    writer.close()
    result["busy"] = {policy: busy_writer(model, optimizer, publish, policy, args) for policy in ("wait", "skip")}
    print_size(result)
    del model, optimizer, floor
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def step_slowdown(model: nn.Module, optimizer: torch.optim.Optimizer, writer: AsyncWriter,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Median training-step time while an async publish runs vs before it."""

    def step() -> float:
        start = time.perf_counter()
        train_step(model, optimizer, args.width, args.device)
        sync_device(args.device)
        return time.perf_counter() - start

    for _ in range(3):
        step()
    quiet = [step() for _ in range(args.quiet_steps)]
    writer.submit(state_of(model, optimizer), lambda snapshot: snapshot)
    busy = []
    while writer.busy() and len(busy) < 10_000:
        busy.append(step())
    writer.drain()
    q, b = statistics.median(quiet), statistics.median(busy) if busy else float("nan")
    return {"quiet_step_s": C.summary(quiet), "during_publish_step_s": C.summary(busy), "slowdown": b / q - 1}


def busy_writer(model: nn.Module, optimizer: torch.optim.Optimizer, publish: Callable[[Any], None], policy: str,
                args: argparse.Namespace) -> dict[str, Any]:
    """``--busy-saves`` saves requested on consecutive training steps."""
    said: list[str] = []
    writer = AsyncWriter(publish, depth=2, when_busy=policy, echo=said.append)
    blocked, taken = [], 0
    start_all = time.perf_counter()
    for _ in range(args.busy_saves):
        with torch.no_grad():  # a short step: saves come faster than a publish takes
            for p in model.parameters():
                p.add_(1e-4)
        sync_device(args.device)
        start = time.perf_counter()
        taken += writer.submit(state_of(model, optimizer), lambda snapshot: snapshot)
        blocked.append(time.perf_counter() - start)
    writer.drain()
    writer.close()
    return {"requested": args.busy_saves, "taken": taken, "blocked_s": [round(b, 4) for b in blocked],
            "total_s": time.perf_counter() - start_all, "said": said}


def print_size(r: dict[str, Any]) -> None:
    rows = [["case", "blocking", "done", "blocking (min)"]]
    for kind, s in r["blocking_s"].items():
        rows.append([kind, C.ms(s["median"]), C.ms(r["done_s"][kind]["median"]), C.ms(s["min"])])
    print(C.table(rows))
    floor = max(r["blocking_s"]["torch.save+fsync"]["median"], r["blocking_s"]["md5"]["median"])
    print(f"   sync write_temp / max(torch.save+fsync, md5) = {r['sync_vs_floor']:.2f}x (target <= {TARGET_SYNC_VS_FLOOR}x;"
          f" floor {C.ms(floor)}); / torch.save = {r['sync_vs_torch_save']:.2f}x")
    if "before_vs_floor" in r:
        print(f"   sync before / floor = {r['before_vs_floor']:.2f}x; / torch.save = {r['before_vs_torch_save']:.2f}x")
    if "async_vs_pinned" in r:
        print(f"   async blocking / pinned copy = {r['async_vs_pinned']:.2f}x, until its copies are done"
              f" {r['async_copies_done_vs_pinned']:.2f}x (target <= {TARGET_ASYNC_VS_PINNED}x)")
    s = r["step_slowdown"]
    print(f"   training step during a background publish: {100 * s['slowdown']:+.1f}% "
          f"({len(s['during_publish_step_s'].get('values', []))} steps; target <= {100 * TARGET_STEP_SLOWDOWN:.0f}%)")
    for policy, b in r["busy"].items():
        print(f"   busy writer, when_busy={policy}: {b['taken']}/{b['requested']} saves taken, blocked "
              f"{', '.join(C.ms(x) for x in b['blocked_s'])}; all written after {C.secs(b['total_s'])}")
    print()


def summary_table(results: list[dict[str, Any]]) -> str:
    kinds = list(results[0]["blocking_s"])
    rows = [["case (blocking / done)", *[f"{r['size_mb']} MB" for r in results]]]
    for kind in kinds:
        rows.append([kind, *[f"{C.ms(r['blocking_s'][kind]['median'])} / {C.ms(r['done_s'][kind]['median'])}"
                             for r in results]])
    rows.append(["sync / max(torch.save+fsync, md5)", *[f"{r['sync_vs_floor']:.2f}x" for r in results]])
    if "before_vs_floor" in results[0]:
        rows.append(["sync before / same floor", *[f"{r['before_vs_floor']:.2f}x" for r in results]])
    if "async_vs_pinned" in results[0]:
        rows.append(["async blocking / pinned copy", *[f"{r['async_vs_pinned']:.2f}x" for r in results]])
        rows.append(["async copies done / pinned copy", *[f"{r['async_copies_done_vs_pinned']:.2f}x" for r in results]])
    rows.append(["step slowdown during publish", *[f"{100 * r['step_slowdown']['slowdown']:+.1f}%" for r in results]])
    return C.table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,4000", help="state sizes in MB (default 100,1000,4000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case (default 3)")
    parser.add_argument("--width", type=int, help="Linear width (default 2048 on cuda, 1024 on cpu)")
    parser.add_argument("--compare-with", type=Path, help="another checkpoint_file.py whose write_temp to time too")
    parser.add_argument("--dcp", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.distributed.checkpoint.async_save (default: on cuda)")
    parser.add_argument("--quiet-steps", type=int, default=20, help="training steps timed before the publish")
    parser.add_argument("--busy-saves", type=int, default=4, help="saves requested back to back per policy")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp directory)")
    parser.add_argument("--out", type=Path, help="also copy the JSON result into this directory")
    args = parser.parse_args(argv)
    args.width = args.width or (2048 if args.device.startswith("cuda") else 1024)
    args.dcp = args.device.startswith("cuda") if args.dcp is None else args.dcp
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: --device cuda but torch sees no CUDA device; use --device cpu")
    sizes = [int(s) for s in args.sizes.replace(" ", ",").split(",") if s]
    before = load_write_temp(args.compare_with) if args.compare_with else None

    C.header(f"checkpoint file writes on {args.device}: blocking and done times")
    if args.device.startswith("cuda"):
        print(f"   {torch.cuda.get_device_name()}\n")
    work = Path(tempfile.mkdtemp(prefix="expckpt-bench-gpu-", dir=args.dir))
    results: list[dict[str, Any]] = []
    try:
        for size in sizes:
            results.append(measure_size(size, args, work, before))
            if args.out:  # kept as it goes: a run cut short still leaves what it measured
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "partial.json").write_text(json.dumps({"sizes": results}, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary_table(results))
    name = "gpu" if args.device.startswith("cuda") else "write-cpu"
    path = C.write_result(name, {"device": args.device, "sizes": results,
                                 "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
                          packages=("torch", "numpy"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, args.out / path.name)
        (args.out / f"{name}.txt").write_text(summary_table(results) + "\n" + json.dumps({"command": C.reproduce_command()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
