"""``expckpt``: the command line, thin over the library.

Each command parses its arguments, calls the library and returns an exit code: 0 success, 1 a
failure the user can act on (one line on stderr), 2 bad usage. ``-v`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from expckpt.cli.commands import (
    cmd_doctor,
    cmd_gc,
    cmd_list,
    cmd_pull,
    cmd_report,
    cmd_reset,
    cmd_resume,
    cmd_show,
    cmd_stop,
    cmd_verify,
)
from expckpt.cli.context import Context
from expckpt.errors import ExpCkptError
from expckpt.text import terminal_safe

__all__ = ["main"]


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
