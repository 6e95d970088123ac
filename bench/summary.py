#!/usr/bin/env python
"""Print the headline figures of bench/results/*.json as a Markdown table (for bench/README.md).

    python bench/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s >= 0.01 else f"{s * 1000:.1f} ms"


def ok(good: bool) -> str:
    return "yes" if good else "**no**"


def main() -> int:
    rows: list[tuple[str, str, str, str]] = []
    machine = None
    b = load("blocking")
    if b:
        machine = machine or b["machine"]
        for r in b["sizes"]:
            size = f"{r['size_mb']} MB"
            durable = (f"; vs torch.save+fsync {ms(r['torch_save_fsync_s']['median'])}: {r['sync_ratio_to_durable_torch_save']:.2f}x"
                       if "torch_save_fsync_s" in r else "")
            rows.append((f"blocking, sync, {size}", f"{ms(r['sync_s']['median'])} vs torch.save {ms(r['torch_save_s']['median'])} = **{r['sync_ratio']:.2f}x**{durable}",
                         f"<= {r['sync_target']}x", ok(r["sync_ratio"] <= r["sync_target"])))
            rows.append((f"blocking, async, {size}", f"{ms(r['async_s']['median'])} vs torch.save {ms(r['torch_save_s']['median'])} = **{r['async_ratio']:.2f}x**",
                         f"<= {r['async_target']}x", ok(r["async_ratio"] <= r["async_target"])))
    d = load("dvc2_blocking")
    if d:
        if d.get("status") == "ok":
            rows.append((f"DVC 2.58.2 make_checkpoint, {d['size_mb']} MB", f"{ms(d['make_checkpoint_s']['median'])} (+ torch.save {ms(d['torch_save_s']['median'])}) = **{d['save_plus_make_checkpoint_ratio']:.1f}x** torch.save",
                         "reference", "-"))
        else:
            rows.append(("DVC 2.58.2 make_checkpoint", f"failed: {d.get('reason')}", "reference", "-"))
    o = load("overhead")
    if o:
        off = o["variants"]["off"]["wall_s"]["median"]
        for v, r in o["variants"].items():
            if v == "off":
                continue
            rows.append((f"whole run, {o['epochs']} epochs, {v}", f"{r['wall_s']['median']:.1f} s vs every: 0 {off:.1f} s = **{r['overhead_percent']:+.1f}%** (loop {r['loop_overhead_percent']:+.1f}%)",
                         f"<= {o['target_percent']:.0f}%", ok(r["overhead_percent"] <= o["target_percent"])))
        if "sync_in_run_checkpoint_percent_of_off_wall" in o:
            rows.append((f"whole run, {o['epochs']} epochs, sync, in-run checkpoint time",
                         f"{o['sync_in_run_checkpoint_s']['median']:.2f} s ({ms(o['sync_in_run_checkpoint_per_step_s']['median'])} per checkpoint) = **{o['sync_in_run_checkpoint_percent_of_off_wall']:.1f}%** of the every: 0 run",
                         f"<= {o['target_percent']:.0f}%", ok(o["sync_in_run_checkpoint_percent_of_off_wall"] <= o["target_percent"])))
    li = load("listing")
    if li:
        t = li["targets"]
        e = li["expckpt_show_s"]["n"]["median"]
        rows.append((f"expckpt show, {li['n']} refs", f"**{e:.2f} s** (in-process work {li['expckpt_show_in_process']['load_catalog_s'] + li['expckpt_show_in_process']['render_s']:.2f} s; `import torch` {li['import_s']['torch']:.1f} s)",
                     f"<= {t['expckpt_show_s']:.0f} s", ok(e <= t["expckpt_show_s"])))
        dv = li["dvc_exp_show_checkpoint_refs"]
        rows.append((f"dvc exp show / expckpt show, {li['dvc_n']} refs", f"{dv['first_s']:.1f} s / {li['expckpt_show_s']['dvc_n']['median']:.2f} s = **{li['speedup_vs_dvc_first_call']:.1f}x** (cached dvc: {li['speedup_vs_dvc_cached']:.1f}x)",
                     f">= {t['speedup']:.0f}x", ok(li["speedup_vs_dvc_first_call"] >= t["speedup"])))
        pl = li["dvc_exp_show_ordinary_refs"]
        rows.append((f"dvc exp show, {li['dvc_n']} checkpoint vs ordinary refs", f"uncached {dv['uncached_s']['median']:.1f} s / {pl['uncached_s']['median']:.1f} s = **{li['checkpoint_vs_ordinary_uncached']:.2f}x**; cached {dv['cached_s']['median']:.1f} s / {pl['cached_s']['median']:.1f} s = {li['checkpoint_vs_ordinary_cached']:.2f}x",
                     f"<= {t['refs_ratio']}x", ok(li["checkpoint_vs_ordinary_uncached"] <= t["refs_ratio"])))
    s = load("storage")
    if s:
        for r in s["setups"]:
            rows.append((f"storage, {r['setup'][3:]}, N={r['checkpoints']} K={r['keep_last']}",
                         f"checkpoint objects {r['after_gc']['checkpoint_object_bytes'] / 1e6:.2f} MB vs K x size {r['expected_bytes'] / 1e6:.2f} MB = **{r['deviation_percent']:+.1f}%**;"
                         f" model.pt st_nlink {r['after_gc']['model_pt_nlink']}" + (", same inode as its cache object" if r['after_gc']['model_pt_is_cache_object'] else ", a separate copy"),
                         f"within {s['target_percent']:.0f}%", ok(abs(r["deviation_percent"]) <= s["target_percent"])))
    rs = load("resume")
    if rs:
        rows.append(("resume start-up", f"{rs['resumed_to_first_step_s']['median']:.2f} s vs fresh {rs['fresh_to_first_step_s']['median']:.2f} s + torch.load {ms(rs['torch_load_s']['median'])} = **{rs['ratio']:.2f}x**",
                     f"<= {rs['target']}x", ok(rs["ratio"] <= rs["target"])))
    if not rows:
        print("no results yet: run bash bench/run_all.sh", file=sys.stderr)
        return 1
    print("| benchmark | measured | target | met |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for name in ("blocking", "dvc2_blocking", "overhead", "listing", "storage", "resume"):
        r = load(name)
        if r and "machine" in r:
            m = r["machine"]
            print(f"\n`{name}`: {m['date']}, {m['cores']} cores {m['cpu']}, load average at end {', '.join(f'{x:.1f}' for x in m['loadavg_at_end'])}, commit {m['project_commit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
