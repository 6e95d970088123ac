#!/usr/bin/env python
"""Blocking time per checkpoint: the real ``Checkpointer`` path vs plain ``torch.save``.

For each state size (a model of 1024x1024 Linear layers plus its Adam state, totalling about
that many MB) this builds a real Git + DVC repository holding the example project, sets the
variables ``dvc exp run`` sets for a stage (DVC_ROOT, DVC_EXP_NAME, DVC_EXP_BASELINE_REV,
DVC_STAGE), and times ``checkpointer.step_completed(state, step, metrics)`` -- what
``CheckpointLive.next_step()`` calls after dvclive has logged -- from the call to its return:

* sync  (``checkpoint.async: false``): serialise, hash, write+fsync, cache link, commit, ref;
* async (``checkpoint.async: true``): the copy into reusable buffers; the rest runs in the
  background, and is waited for (untimed, reported as "background") before the next step, as
  if a training step longer than the background write had gone by;

against ``torch.save({"model": ..., "optimizer": ...}, path)`` of the same tensors, in the same
run, alternating (the order rotates every repetition). A second, durable baseline --
``torch.save`` into an open file, then flush + ``os.fsync`` -- shows how much of the sync ratio
is the price of durability (plain torch.save leaves its bytes in the page cache). ``sync`` is written before each timed
operation so no one pays for another's dirty pages. Medians exclude the first checkpoint of each
mode (it also snapshots the workspace and hashes the dependencies once per run; reported apart).

The sync time is broken down by timing the real functions on the path (wrapped in place, not
re-implemented): torch.save to memory, the write+fsync of the temp file, the MD5 (in a thread,
overlapping the write) and the wait for it, the cache hardlink, the rename, dvc.lock, the Git
tree/commit/ref (dulwich), the session note, retention.

    python bench/blocking.py                 # 12, 100 and 500 MB
    python bench/blocking.py --sizes 12      # quick
    python bench/blocking.py --threads 1     # torch.set_num_threads(1): see README (async copy)
"""

from __future__ import annotations

import argparse
import builtins
import gc
import hashlib
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import expckpt.checkpoint_file as cf  # noqa: E402
import expckpt.checkpointer as ckpt_mod  # noqa: E402
import expckpt.committer as committer_mod  # noqa: E402
from expckpt import Checkpointer, TrainingState  # noqa: E402
from expckpt.cache import DvcCache  # noqa: E402
from expckpt.atomic import WrittenFile  # noqa: E402
from expckpt.committer import Committer  # noqa: E402
from expckpt.gitstore import GitStore  # noqa: E402
from expckpt.lockfile import LockBuilder  # noqa: E402
from expckpt.session import SessionNote  # noqa: E402
from expckpt.writer import AsyncWriter  # noqa: E402

TARGET_SYNC = 1.5
TARGET_ASYNC = 0.25
WIDTH = 1024
DEFAULT_REPS = {12: 9, 100: 5, 500: 5}


# -- instrumentation of the real path -------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.active = False
        self.current: dict[str, float] = defaultdict(float)

    def add(self, key: str, seconds: float) -> None:
        if self.active:
            self.current[key] += seconds

    def take(self) -> dict[str, float]:
        out = dict(self.current)
        self.current.clear()
        return out


REC = Recorder()
_restore: list[tuple[Any, str, Any]] = []


def _wrap(owner: Any, name: str, key: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            REC.add(key, time.perf_counter() - start)

    _restore.append((owner, name, original))
    setattr(owner, name, wrapper)


class _TimedDigest:
    def __init__(self, digest: Any) -> None:
        self._digest = digest

    def update(self, data: Any) -> None:
        start = time.perf_counter()
        self._digest.update(data)
        REC.add("md5", time.perf_counter() - start)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class _HashlibProxy:
    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)

    def md5(self, *args: Any, **kwargs: Any) -> _TimedDigest:
        return _TimedDigest(hashlib.md5(*args, **kwargs))


