#!/usr/bin/env python
"""``expckpt report --html`` at scale: 1,000 checkpoints across 20 experiments.

Synthetic records (the catalog the page is built from; no Git needed for the page itself): 20
experiments of 50 checkpoints, every fourth one continued from a checkpoint of an earlier one,
two metrics (acc, loss) with a NaN now and then. Measured:

* building the tree and the page in Python, and the file's size (target: under 2 MB);
* in a real headless Chromium (chromedriver, networking cut off, as the tests drive it), the time
  from navigation start until every chart is drawn (target: under 2 s), best and median of
  --reps page loads, each in a fresh tab state (reload).

    python bench/html_report.py              # 20 x 50 checkpoints, 5 loads
    python bench/html_report.py --exps 5 --steps 20 --reps 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import header, table, write_result  # noqa: E402

from expckpt.store.catalog import Catalog  # noqa: E402
from expckpt.ops.htmlreport import page_data, render_page  # noqa: E402
from expckpt.ops.lineage import build_tree  # noqa: E402
from expckpt.policy.policy import keep_policy  # noqa: E402
from expckpt.store.records import CheckpointRecord, OutputHash  # noqa: E402
from expckpt.store.refs import CheckpointRef  # noqa: E402

BASE = "b" * 40


def records(exps: int, steps: int) -> list[CheckpointRecord]:
    out: list[CheckpointRecord] = []
    made = 0
    for e in range(exps):
        start, parent, resumed = 0, None, False
        if e % 4 == 3:  # continued from the middle of an earlier run
            source = out[(e - 3) * steps + steps // 2]
            start, parent, resumed = source.step + 1, source.commit, True
        for s in range(start, start + steps):
            made += 1
            acc = 1 - math.exp(-s / (10 + e)) if (s * 7 + e) % 97 else math.nan
            out.append(CheckpointRecord(
                ref=CheckpointRef(BASE, f"exp-{e:02d}", s), commit=f"{made:040x}", parent=parent,
                outs={"model.pt": OutputHash(f"{made:032x}", 12_000_000)},
                metrics={"acc": acc, "loss": 2 * math.exp(-s / (8 + e)) + 0.01 * e}, time=1.7e9 + made,
                resumed=resumed))
            parent, resumed = out[-1].commit, False
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    header(f"expckpt report --html: {args.exps * args.steps} checkpoints across {args.exps} experiments")

    recs = records(args.exps, args.steps)
    started = time.perf_counter()
    tree = build_tree(Catalog(recs), {BASE: "main"}, keep_policy(keep_last=5, keep_best=1, monitor="acc"),
                      monitor="acc", head=BASE)
    html = render_page(page_data(tree))
    build_s = time.perf_counter() - started
    size = len(html.encode())

    from browserkit import Browser, find_browser

    loads: list[float] = []
    if find_browser() is None:
        print("no chromium + chromedriver: browser timing skipped (apt-get install -y chromium chromium-driver)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "report.html"
            page.write_text(html)
            with Browser.start(Path(tmp) / "profile") as browser:
                for _ in range(args.reps):
                    browser.open(page.as_uri() + f"?{len(loads)}")
                    browser.wait_for("return document.body.dataset.ready === '1' || !!document.body.dataset.error",
                                     timeout=60)
                    state = browser.run("return [document.body.dataset.readyAt, document.body.dataset.error || null,"
                                        " document.querySelectorAll('li.ckpt').length,"
                                        " performance.getEntriesByType('resource').length]")
                    if state[1] or state[2] != len(recs) or state[3]:
                        raise SystemExit(f"page did not render as it should: {state}")
                    loads.append(int(state[0]) / 1000)
    rows = [["what", "value", "target"],
            ["tree + page in Python", f"{build_s:.3f} s", "-"],
            ["page size", f"{size / 1e6:.2f} MB", "< 2 MB"]]
    if loads:
        rows += [["browser: navigation to drawn, best", f"{min(loads):.3f} s", "< 2 s"],
                 ["browser: navigation to drawn, median", f"{statistics.median(loads):.3f} s", "< 2 s"]]
    print(table(rows))
    write_result("html_report", {"checkpoints": len(recs), "experiments": args.exps, "page_bytes": size,
                                 "python_s": build_s, "browser_ready_s": loads}, packages=("expckpt",))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
