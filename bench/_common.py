"""Shared helpers for the benchmarks (standard library only: the DVC 2 driver imports it too).

Nothing here asserts on time: the scripts measure, print ratios against a baseline taken in the
same run, and write one JSON file each into ``bench/results/``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
RESULTS = BENCH / "results"
EXAMPLE_FILES = ("train.py", "download.py", "mnist.py", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")


# -- environment ---------------------------------------------------------------------------------
def isolated_env(home: Path, bin_dir: Path = VENV_BIN) -> dict[str, str]:
    """os.environ without DVC/Git/dvclive/expckpt variables, with a throw-away HOME and Git identity."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text(
        "[user]\n\tname = expckpt bench\n\temail = bench@expckpt.invalid\n[init]\n\tdefaultBranch = main\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "DVCLIVE_", "GIT_", "EXPCKPT_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(home / ".dvc-site-cache"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def apply_env(env: Mapping[str, str]) -> None:
    """Make ``env`` this process's environment (for in-process benchmarks)."""
    for key in list(os.environ):
        if key not in env:
            del os.environ[key]
    os.environ.update(env)


def workdir(name: str, keep: bool = False) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"expckpt-bench-{name}-"))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, path, True)
    return path


def run(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    check: bool = True,
    timeout: float = 3600,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(args)} exited {proc.returncode} in {cwd}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def timed_run(args: Sequence[str], *, cwd: Path, env: Mapping[str, str], check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = run(args, cwd=cwd, env=env, check=check)
    return time.perf_counter() - start, proc


def make_project(path: Path, env: Mapping[str, str], **params: Any) -> Path:
    """A committed Git + DVC repo holding the example pipeline (as tests/conftest.py builds it)."""
    import yaml  # in both virtualenvs (DVC depends on it)

    path.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        shutil.copy(REPO / name, path / name)
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in params.items():
        values[key] = value
    (path / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    run(["git", "init", "-q"], cwd=path, env=env)
    run(["dvc", "init", "-q"], cwd=path, env=env)
    run(["dvc", "config", "core.autostage", "false"], cwd=path, env=env)
    run(["git", "add", "-A"], cwd=path, env=env)
    run(["git", "commit", "-qm", "example project"], cwd=path, env=env)
    return path


def head(path: Path, env: Mapping[str, str]) -> str:
    return run(["git", "rev-parse", "HEAD"], cwd=path, env=env).stdout.strip()


# -- statistics and output -----------------------------------------------------------------------
def summary(values: Iterable[float]) -> dict[str, Any]:
    vals = list(values)
    if not vals:
        return {"n": 0}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": [round(v, 6) for v in vals],
    }


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def secs(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def table(rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float, target: float, *, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "meets target" if ok else "MISSES target"


def reproduce_command() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        rel = script.relative_to(REPO)
    except ValueError:
        rel = script
    return f"cd {REPO} && PATH={VENV_BIN}:$PATH DVC_NO_ANALYTICS=1 python {shlex.join([str(rel), *sys.argv[1:]])}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions(names: Iterable[str]) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(packages: Iterable[str] = ("dvc", "dvclive", "torch", "dulwich", "expckpt")) -> dict[str, Any]:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    commit = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "expckpt", "train.py", "dvc.yaml", "params.yaml"],
            capture_output=True, text=True, check=True,
        ).stdout
        changed = sorted({line[3:] for line in dirty.splitlines() if line.strip()})
        if changed:
            commit += " + uncommitted changes in " + ", ".join(changed)
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": mem,
        "loadavg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "filesystem_tmp": _fs_type(Path(tempfile.gettempdir())),
        "project_commit": commit,
        "packages": _versions(packages),
    }


def _fs_type(path: Path) -> str | None:
    try:
        best, kind = "", None
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
        return kind
    except OSError:
        return None


def write_result(
    name: str, data: Mapping[str, Any], packages: Iterable[str] | None = None, command: str | None = None
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": name,
        "command": command or reproduce_command(),
        "machine": machine(packages) if packages is not None else machine(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nresult: {path.relative_to(REPO)}")
    print(f"reproduce: {out['command']}")
    return path


def header(title: str) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {title}")
    print(f"   {os.cpu_count()} cores, {_cpu_model()}; load average now {load}")
    print("   (figures are ratios to a baseline measured side by side in this same run)\n")
