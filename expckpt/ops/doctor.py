"""``expckpt doctor``: prove that a user's own script resumes exactly, or say what it misses.

    verdict = doctor(project, stage=None, steps=2)   # three ``dvc exp run``s in throwaway copies
    print("\\n".join(verdict.lines()))                # "resume is exact: ..." or the likely cause

Run A trains straight to step 2K - 1; run B stops after step K - 1 as a preemption would and a
second run resumes it to 2K - 1 (``expckpt.ops.doctor_run``). The two ends, the checkpoints at the
stop and the metrics of every step are then compared (``expckpt.ops.doctor_compare``), and the
script's own lines are searched for what the difference points at (``expckpt.ops.doctor_hints``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from expckpt.serialize.dirout import is_dir_hash
from expckpt.serialize.dirstate import META_FILE
from expckpt.serialize.loading import load_state
from expckpt.ops.doctor_compare import Verdict, compare_metrics, diagnose, diff_payloads, read_metrics
from expckpt.ops.doctor_hints import Hint, script_hints, stage_scripts
from expckpt.ops.doctor_run import DoctorPlan, copy_workspace, doctor_plan, run_stage, throwaway
from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog
from expckpt.errors import ProjectError
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project

__all__ = ["doctor"]

Echo = Callable[[str], None]


def _read(path: Path) -> dict[str, Any]:
    """A checkpoint output, whichever kind: a file, expckpt's directory or DCP shards (DcpHandler)."""
    if path.is_dir() and not (path / META_FILE).exists():
        from expckpt.serialize.dcpread import is_dcp_dir, load_dcp_checkpoint  # noqa: PLC0415 - torch.distributed

        if is_dcp_dir(path):
            return load_dcp_checkpoint(path)
    return load_state(path)


def _load(plan: DoctorPlan, copy: Path, run: str, at_least: int, before: int | None = None) -> dict[str, Any]:
    """The checkpoint a run left in ``copy``: at step ``at_least`` or later (and before ``before``)."""
    path = copy / plan.output.path.rstrip("/")
    if not path.exists():
        raise ProjectError(
            f"run {run} of stage {plan.stage!r} left no {plan.output.path}: does the script save through"
            " expckpt (CheckpointLive, Checkpointer or an expckpt callback)?",
            path=path,
        )
    payload = _read(path)
    reached = int(payload.get("step", -1))
    if reached < at_least:
        raise ProjectError(
            f"run {run} of stage {plan.stage!r} ended after step {reached}, before step {at_least}: the"
            f" doctor needs {plan.last + 1} steps; use --steps {max(1, (reached + 1) // 2)} or train for"
            " more epochs",
            path=path,
        )
    if before is not None and reached >= before:
        raise ProjectError(
            f"run {run} of stage {plan.stage!r} went on to step {reached} instead of stopping after step"
            f" {at_least}: its loop does not stop when expckpt says so (`if checkpointer.save(...).stop:"
            f" break`, or live.steps()), or its steps come in larger strides than K (use --steps {reached + 1})",
            path=path,
        )
    return payload


def _checkpoint_at(plan: DoctorPlan, copy: Path, exp: str, step: int) -> dict[str, Any] | None:
    """Run ``exp``'s checkpoint ``<exp>@<step>`` in ``copy`` (None if it saved none there): its
    ``dvc.lock`` names the object in the copy's cache; a directory's files are checked out of it
    beside the copy, inside the throwaway directory."""
    store = GitStore.open(copy)
    try:
        refs = store.ref_targets("refs/exps/")
        wanted = [commit for ref, commit in refs.items() if ref.endswith(f"/{exp}@{step}")]
        lock = store.read_file(wanted[0], "dvc.lock") if len(wanted) == 1 else None
    finally:
        store.close()
    if lock is None:
        return None
    name = plan.output.path.rstrip("/")
    try:
        outs = (yaml.safe_load(lock) or {})["stages"][plan.stage]["outs"]
        (md5,) = [str(o["md5"]) for o in outs if str(o.get("path", "")).rstrip("/") == name]
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    cache = DvcCache.for_project(copy, copy / ".git")
    if not cache.has(md5):
        return None
    if not is_dir_hash(md5):
        return _read(cache.object_path(md5))
    where = copy.parent / f"{exp}@{step}"
    cache.checkout(md5, where)
    return _read(where)


