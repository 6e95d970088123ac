"""``expckpt``: the command line, thin over the library.

Each command parses its arguments, calls the library and returns an exit code: 0 success, 1 a
failure the user can act on (one line on stderr), 2 bad usage. ``-v`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog, Chain
from expckpt.policy.config import CheckpointConfig
from expckpt.errors import ConfigError, ExpCkptError
from expckpt.store.gitstore import GitStore
from expckpt.ops.lineage import Tree, build_tree, lineage_of
from expckpt.policy.policy import CheckpointInfo
from expckpt.store.project import Project
from expckpt.store.recorded import check_logged, gc_policy, logged_metrics, settings_of
from expckpt.policy.report import analyse
from expckpt.ops.reset import reset_workspace
from expckpt.text import terminal_safe
from expckpt.ops.unsafe import ADVICE, unsafe_checkpoints
from expckpt.ops.verify import remedy, removed_meanwhile, verify_records

__all__ = ["main"]


class Context:
    """The project the command runs in, opened lazily."""

    def __init__(self) -> None:
        self.project = Project.discover(env={})
        self.store = GitStore.open(self.project.root)
        self.cache = DvcCache.for_project(self.project.root, self.store.git_dir)

    def head(self) -> str:
        return self.store.head()

    def labels(self) -> dict[str, str]:
        """commit -> the first branch (else tag) name pointing at it."""
        labels: dict[str, str] = {}
        for ref, commit in self.store.branch_and_tag_tips().items():
            labels.setdefault(commit, ref.removeprefix("refs/heads/").removeprefix("refs/tags/"))
        return labels

    def config(self) -> CheckpointConfig:
        path = self.project.workspace / "params.yaml"
        try:
            params = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            params = {}
        return CheckpointConfig.from_params(params.get("checkpoint"))

    def catalog(self, all_baselines: bool) -> Catalog:
        return Catalog.load(self.store, None if all_baselines else [self.head()])


def _chains(ctx: Context, exp: str | None, all_baselines: bool) -> list[Chain]:
    catalog = ctx.catalog(all_baselines or exp is not None)
    chains = catalog.chains()
    if exp:
        chains = [c for c in chains if c.exp == exp]
        if not chains:
            raise catalog.unknown(exp)
    return chains


def _tree(
    ctx: Context, catalog: Catalog, git_remote: str | None, monitor: str | None = None, mode: str | None = None
) -> Tree:
    cfg = ctx.config()
    pushed = set()
    if git_remote:  # one `git ls-remote`: the checkpoints whose commit the remote's refs/exps name
        pushed = {sha for ref, sha in ctx.store.remote_refs(git_remote).items() if ref.startswith("refs/exps/")}
    return build_tree(
        catalog,
        ctx.labels(),
        cfg.keep_policy(),
        monitor=monitor or cfg.monitor,
        mode=mode or cfg.mode,
        pushed=pushed,
        head=ctx.head(),
        unsafe=unsafe_checkpoints(catalog.records, ctx.cache),
    )


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    from expckpt.ops.showtree import render_tree, tree_as_json

    _say_orphans(ctx)
    tree = _tree(ctx, ctx.catalog(args.all_commits), args.git_remote)
    if args.json:
        print(json.dumps(tree_as_json(tree), indent=2))
    else:
        print(render_tree(tree, expand=args.all))
    return 0


def _say_orphans(ctx: Context) -> None:
    from expckpt.train.orphan import orphan_lines

    for line in orphan_lines(ctx.project.workspace):
        print(line, file=sys.stderr)


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


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def cmd_reset(args: argparse.Namespace, ctx: Context) -> int:
    removed = reset_workspace(ctx.project, live_dir=args.live_dir)
    if not removed:
        print("Nothing to reset: the next `dvc exp run` starts from scratch.")
    for path in removed:
        print(f"Removed {path.relative_to(ctx.project.workspace)}")
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expckpt", description="Checkpoint experiments on DVC 3.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace, Context], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("show", cmd_show, "checkpoint chains per experiment, newest first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-A", "--all-commits", action="store_true", help="experiments of every baseline, not only HEAD")
    p.add_argument("--all", action="store_true", help="list every checkpoint (long runs fold their middle otherwise)")
    p.add_argument("--git-remote", metavar="NAME", help="mark the checkpoints this Git remote has (one ls-remote)")

    p = add("list", cmd_list, "checkpoints with step, metrics, size and the rule that keeps each")
    p.add_argument("exp", nargs="?", help="only this experiment")
    p.add_argument("--json", action="store_true")
    p.add_argument("--names", action="store_true", help="only the checkpoint names, one per line")
    p.add_argument("-A", "--all-commits", action="store_true", help="experiments of every baseline")

    p = add("reset", cmd_reset, "make the next `dvc exp run` start from scratch (committed checkpoints stay)")
    p.add_argument("--live-dir", default="dvclive", help="dvclive directory (default: dvclive)")

    p = add("stop", cmd_stop, "ask a running experiment to pause at its next batch boundary (saved, exit 75)")
    p.add_argument("exp", nargs="?", help="the experiment (default: every run of this project)")

    p = add("resume", cmd_resume, "continue an experiment from its newest checkpoint (dvc exp apply + dvc exp run)")
    p.add_argument("exp", help="the experiment, e.g. a paused one")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="more arguments for dvc exp run (after --)")

    p = add("gc", cmd_gc, "remove checkpoints out of scope or policy and free their cache")
    p.add_argument("-w", "--workspace", action="store_true", help="keep checkpoints of experiments based on HEAD")
    p.add_argument("-a", "--all-branches", action="store_true", help="also keep those based on branch tips")
    p.add_argument("-T", "--all-tags", action="store_true", help="also keep those based on tags")
    p.add_argument("-A", "--all-commits", action="store_true", help="keep those based on any commit")
    p.add_argument(
        "--keep-last", type=int, metavar="N", help="in each experiment keep only the N newest (default: all)"
    )
    p.add_argument("--keep-best", type=int, metavar="K", help="... plus the K best by --metric (needs --keep-last)")
    p.add_argument("--metric", help="metric for --keep-best (default: the one each experiment recorded)")
    p.add_argument("--mode", choices=("min", "max"), help="default: the one each experiment recorded, else max")
    p.add_argument("--dry-run", action="store_true", help="list what would go and the bytes, remove nothing")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "-c",
        "--cloud",
        action="store_true",
        help="also delete, from the DVC remote, objects only removed checkpoints used (try --dry-run first)",
    )
    p.add_argument("-r", "--remote", metavar="NAME", help="with --cloud: the DVC remote (default: the default remote)")
    p.add_argument(
        "--git-remote",
        metavar="NAME",
        help="with --cloud: the Git remote whose refs also keep objects (default: exp.git_remote or origin)",
    )
    p.add_argument(
        "--include-branch-points",
        action="store_true",
        help="also remove checkpoints other experiments were continued or started from",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for running checkpoint writers to release the gc lock (default: 60)",
    )

    p = add("verify", cmd_verify, "rehash checkpoint objects; exit 1 if any is missing or corrupt")
    p.add_argument("exp", nargs="?", help="only this experiment")
    p.add_argument("--all", action="store_true", help="checkpoints of every baseline, not only HEAD")

    p = add("pull", cmd_pull, "fetch checkpoints from a Git remote you do not control, checked before DVC sees them")
    p.add_argument("git_remote", help="Git remote (e.g. origin)")
    p.add_argument("exp", help="experiment name, or one checkpoint <exp>@<step>")

    p = add("report", cmd_report, "best step, plateau, NaN/inf and divergence of an experiment")
    p.add_argument("exp", nargs="?", help="experiment (default: the most recent)")
    p.add_argument("--metric", help="metric to rank by (default: the monitor the experiment recorded)")
    p.add_argument("--mode", choices=("min", "max"))
    p.add_argument("--json", action="store_true")
    p.add_argument("-A", "--all-commits", action="store_true")
    p.add_argument(
        "--html",
        nargs="?",
        const="expckpt-report.html",
        metavar="FILE",
        help="write the checkpoint tree and curves as one offline page (default: expckpt-report.html)",
    )
    p.add_argument("--git-remote", metavar="NAME", help="with --html: mark the checkpoints this Git remote has")

    p = add("doctor", cmd_doctor, "check that the stage resumes exactly (runs it in throwaway copies); exit 1 if not")
    p.add_argument(
        "--steps", type=int, default=2, metavar="K", help="stop run B after K steps and compare at 2K (default: 2)"
    )
    p.add_argument("--stage", help="the stage to check (default: the one with a checkpoint output)")
    p.add_argument("--json", action="store_true", help="the verdict as JSON, for CI")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("show", "list", "verify", "report") or (args.command == "gc" and args.dry_run):
            from expckpt.ops.readwait import bounded

            ctx = Context()  # a stopped checkpoint writer must not freeze a read-only command (readwait)
            with bounded(ctx.store.git_dir, f"expckpt {args.command}"):
                return args.func(args, ctx)
        return args.func(args, Context())
    except ExpCkptError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"expckpt: error: {terminal_safe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("expckpt: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_repositories()


def _close_repositories() -> None:
    """Close Git's and DVC's pack files now, while Python can still run their finalisers: at
    interpreter exit dulwich's would print "Exception ignored" tracebacks."""
    import gc as collector

    gc_module = sys.modules.get("expckpt.ops.gc")
    if gc_module is not None:
        gc_module.close_in_use()
    collector.collect()


if __name__ == "__main__":
    raise SystemExit(main())
