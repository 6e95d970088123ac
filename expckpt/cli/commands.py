"""The ``expckpt`` commands: each parses nothing, calls the library and returns an exit code
(0 success, 1 a failure the user can act on, said in one line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from expckpt.store.catalog import Catalog, Chain
from expckpt.errors import ConfigError
from expckpt.ops.lineage import lineage_of
from expckpt.policy.policy import CheckpointInfo
from expckpt.store.recorded import check_logged, gc_policy, logged_metrics, settings_of
from expckpt.policy.report import analyse
from expckpt.ops.reset import reset_workspace
from expckpt.text import terminal_safe
from expckpt.ops.unsafe import ADVICE, unsafe_checkpoints
from expckpt.ops.verify import remedy, removed_meanwhile, verify_records

from expckpt.cli.context import Context, _chains, _say_orphans, _size, _tree

__all__ = [
    "cmd_doctor",
    "cmd_gc",
    "cmd_list",
    "cmd_pull",
    "cmd_report",
    "cmd_reset",
    "cmd_resume",
    "cmd_show",
    "cmd_stop",
    "cmd_verify",
]


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.showtree import render_tree, tree_as_json

    _say_orphans(ctx)
    tree = _tree(ctx, ctx.catalog(args.all_commits), args.git_remote)
    if args.json:
        print(json.dumps(tree_as_json(tree), indent=2))
    else:
        print(render_tree(tree, expand=args.all))
    return 0


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.store.branchpoints import branch_points

    _say_orphans(ctx)
    points = branch_points(ctx.catalog(True).records)
    rows = []
    for chain in _chains(ctx, args.exp, args.all_commits):
        policy = settings_of(chain, ctx.config).keep_policy()  # the run's own retention
        infos = [CheckpointInfo.of(r) for r in chain.records]
        for record, why in zip(chain.records, policy.reasons(infos)):
            branch = [f"branch point of {' '.join(points[record.commit])}"] if record.commit in points else []
            rows.append((record, sorted(why) + branch))
    unsafe = unsafe_checkpoints([r for r, _ in rows], ctx.cache)
    for record, _ in rows:
        if record.commit in unsafe:
            print(terminal_safe(f"expckpt: warning: {record.name}: {unsafe[record.commit]}: {ADVICE}"), file=sys.stderr)
    if args.names:  # for shells: dvc exp remove tut $(expckpt list tut --names)
        print("\n".join(r.name for r, _ in rows))
        return 0
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "step": r.step,
                        "commit": r.commit,
                        "metrics": dict(r.metrics),
                        "size": r.size,
                        "kept_by": why,
                        "unsafe": unsafe.get(r.commit),
                    }
                    for r, why in rows
                ],
                indent=2,
            )
        )
        return 0
    if not rows:
        print("No checkpoints yet.")
        return 0
    metrics = sorted({m for r, _ in rows for m in r.metrics})
    table = [["Checkpoint", "Step", "Commit", *metrics, "Size", "Kept by"]]
    for r, kept_by in rows:
        table.append(
            [
                r.name + (" UNSAFE" if r.commit in unsafe else ""),
                str(r.step),
                r.commit[:7],
                *[f"{r.metrics[m]:.5g}" if m in r.metrics else "-" for m in metrics],
                _size(r.size),
                ",".join(kept_by) or "- (outside policy)",
            ]
        )
    table = [[terminal_safe(cell) for cell in row] for row in table]  # metric names come from Git
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_reset(args: argparse.Namespace, ctx: Context) -> int:
    removed = reset_workspace(ctx.project, live_dir=args.live_dir)
    if not removed:
        print("Nothing to reset: the next `dvc exp run` starts from scratch.")
    for path in removed:
        print(terminal_safe(f"Removed {path.relative_to(ctx.project.workspace)}"))
    if removed:
        print("The next `dvc exp run` starts from step 0 with fresh weights; committed checkpoints are kept.")
    return 0


def cmd_stop(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.train.pause import request_stop

    path = request_stop(ctx.project.root, args.exp)
    who = f"the run of {args.exp}" if args.exp else "every run in this project"
    print(
        f"Asked {who} to pause at its next batch boundary ({path.relative_to(ctx.project.root)});"
        " it saves a checkpoint there and exits with status 75"
    )
    return 0


def cmd_resume(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.continuing import resume_experiment

    return resume_experiment(ctx.catalog(True), args.exp, ctx.project.workspace, run_args=args.run_args)


def cmd_gc(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.gc import GcScope, collect, plan_gc

    scope = GcScope(
        workspace=args.workspace, all_branches=args.all_branches, all_tags=args.all_tags, all_commits=args.all_commits
    )
    if args.keep_last is not None and args.keep_last < 1:
        raise ConfigError(f"--keep-last must be at least 1, got {args.keep_last}", key="keep_last")
    if args.keep_best is not None and args.keep_best < 1:
        raise ConfigError(f"--keep-best must be at least 1, got {args.keep_best}", key="keep_best")
    if args.keep_best and args.keep_last is None:
        raise ConfigError(
            f"--keep-best {args.keep_best} without --keep-last keeps every checkpoint anyway (no --keep-last"
            " means keep all, as keep_last: null does in params.yaml); add --keep-last N, e.g. --keep-last 1",
            key="keep_last",
        )
    if args.wait < 0:
        raise ConfigError(f"--wait must be a number of seconds >= 0, got {args.wait:g}", key="wait")
    plan = plan_gc(
        ctx.store,
        ctx.cache,
        ctx.project.workspace,
        scope,
        policy_for=lambda chain: gc_policy(
            chain, keep_last=args.keep_last, keep_best=args.keep_best, metric=args.metric, mode=args.mode
        ),
        include_branch_points=args.include_branch_points,
    )
    for name, exps in plan.branch_points.items():
        print(
            f"Keeping checkpoint {terminal_safe(name)}: a branch point of {terminal_safe(', '.join(exps))}"
            " (--include-branch-points removes it)"
        )
    cloud = None
    if args.cloud:
        from expckpt.ops.cloudgc import plan_cloud_gc

        cloud = plan_cloud_gc(
            ctx.store,
            ctx.cache,
            ctx.project.workspace,
            without={r.ref.ref for r in plan.remove},
            remote=args.remote,
            git_remote=args.git_remote,
        )
    elif args.remote or args.git_remote:
        raise ConfigError(
            "-r/--remote and --git-remote only apply with --cloud (delete from the DVC remote too)", key="cloud"
        )
    if not plan.remove and not plan.objects and not (cloud and cloud.objects):
        print("Nothing to collect.")
        return 0
    what = f"{len(plan.remove)} checkpoints and {_size(plan.bytes)} in {len(plan.objects)} cache objects"
    if cloud is not None:
        what += f", and {_size(cloud.bytes)} in {len(cloud.objects)} objects on DVC remote {cloud.remote!r}"
    if not args.dry_run and not args.force and not sys.stdin.isatty():
        raise ConfigError(
            f"refusing to remove {what} without confirmation: pass --force (or --dry-run to list them)", key="force"
        )
    if args.dry_run or not args.force:
        for record in plan.remove:
            print(f"Would remove checkpoint {record.name} ({record.commit[:7]}, {_size(record.size)})")
        print(f"Would free {_size(plan.bytes)} in {len(plan.objects)} cache objects")
        if cloud is not None:
            kept_by = f", keeping what refs on Git remote {cloud.git_remote!r} need" if cloud.git_remote else ""
            print(
                f"Would delete {_size(cloud.bytes)} in {len(cloud.objects)} objects from DVC remote {cloud.remote!r}{kept_by}"
            )
    if args.dry_run:
        return 0
    if not args.force and input(f"Remove {what}? [y/N] ").strip().lower() not in ("y", "yes"):
        print("Aborted; nothing removed.")
        return 1

    def waiting(holders: list) -> None:
        who = "; ".join(h.describe() for h in holders) or "another process"
        print(f"expckpt: waiting up to {args.wait:g} s for the gc lock, held by {who}", file=sys.stderr)

    result = collect(plan, ctx.store, ctx.cache, ctx.project.workspace, timeout=args.wait, on_wait=waiting)
    for record in result.removed:
        print(f"Removed checkpoint {record.name} ({record.commit[:7]})")
    for record, now in result.moved:
        print(f"Kept checkpoint {record.name}: it points at {now[:7]} now, not {record.commit[:7]} as planned")
    gone = f" ({len(result.gone)} were already gone)" if result.gone else ""
    print(
        f"Removed {len(result.removed)} checkpoints{gone}, freed {_size(result.bytes)} in {len(result.freed)} cache objects."
    )
    if cloud is not None:
        from expckpt.ops.cloudgc import execute_cloud_gc

        deleted = execute_cloud_gc(cloud, ctx.store, ctx.project.workspace)
        print(f"Deleted {_size(sum(deleted.values()))} in {len(deleted)} objects from DVC remote {cloud.remote!r}.")
    return 0


def cmd_verify(args: argparse.Namespace, ctx: Context) -> int:
    if args.exp:
        records = [r for c in _chains(ctx, args.exp, True) for r in c.records]
    else:
        records = ctx.catalog(args.all).records
    problems = verify_records(records, ctx.store, ctx.cache)
    for problem in problems:
        print(f"expckpt: {problem}", file=sys.stderr)
    advice = remedy(problems)
    if advice:
        print(f"expckpt: {advice}", file=sys.stderr)
    bad = {p.record.commit for p in problems}
    gone = removed_meanwhile(records, ctx.store)  # by retention or gc of a run that trains now
    total = len(records) - len(gone)
    print(
        f"{total - len(bad)} of {total} checkpoints verified"
        + (f", {len(bad)} broken" if bad else "")
        + (f" ({len(gone)} removed by retention or gc while verify ran)" if gone else "")
    )
    return 1 if problems else 0


def cmd_pull(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.quarantine import pull_checkpoints

    result = pull_checkpoints(ctx.store, ctx.cache, ctx.project.root, args.git_remote, args.exp)
    for record in result.accepted:
        print(terminal_safe(f"Pulled checkpoint {record.name} ({record.commit[:7]})"))
    for name, why in result.refused:
        print(terminal_safe(f"expckpt: refused {name}: {why}; it stays invisible to DVC"), file=sys.stderr)
    if result.accepted:
        newest = max(result.accepted, key=lambda r: r.step).name
        print(
            terminal_safe(
                f"Checked and pulled {len(result.accepted)} checkpoints; fetch their files with"
                f" `dvc exp pull {args.git_remote} {newest}` (or `dvc pull` after `dvc exp apply`)"
            )
        )
    return 1 if result.refused else 0


def _history(ctx: Context, chain: Chain) -> list[tuple[int, dict[str, float]]]:
    from expckpt.store.history import metric_history

    return metric_history(ctx.store, chain.newest.commit) or [(r.step, dict(r.metrics)) for r in chain.records]


def _report_html(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.htmlreport import write_report

    catalog = ctx.catalog(args.all_commits or bool(args.exp))
    if args.exp:
        catalog = lineage_of(catalog, args.exp)
    tree = _tree(ctx, catalog, args.git_remote, args.metric, args.mode)
    path = Path(args.html)
    size = write_report(path, tree, ctx.store, metrics=[args.metric] if args.metric else None)
    print(terminal_safe(f"wrote {path} ({_size(size)}, {len(catalog.records)} checkpoints); open it in a browser"))
    return 0


def cmd_report(args: argparse.Namespace, ctx: Context) -> int:
    if args.html:
        return _report_html(args, ctx)
    chains = _chains(ctx, args.exp, args.all_commits or bool(args.exp))
    if not chains:
        print("No checkpoints yet.")
        return 0
    chain = chains[0]
    cfg = settings_of(chain, ctx.config)  # the run's own monitor and mode, not today's params.yaml
    history = _history(ctx, chain)
    if args.metric:
        check_logged(args.metric, logged_metrics(chain, history), chain.exp, flag="--metric")
    report = analyse(
        history,
        monitor=args.metric or cfg.monitor,
        mode=args.mode or cfg.mode,
        divergence_metric=cfg.divergence_metric,
        divergence_steps=cfg.divergence_steps,
        patience=cfg.patience,
    )
    if args.json:
        fields = {k: v for k, v in vars(report).items() if k not in ("nonfinite", "nonfinite_kind")}
        nonfinite = [
            {"step": step, "metric": metric, "kind": report.nonfinite_kind.get((step, metric), "NaN")}
            for step, metric in report.nonfinite
        ]  # tuple keys are not JSON
        print(json.dumps({"experiment": chain.exp, **fields, "nonfinite": nonfinite}, indent=2, default=str))
        return 0
    # Metric names in the report come from file names in a checkpoint commit's tree.
    print(terminal_safe(f"Experiment {chain.exp} (steps {chain.records[0].step}-{chain.newest.step}):"))
    for line in report.lines():
        if not line.startswith("apply:"):
            print(f"  {terminal_safe(line)}")
    if report.recommended_step is not None:
        target = Catalog(chain.records).last_at_or_before(chain.exp, report.recommended_step)
        if target is not None:
            print(f"  checkpoint to apply: dvc exp apply {terminal_safe(target.name)}")
    return 0


def cmd_doctor(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.doctor import doctor

    def progress(line: str) -> None:
        print(terminal_safe(line), file=sys.stderr, flush=True)

    verdict = doctor(ctx.project, args.stage, args.steps, echo=progress, log=progress if args.verbose else None)
    if args.json:
        print(json.dumps(verdict.as_json(), indent=2))
    else:
        print("\n".join(terminal_safe(line) for line in verdict.lines()))
    return 0 if verdict.exact else 1