def _ref_metrics(copy: Path) -> dict[str, dict[int, float]]:
    """metric -> step -> value from the checkpoint commits in ``copy`` (runs that log no dvclive
    plots, such as a plain ``Checkpointer`` loop: only the steps that were saved)."""
    store = GitStore.open(copy)
    found: dict[str, dict[int, float]] = {}
    try:
        for record in Catalog.load(store).records:
            for name, value in record.metrics.items():
                found.setdefault(name, {})[record.step] = float(value)
    finally:
        store.close()
    return found


def _hints(plan: DoctorPlan) -> list[Hint]:
    spec = plan.project.stage_specs().get(plan.stage) or {}
    root = plan.project.workspace
    wdir = root / str(spec.get("wdir", "."))
    return [h for path in stage_scripts(spec.get("cmd", ""), wdir) for h in script_hints(path, root)]


def doctor(
    project: Project, stage: str | None = None, steps: int = 2, *, echo: Echo = print, log: Echo | None = None
) -> Verdict:
    """Run the stage three times in throwaway copies and compare; ``echo`` gets progress lines,
    ``log`` (when given) every line the runs print. Bad input raises ``ExpCkptError``."""
    plan = doctor_plan(project, stage, steps)
    k, last = plan.steps, plan.last
    with throwaway() as tmp:
        echo(f"expckpt doctor: stage {plan.stage!r}, K={k}, in throwaway copies of the workspace under {tmp}")
        a = copy_workspace(plan, tmp / "a")
        echo(f"expckpt doctor: [1/3] run A: straight to step {last}")
        ran = run_stage(plan, a, "doctor-a", last, log)
        final_a = _load(plan, a, "A", last)
        end = int(final_a["step"])  # the first checkpoint at or after 2K - 1
        echo(f"expckpt doctor: [1/3] run A done in {ran.seconds:.1f} s")
        b = copy_workspace(plan, tmp / "b")
        echo(f"expckpt doctor: [2/3] run B: to step {plan.stop_first}, then stopped as by a preemption")
        ran = run_stage(plan, b, "doctor-b", plan.stop_first, log)
        stop = int(_load(plan, b, "B", plan.stop_first, before=end)["step"])
        echo(f"expckpt doctor: [2/3] run B done in {ran.seconds:.1f} s")
        echo(f"expckpt doctor: [3/3] run B resumed: to step {end}")
        ran = run_stage(plan, b, "doctor-b-resumed", end, log)
        final_b = _load(plan, b, "B resumed", end)
        echo(f"expckpt doctor: [3/3] run B resumed done in {ran.seconds:.1f} s")
        stop_a = _checkpoint_at(plan, a, "doctor-a", stop)
        stop_b = _checkpoint_at(plan, b, "doctor-b", stop)
        at_stop = diff_payloads(stop_a, stop_b)[1] if stop_a is not None and stop_b is not None else None
        metrics_a, metrics_b = read_metrics(a, plan.live_dir), read_metrics(b, plan.live_dir)
        if not metrics_a and not metrics_b:
            metrics_a, metrics_b = _ref_metrics(a), _ref_metrics(b)
    early = compare_metrics(metrics_a, metrics_b, range(stop + 1))[1]
    after = compare_metrics(metrics_a, metrics_b, range(stop + 1, end + 1))
    return diagnose(stop, end, diff_payloads(final_a, final_b), after, early, at_stop, final_a, _hints(plan))