class _TorchProxy:
    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def save(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return torch.save(*args, **kwargs)
        finally:
            REC.add("serialize", time.perf_counter() - start)


class _TimedFile:
    def __init__(self, handle: Any, start: float) -> None:
        self._handle, self._start = handle, start

    def __enter__(self) -> Any:
        return self._handle.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._handle.__exit__(*exc)
        finally:
            REC.add("write_fsync", time.perf_counter() - self._start)


def _timed_open(*args: Any, **kwargs: Any) -> _TimedFile:
    start = time.perf_counter()
    return _TimedFile(builtins.open(*args, **kwargs), start)


def instrument() -> None:
    cf.torch = _TorchProxy()  # type: ignore[assignment]
    cf.hashlib = _HashlibProxy()  # type: ignore[assignment]
    cf.open = _timed_open  # type: ignore[attr-defined]  # shadows the builtin inside write_temp
    _wrap(ckpt_mod, "write_temp", "write_temp")
    _wrap(TrainingState, "capture", "capture")
    _wrap(Committer, "read_live_files", "read_live")
    _wrap(Committer, "publish", "publish_total")
    _wrap(DvcCache, "add", "cache_link")
    _wrap(WrittenFile, "publish", "rename")
    _wrap(LockBuilder, "render", "dvc_lock")
    _wrap(GitStore, "tree_with_files", "git_tree")
    _wrap(GitStore, "write_commit", "git_commit")
    for name in ("get_ref", "set_ref"):
        _wrap(GitStore, name, "git_ref")
    _wrap(SessionNote, "write", "note")
    if hasattr(committer_mod, "atomic_write_bytes"):  # the workspace dvc.lock, where the committer writes one
        _wrap(committer_mod, "atomic_write_bytes", "ws_lock")
    _wrap(Checkpointer, "_apply_retention", "retention")
    _wrap(AsyncWriter, "submit", "submit")


def uninstrument() -> None:
    cf.torch = torch  # type: ignore[assignment]
    cf.hashlib = hashlib  # type: ignore[assignment]
    del cf.open  # type: ignore[attr-defined]
    while _restore:
        owner, name, original = _restore.pop()
        setattr(owner, name, original)


BREAKDOWN_ROWS = [
    ("capture", "capture state (state_dict references)", True),
    ("read_live", "read dvclive files", True),
    ("serialize", "torch.save to memory (BytesIO)", True),
    ("write_fsync", "write + fsync temp file", True),
    ("md5_wait", "wait for md5 after the write", True),
    ("md5", "  (md5 itself, in a thread, overlaps the write)", False),
    ("cache_link", "cache link (hardlink, chmod, fsync dir, log)", True),
    ("rename", "rename onto model.pt + fsync dir", True),
    ("dvc_lock", "render dvc.lock", True),
    ("git_tree", "git blobs + tree (dulwich)", True),
    ("git_commit", "git commit object (dulwich)", True),
    ("git_ref", "git ref read + create (dulwich)", True),
    ("ws_lock", "write workspace dvc.lock", True),
    ("note", "session note", True),
    ("retention", "retention (delete old refs)", True),
    ("other", "other (policy, gc lock, metadata, ...)", True),
]


def derive(sample: dict[str, float], total: float) -> dict[str, float]:
    out = dict(sample)
    out["md5_wait"] = max(0.0, sample.get("write_temp", 0) - sample.get("serialize", 0) - sample.get("write_fsync", 0))
    additive = sum(out.get(key, 0.0) for key, _, add in BREAKDOWN_ROWS if add and key != "other")
    out["other"] = max(0.0, total - additive)
    out["total"] = total
    return out


# -- the state ------------------------------------------------------------------------------------
def build_state(megabytes: int) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    per_layer = (WIDTH * WIDTH + WIDTH) * 4 * 3  # weights + Adam exp_avg + exp_avg_sq
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, layers


def train_a_little(model: nn.Module) -> None:
    """Change the weights between checkpoints, as a training step would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-4)


def checkpointer_for(
    repo: Path, baseline: str, exp: str, async_save: bool, config: dict[str, Any] | None = None
) -> Checkpointer:
    env = {
        **os.environ,
        "DVC_ROOT": str(repo),
        "DVC_EXP_NAME": exp,
        "DVC_EXP_BASELINE_REV": baseline,
        "DVC_STAGE": "train",
    }
    config = {"every": 1, "keep_last": 10, "keep_best": 1, "monitor": "acc", "mode": "max", "async": async_save, **(config or {})}
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        ck = Checkpointer.from_env("model.pt", config, env=env)
    finally:
        os.chdir(cwd)
    ck.echo = lambda line: None
    if ck.committer is None:
        raise SystemExit("bench: the Checkpointer did not see a `dvc exp run` context")
    return ck


def write_live_files(repo: Path, step: int, metrics: dict[str, float]) -> None:
    live = repo / "dvclive"
    (live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    import json

    (live / "metrics.json").write_text(json.dumps({"step": step, **metrics}))
    for name, value in metrics.items():
        path = live / "plots" / "metrics" / f"{name}.tsv"
        if not path.exists():
            path.write_text(f"step\t{name}\n")
        with path.open("a") as handle:
            handle.write(f"{step}\t{value}\n")


def clean_cache(repo: Path) -> None:
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    for leftover in ("model.pt",):
        (repo / leftover).unlink(missing_ok=True)


def measure_size(megabytes: int, reps: int, repos: dict[str, Path], baseline_dir: Path, baselines: dict[str, str]) -> dict[str, Any]:
    model, optimizer, layers = build_state(megabytes)
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    tensor_bytes += sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    print(f"-- {megabytes} MB state: {layers} x Linear({WIDTH},{WIDTH}) + Adam = {tensor_bytes / 1e6:.1f} MB of tensors; {reps} repetitions")
    states = {mode: TrainingState(model=model, optimizer=optimizer) for mode in ("sync", "async")}
    ckpts = {
        mode: checkpointer_for(repos[mode], baselines[mode], f"{mode}-{megabytes}mb", mode == "async")
        for mode in ("sync", "async")
    }
    base_path = baseline_dir / "baseline.pt"
    times: dict[str, list[float]] = {"torch.save": [], "torch.save+fsync": [], "sync": [], "async": [], "async_background": []}
    breakdowns: list[dict[str, float]] = []
    async_parts: list[dict[str, float]] = []
    first: dict[str, float] = {}
    file_size = 0

    def do(kind: str, step: int, timed: bool) -> None:
        nonlocal file_size
        train_a_little(model)
        metrics = {"acc": 0.5 + 0.001 * step, "loss": 1.0 / (step + 1)}
        if kind in repos:
            write_live_files(repos[kind], step, metrics)
        base_path.unlink(missing_ok=True)
        gc.collect()
        os.sync()
        if kind == "torch.save":
            start = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, base_path)
            elapsed = time.perf_counter() - start
        elif kind == "torch.save+fsync":
            start = time.perf_counter()
            with open(base_path, "wb") as handle:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            elapsed = time.perf_counter() - start
        elif kind == "sync":
            REC.active = timed
            start = time.perf_counter()
            ckpts["sync"].step_completed(states["sync"], step, metrics)
            elapsed = time.perf_counter() - start
            REC.active = False
            sample = REC.take()
            if timed:
                breakdowns.append(derive(sample, elapsed))
            file_size = (repos["sync"] / "model.pt").stat().st_size
        else:
            REC.active = timed
            start = time.perf_counter()
            ckpts["async"].step_completed(states["async"], step, metrics)
            elapsed = time.perf_counter() - start
            sample = REC.take()  # only the main thread's parts; the writer thread's are dropped below
            ckpts["async"].drain()
            REC.active = False
            REC.take()
            if timed:
                times["async_background"].append(time.perf_counter() - start)
                submit = sample.get("submit", 0.0)
                async_parts.append({
                    "submit": submit,
                    "capture_and_live": sample.get("capture", 0.0) + sample.get("read_live", 0.0),
                    "rest": max(0.0, elapsed - submit - sample.get("capture", 0.0) - sample.get("read_live", 0.0)),
                })
        if timed:
            times[kind].append(elapsed)
        else:
            first[kind] = elapsed

    order = ["torch.save", "sync", "async", "torch.save+fsync"]
    for kind in order:
        do(kind, 0, timed=False)
    for rep in range(1, reps + 1):
        rotated = order[rep % len(order) :] + order[: rep % len(order)]
        for kind in rotated:
            do(kind, rep, timed=True)
    for ck in ckpts.values():
        ck.close()

    med = {k: C.summary(v) for k, v in times.items()}
    base = med["torch.save"]["median"]
    parts = {key: C.summary(b.get(key, 0.0) for b in breakdowns)["median"] for key, _, _ in BREAKDOWN_ROWS}
    parts["total"] = med["sync"]["median"]
    result = {
        "size_mb": megabytes,
        "tensor_bytes": tensor_bytes,
        "checkpoint_file_bytes": file_size,
        "layers": layers,
        "repetitions": reps,
        "torch_threads": torch.get_num_threads(),
        "torch_save_s": med["torch.save"],
        "torch_save_fsync_s": med["torch.save+fsync"],
        "sync_ratio_to_durable_torch_save": med["sync"]["median"] / med["torch.save+fsync"]["median"],
        "sync_s": med["sync"],
        "async_s": med["async"],
        "async_submit_to_published_s": med["async_background"],
        "first_checkpoint_s": first,
        "sync_ratio": med["sync"]["median"] / base,
        "async_ratio": med["async"]["median"] / base,
        "sync_target": TARGET_SYNC,
        "async_target": TARGET_ASYNC,
        "sync_breakdown_median_s": parts,
        "async_breakdown_median_s": {k: C.summary(p[k] for p in async_parts)["median"] for k in ("submit", "capture_and_live", "rest")},
        "sync_breakdown_samples": breakdowns,
    }
    for mode in ("sync", "async"):
        clean_cache(repos[mode])
    base_path.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,100,500", help="comma-separated state sizes in MB (default 12,100,500)")
    parser.add_argument("--reps", type=int, help="timed repetitions per size (default 9 / 5 / 5)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's own choice)")
    parser.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.replace(" ", ",").split(",") if s]

    C.header("blocking time per checkpoint (expckpt Checkpointer vs torch.save)")
    root = C.workdir("blocking", keep=args.keep)
    env = C.isolated_env(root / "home")
    C.apply_env(env)
    repos = {mode: C.make_project(root / mode, env) for mode in ("sync", "async")}
    baselines = {mode: C.head(repo, env) for mode, repo in repos.items()}
    baseline_dir = root / "plain"
    baseline_dir.mkdir()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"   torch intra-op threads: {torch.get_num_threads()}\n")

    instrument()
    results = []
    try:
        for size in sizes:
            results.append(measure_size(size, args.reps or DEFAULT_REPS.get(size, 5), repos, baseline_dir, baselines))
            r = results[-1]
            print(f"   torch.save {C.ms(r['torch_save_s']['median'])}, sync {C.ms(r['sync_s']['median'])} "
                  f"({r['sync_ratio']:.2f}x), async {C.ms(r['async_s']['median'])} ({r['async_ratio']:.2f}x)\n")
    finally:
        uninstrument()

    rows = [["state", "file", "torch.save", "sync", "sync/torch.save", f"target <= {TARGET_SYNC}x",
             "async", "async/torch.save", f"target <= {TARGET_ASYNC}x", "async bg publish", "1st sync ckpt"]]
    for r in results:
        rows.append([
            f"{r['size_mb']} MB", f"{r['checkpoint_file_bytes'] / 1e6:.1f} MB",
            C.ms(r["torch_save_s"]["median"]), C.ms(r["sync_s"]["median"]), f"{r['sync_ratio']:.2f}x",
            C.verdict(r["sync_ratio"], TARGET_SYNC),
            C.ms(r["async_s"]["median"]), f"{r['async_ratio']:.2f}x", C.verdict(r["async_ratio"], TARGET_ASYNC),
            C.ms(r["async_submit_to_published_s"]["median"]), C.ms(r["first_checkpoint_s"].get("sync")),
            C.ms(r["torch_save_fsync_s"]["median"]), f"{r['sync_ratio_to_durable_torch_save']:.2f}x",
        ])
    print(C.table(rows))
    print("\nwhere the sync time goes (median per checkpoint):")
    rows = [["part", *[f"{r['size_mb']} MB" for r in results]]]
    for key, label, _ in BREAKDOWN_ROWS:
        rows.append([label, *[f"{C.ms(r['sync_breakdown_median_s'][key])} ({100 * r['sync_breakdown_median_s'][key] / r['sync_s']['median']:.0f}%)" for r in results]])
    rows.append(["total (median of totals)", *[C.ms(r["sync_s"]["median"]) for r in results]])
    rows.append(["torch.save baseline", *[C.ms(r["torch_save_s"]["median"]) for r in results]])
    rows.append(["torch.save + fsync (durable baseline)", *[C.ms(r["torch_save_fsync_s"]["median"]) for r in results]])
    print(C.table(rows))
    print("(parts are medians of each part, so they need not add up exactly to the median total)")
    print("\nwhere the async blocking time goes (median per checkpoint):")
    rows = [["part", *[f"{r['size_mb']} MB" for r in results]]]
    for key, label in (("submit", "AsyncWriter.submit (copy into buffers, enqueue)"),
                       ("capture_and_live", "capture state + read dvclive files"),
                       ("rest", "rest (policy, watch; GIL shared with the writer thread)")):
        rows.append([label, *[C.ms(r["async_breakdown_median_s"][key]) for r in results]])
    rows.append(["total", *[C.ms(r["async_s"]["median"]) for r in results]])
    print(C.table(rows))
    C.write_result("blocking" if not args.threads else f"blocking-threads{args.threads}", {"sizes": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
