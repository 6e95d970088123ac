"""The whole user workflow, end to end, through the real ``dvc`` and ``expckpt`` commands.

DVC 2's checkpoint tutorial, one step per test: look at the checkpoints, resume, branch off a
checkpoint (also with a changed learning rate), start over, compare, branch and remove, push to
a Git + DVC remote and resume in a fresh clone, run in a temp directory and from the queue,
and kill a run with SIGKILL. Nothing is mocked.

Each test runs alone: it gets its own copy of one template (a project trained once per session
with ``dvc exp run -n tut``: tut@0..tut@2, beside its bare Git remote and DVC store), which no
test modifies, so no test depends on another's side effects or order. The copy is a
``shutil.copytree`` of the template's directory; the Git remote is a relative path and the DVC
remote is pointed at the copy's store in ``.dvc/config.local``, so a copy pushes to its own.

The DVC remote is added to ``.dvc/config`` and committed *before* the first run: ``dvc exp push``
reads the remote from the experiment's commit, so a remote added later (and not committed) makes
it push the Git ref and silently upload no data (see ``test_push_pull_resume_in_clone``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import kill_group, make_project, run
from faultkit import FAST, Background
from oracle import check_consistent, resume_problems, same_state, unbroken_problems

pytestmark = pytest.mark.slow

CHECKPOINT_LINE = re.compile(r"^Checkpoint experiment '(?P<name>[^']+)' \((?P<short>[0-9a-f]{7})\)", re.M)
REPRODUCING = re.compile(r"^Reproducing experiment '(?P<name>[^']+)'", re.M)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Workflow:
    """One test's private copy of the template: the project beside its remotes."""

    root: Path
    project: Path
    baseline: str
    git_remote: Path
    dvc_store: Path
    first_run: str
    """What ``dvc exp run -n tut`` printed when the template was trained."""
    tut: dict[int, str]
    """step -> commit of tut@0..tut@2."""

    def sh(self, *args: str, cwd: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
        return run(*args, cwd=cwd or self.project, env={**FAST, **kwargs.pop("env", {})}, **kwargs)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self.sh("git", *args, cwd=cwd).stdout


def exp_refs(project: Path, baseline: str) -> dict[str, str]:
    """Experiment name -> commit for every experiment ref of ``baseline``."""
    prefix = f"refs/exps/{baseline[:2]}/{baseline[2:]}/"
    out = run("git", "for-each-ref", "--format=%(refname) %(objectname)", prefix, cwd=project).stdout
    return {ref[len(prefix) :]: sha for ref, sha in (line.split() for line in out.splitlines())}


def checkpoint_refs(project: Path, baseline: str, exp: str) -> dict[int, str]:
    """step -> commit of the checkpoints ``<exp>@<step>``."""
    found = {}
    for name, sha in exp_refs(project, baseline).items():
        base, at, step = name.rpartition("@")
        if at and base == exp and step.isdigit():
            found[int(step)] = sha
    return dict(sorted(found.items()))


def meta(project: Path, commit: str) -> dict[str, Any]:
    """The ``expckpt-meta:`` JSON line of a checkpoint commit's message."""
    message = run("git", "show", "-s", "--format=%B", commit, cwd=project).stdout
    lines = [line for line in message.splitlines() if line.startswith("expckpt-meta: ")]
    assert len(lines) == 1, message
    return json.loads(lines[0][len("expckpt-meta: ") :])


def show_file(project: Path, commit: str, path: str) -> str:
    return run("git", "show", f"{commit}:{path}", cwd=project).stdout


def lock_out(project: Path, commit: str, stage: str = "train", path: str = "model.pt") -> dict[str, Any]:
    """The dvc.lock entry of ``path`` in ``commit``."""
    lock = yaml.safe_load(show_file(project, commit, "dvc.lock"))
    outs = [o for o in lock["stages"][stage]["outs"] if o["path"] == path]
    assert len(outs) == 1, lock
    return outs[0]


def lock_params(project: Path, commit: str) -> dict[str, Any]:
    return yaml.safe_load(show_file(project, commit, "dvc.lock"))["stages"]["train"]["params"]["params.yaml"]


def cache_object(project: Path, md5: str) -> Path:
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def assert_checkpoint_complete(project: Path, commit: str) -> str:
    """The commit's dvc.lock names a model.pt whose object is in the cache with that md5."""
    out = lock_out(project, commit)
    obj = cache_object(project, out["md5"])
    assert obj.is_file(), f"{commit[:7]}: model.pt object {out['md5']} missing from the cache"
    assert md5_of(obj) == out["md5"], f"{commit[:7]}: cache object {obj} does not hash to its name"
    assert obj.stat().st_size == out["size"]
    return out["md5"]


def checkpoint_payload(project: Path, commit: str) -> dict[str, Any]:
    return torch.load(cache_object(project, lock_out(project, commit)["md5"]), map_location="cpu", weights_only=True)


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    wa, wb = a["model"], b["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def printed_checkpoints(stdout: str) -> list[tuple[str, str]]:
    return [(m["name"], m["short"]) for m in CHECKPOINT_LINE.finditer(stdout)]


def dvc_exp_show_rows(project: Path) -> dict[str, dict[str, Any]]:
    """Experiment name -> its ``data`` in ``dvc exp show --json`` (every row, nested or not)."""
    data = json.loads(run("dvc", "exp", "show", "--json", cwd=project).stdout)
    rows: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if {"rev", "name", "data"} <= node.keys() and node["name"] and isinstance(node["data"], dict):
                rows[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return rows


def expckpt_chains(project: Path) -> dict[str, dict[str, Any]]:
    return {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=project).stdout)}


def show_line(table: str, name: str) -> str:
    """The row of ``expckpt show`` for checkpoint ``name``, without the tree's ``│ `` indent."""
    lines = [line for line in table.splitlines() if re.match(rf"^(?:│ )*[╓╟╨═] {re.escape(name)}\s", line)]
    assert len(lines) == 1, f"no single row for {name} in:\n{table}"
    return re.sub(r"^(?:│ )*", "", lines[0])


# --------------------------------------------------------------------------- the project


@dataclass(frozen=True)
class Template:
    root: Path
    baseline: str
    first_run: str


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Built once per session; never modified afterwards (tests work on copies)."""
    root = tmp_path_factory.mktemp("workflow-template")
    project = make_project(root / "project", epochs=3)
    run("git", "init", "-q", "--bare", str(root / "remote.git"), cwd=root)
    run("git", "remote", "add", "origin", "../remote.git", cwd=project)
    (root / "dvc-store").mkdir()
    # absolute: `dvc exp push` reads the remote from the commit, where a relative path would
    # resolve against the Git tree's root ("/"); each copy points it at its own store in
    # .dvc/config.local (see use_own_store)
    run("dvc", "remote", "add", "-d", "store", str(root / "dvc-store"), cwd=project)
    run("git", "commit", "-qm", "DVC remote", "--", ".dvc/config", cwd=project)
    run("git", "push", "-q", "origin", "main", cwd=project)
    baseline = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    first = run("dvc", "exp", "run", "-n", "tut", cwd=project, env=FAST)
    return Template(root, baseline, first.stdout)


@pytest.fixture
def wf(template: Template, tmp_path: Path) -> Workflow:
    """A private copy of the template, laid out as training left it."""
    root = tmp_path / "w"
    shutil.copytree(template.root, root, symlinks=True)
    project = root / "project"
    # copytree does not keep hard links: link model.pt to its cache object again, as expckpt does
    model = project / "model.pt"
    obj = cache_object(project, md5_of(model))
    model.unlink()
    os.link(obj, model)
    tut = checkpoint_refs(project, template.baseline, "tut")
    assert sorted(tut) == [0, 1, 2], tut
    return Workflow(root, project, template.baseline, root / "remote.git", root / "dvc-store", template.first_run, tut)


# --------------------------------------------------------------------------- 1, 3, 7


def test_first_run_makes_one_complete_checkpoint_per_epoch(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    assert sorted(checkpoint_refs(p, wf.baseline, "tut")) == [0, 1, 2]
    assert printed_checkpoints(wf.first_run) == [(f"tut@{n}", tut[n][:7]) for n in range(3)]
    for step, commit in tut.items():
        assert wf.git("rev-parse", f"{commit}^").strip() == wf.baseline
        assert wf.git("rev-list", "--count", f"{wf.baseline}..{commit}").strip() == "1"
        assert yaml.safe_load(show_file(p, commit, "params.yaml"))["epochs"] == 3
        md5 = assert_checkpoint_complete(p, commit)
        assert lock_params(p, commit)["epochs"] == 3
        assert lock_out(p, commit, stage="download", path="data")["md5"].endswith(".dir")
        metrics = json.loads(show_file(p, commit, "dvclive/metrics.json"))
        assert metrics["step"] == step
        record = meta(p, commit)
        assert (record["exp"], record["step"]) == ("tut", step)
        assert record["outs"]["model.pt"]["md5"] == md5
        assert record["parent"] == (tut[step - 1] if step else None)
        assert record["metrics"]["acc"] == pytest.approx(metrics["acc"])
    # the three checkpoints hold different weights; the workspace holds the last one
    assert len({lock_out(p, c)["md5"] for c in tut.values()}) == 3
    assert md5_of(p / "model.pt") == lock_out(p, tut[2])["md5"]


def test_checkpoints_in_dvc_exp_show_and_expckpt_show(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    rows = dvc_exp_show_rows(p)
    for step in range(3):
        data = rows[f"tut@{step}"]
        assert data["rev"] == tut[step]
        assert data["metrics"]["dvclive/metrics.json"]["data"]["step"] == step
        assert 0 < data["metrics"]["dvclive/metrics.json"]["data"]["acc"] <= 1
        assert data["params"]["params.yaml"]["data"]["epochs"] == 3
        assert data["params"]["params.yaml"]["data"]["lr"] == 0.003

    table = wf.sh("expckpt", "show").stdout
    assert show_line(table, "tut@2").split()[3] == tut[2][:7]
    assert show_line(table, "tut@2").startswith("╓")
    assert show_line(table, "tut@1").startswith("╟")
    assert show_line(table, "tut@0").startswith("╨")
    assert table.index("tut@2") < table.index("tut@1") < table.index("tut@0")
    assert "(" not in show_line(table, "tut@0")  # a fresh chain: no origin

    chain = expckpt_chains(p)["tut"]
    assert chain["baseline"] == wf.baseline and chain["baseline_name"] == "main"
    assert chain["resumed_from"] is None
    assert [c["name"] for c in chain["checkpoints"]] == ["tut@2", "tut@1", "tut@0"]
    assert [c["commit"] for c in chain["checkpoints"]] == [tut[2], tut[1], tut[0]]
    assert [c["parent"] for c in chain["checkpoints"]] == [tut[1], tut[0], None]


def test_diffs_take_checkpoint_names(wf: Workflow) -> None:
    metrics = wf.sh("dvc", "metrics", "diff", "tut@0", "tut@2", "--json").stdout
    diff = json.loads(metrics)["dvclive/metrics.json"]
    assert diff["step"] == {"old": 0, "new": 2, "diff": 2}
    assert diff["acc"]["new"] > diff["acc"]["old"]
    table = wf.sh("dvc", "metrics", "diff", "tut@0", "tut@2").stdout
    assert "tut@0" in table and "tut@2" in table and "acc" in table

    assert wf.sh("dvc", "params", "diff", "tut@0", "tut@2").stdout.strip() == ""  # same params

    exp_diff = wf.sh("dvc", "exp", "diff", "tut@0", "tut@2").stdout
    assert re.search(r"dvclive/metrics\.json\s+acc\s", exp_diff), exp_diff

    out = wf.root / "plots-tut"
    wf.sh("dvc", "plots", "diff", "tut@0", "tut@2", "-o", str(out))
    html = (out / "index.html").read_text()
    for needle in ("tut@0", "tut@2", "dvclive/plots/metrics/acc.tsv", "dvclive/predictions.json"):
        assert needle in html


# --------------------------------------------------------------------------- 4, 5, 6


def test_run_again_with_more_epochs_continues_the_chain(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    out = wf.sh("dvc", "exp", "run", "-S", "epochs=5").stdout
    name = REPRODUCING.search(out)["name"]
    assert "Resuming from model.pt (tut@2): 3 steps done" in out
    more = checkpoint_refs(p, wf.baseline, name)
    assert sorted(more) == [3, 4]
    assert printed_checkpoints(out) == [(f"{name}@{n}", more[n][:7]) for n in (3, 4)]
    assert meta(p, more[3])["parent"] == tut[2]
    assert meta(p, more[4])["parent"] == more[3]
    for step, commit in more.items():
        assert json.loads(show_file(p, commit, "dvclive/metrics.json"))["step"] == step
        assert lock_params(p, commit)["epochs"] == 5
        assert_checkpoint_complete(p, commit)
    # dvclive's history goes on from the checkpoint: 5 rows, steps 0..4
    tsv = show_file(p, more[4], "dvclive/plots/metrics/acc.tsv").splitlines()
    assert [row.split("\t")[0] for row in tsv[1:]] == ["0", "1", "2", "3", "4"]

    chain = expckpt_chains(p)[name]
    assert chain["resumed_from"] == {"commit": tut[2], "name": "tut@2"}
    table = wf.sh("expckpt", "show").stdout
    assert f"{more[3][:7]} ({tut[2][:7]} tut@2)" in show_line(table, f"{name}@3")
    assert show_line(table, f"{name}@4").startswith("╓") and show_line(table, f"{name}@3").startswith("╨")


def test_apply_a_checkpoint_and_branch_off_it(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    wf.sh("dvc", "exp", "apply", "tut@1")
    assert md5_of(p / "model.pt") == lock_out(p, tut[1])["md5"]
    assert json.loads((p / "dvclive" / "metrics.json").read_text())["step"] == 1

    out = wf.sh("dvc", "exp", "run", "-n", "tut2").stdout
    assert "Resuming from model.pt (tut@1): 2 steps done" in out
    tut2 = checkpoint_refs(p, wf.baseline, "tut2")
    assert sorted(tut2) == [2]
    assert printed_checkpoints(out) == [("tut2@2", tut2[2][:7])]
    assert meta(p, tut2[2])["parent"] == tut[1]
    assert_checkpoint_complete(p, tut2[2])
    # resuming is exact: epoch 2 again from tut@1 gives tut@2's weights and metrics
    assert same_weights(checkpoint_payload(p, tut2[2]), checkpoint_payload(p, tut[2]))
    assert meta(p, tut2[2])["metrics"] == meta(p, tut[2])["metrics"]
    assert expckpt_chains(p)["tut2"]["resumed_from"] == {"commit": tut[1], "name": "tut@1"}
    assert f"({tut[1][:7]} tut@1)" in show_line(wf.sh("expckpt", "show").stdout, "tut2@2")

    # a modified checkpoint experiment: same starting point, another learning rate
    wf.sh("dvc", "exp", "apply", "tut@1")
    out = wf.sh("dvc", "exp", "run", "-n", "tut-lr", "-S", "lr=0.001").stdout
    assert "Resuming from model.pt (tut@1): 2 steps done" in out
    assert "optimizer lr is 0.001 now (0.003 in the checkpoint)" in out
    tut_lr = checkpoint_refs(p, wf.baseline, "tut-lr")
    assert sorted(tut_lr) == [2]
    assert meta(p, tut_lr[2])["parent"] == tut[1]
    assert lock_params(p, tut_lr[2])["lr"] == 0.001
    assert yaml.safe_load(show_file(p, tut_lr[2], "params.yaml"))["lr"] == 0.001
    payload = checkpoint_payload(p, tut_lr[2])
    assert {g["lr"] for g in payload["optimizer"]["param_groups"]} == {0.001}
    assert not same_weights(payload, checkpoint_payload(p, tut[2]))
    assert meta(p, tut_lr[2])["metrics"] != meta(p, tut[2])["metrics"]
    params = wf.sh("dvc", "params", "diff", "tut@1", "tut-lr@2", "--json").stdout
    lr = json.loads(params)["params.yaml"]["lr"]
    assert (lr["old"], lr["new"]) == (0.003, 0.001)


def test_reset_starts_from_scratch(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    reset = wf.sh("expckpt", "reset").stdout
    assert "Removed model.pt" in reset and not (p / "model.pt").exists()
    out = wf.sh("dvc", "exp", "run", "-n", "fresh", "-S", "epochs=1").stdout
    assert "Resuming" not in out
    fresh = checkpoint_refs(p, wf.baseline, "fresh")
    assert sorted(fresh) == [0]
    assert printed_checkpoints(out) == [("fresh@0", fresh[0][:7])]
    assert meta(p, fresh[0])["parent"] is None
    assert_checkpoint_complete(p, fresh[0])
    # same seed, same data, same lr: the first epoch gives tut@0's weights again
    assert same_weights(checkpoint_payload(p, fresh[0]), checkpoint_payload(p, tut[0]))
    assert meta(p, fresh[0])["metrics"] == meta(p, tut[0])["metrics"]
    assert expckpt_chains(p)["fresh"]["resumed_from"] is None


# --------------------------------------------------------------------------- 8


def test_branch_from_a_checkpoint_and_remove_one(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    wf.sh("dvc", "exp", "branch", "tut@1", "best-model")
    assert wf.git("rev-parse", "refs/heads/best-model").strip() == tut[1]
    assert lock_out(p, "best-model")["md5"] == lock_out(p, tut[1])["md5"]

    before = exp_refs(p, wf.baseline)
    wf.sh("dvc", "exp", "remove", "tut@0")
    after = exp_refs(p, wf.baseline)
    assert set(before) - set(after) == {"tut@0"}
    assert {k: v for k, v in before.items() if k != "tut@0"} == after
    chain = expckpt_chains(p)["tut"]
    assert [c["name"] for c in chain["checkpoints"]] == ["tut@2", "tut@1"]
    assert wf.sh("expckpt", "verify").returncode == 0


# --------------------------------------------------------------------------- 9


def use_own_store(project: Path, store: Path) -> None:
    """Point the committed remote ``store`` at ``store`` for this checkout only."""
    (project / ".dvc" / "config.local").write_text(f"['remote \"store\"']\n    url = {store}\n")


def test_push_pull_resume_in_clone(wf: Workflow) -> None:
    p, tut = wf.project, wf.tut
    use_own_store(p, wf.dvc_store)
    out = wf.sh("dvc", "exp", "push", "origin", "tut@1").stdout
    assert "tut@1" in out
    remote_refs = wf.git("ls-remote", str(wf.git_remote))
    assert f"{tut[1]}\trefs/exps/{wf.baseline[:2]}/{wf.baseline[2:]}/tut@1" in remote_refs
    assert "tut@2" not in remote_refs
    # the checkpoint's model.pt and the data directory (dvc.lock records both) are uploaded
    model_md5 = lock_out(p, tut[1])["md5"]
    data_md5 = lock_out(p, tut[1], stage="download", path="data")["md5"]
    stored = {f.parent.name + f.name for f in (wf.dvc_store / "files" / "md5").glob("*/*")}
    assert {model_md5, data_md5} <= stored

    clone = wf.root / "clone"
    run("git", "clone", "-q", str(wf.git_remote), str(clone), cwd=wf.root)
    use_own_store(clone, wf.dvc_store)
    wf.sh("dvc", "exp", "pull", "origin", "tut@1", cwd=clone)
    assert checkpoint_refs(clone, wf.baseline, "tut") == {1: tut[1]}
    wf.sh("dvc", "exp", "apply", "tut@1", cwd=clone)
    assert md5_of(clone / "model.pt") == model_md5
    assert (clone / "data" / "train.npz").is_file()

    out = wf.sh("dvc", "exp", "run", "-n", "cont", cwd=clone).stdout
    assert "Stage 'download' didn't change, skipping" in out
    assert "Resuming from model.pt (tut@1): 2 steps done" in out
    cont = checkpoint_refs(clone, wf.baseline, "cont")
    assert sorted(cont) == [2]
    assert printed_checkpoints(out) == [("cont@2", cont[2][:7])]
    assert meta(clone, cont[2])["parent"] == tut[1]
    assert_checkpoint_complete(clone, cont[2])
    # resumed in the clone, it ends where the uninterrupted run in the original project did
    assert same_weights(checkpoint_payload(clone, cont[2]), checkpoint_payload(p, tut[2]))
    assert meta(clone, cont[2])["metrics"] == meta(p, tut[2])["metrics"]


# --------------------------------------------------------------------------- 10


def run_queue(wf: Workflow, *, workers: int, names: tuple[str, ...], timeout: float = 600) -> dict[str, str]:
    """``dvc queue start -j <workers>``, wait until every task in ``names`` has ended, stop the
    workers; return name -> final status from ``dvc queue status``.

    Not ``dvc exp run --run-all``: it waits for its workers, and with ``-j 2`` a worker whose
    idle monitor fires while it still runs a task ("monitor: shutting down due to empty queue")
    can hang after the task, ignoring ``dvc queue stop`` and SIGTERM (DVC 3.67.1, dvc-task).
    Workers still alive after ``dvc queue stop`` are killed by the pid DVC recorded.
    """
    celery = wf.project / ".dvc" / "tmp" / "exps" / "celery"
    log = wf.root / "queue-start.log"
    with open(log, "ab") as out:  # not a pipe: the detached workers would hold it open
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(workers)], cwd=wf.project, stdout=out, stderr=out, check=True
        )
    deadline = time.monotonic() + timeout
    final: dict[str, str] = {}
    asked = time.monotonic()
    try:
        while time.monotonic() < deadline:
            # `dvc queue status` costs a second of CPU the workers need: ask it once DVC wrote
            # every experiment's ref (cheap to see), and every 15 s in case a task failed
            if set(names) <= exp_refs(wf.project, wf.baseline).keys() or time.monotonic() - asked > 15:
                asked = time.monotonic()
                rows = wf.sh("dvc", "queue", "status").stdout.splitlines()
                states = {
                    cells[1]: cells[-1] for cells in (r.split() for r in rows) if len(cells) >= 4 and cells[1] in names
                }
                final = {n: s for n, s in states.items() if s in ("Success", "Failed")}
                if len(final) == len(names):
                    break
            time.sleep(0.5)
    finally:
        wf.sh("dvc", "queue", "stop", check=False)
        for pid_file in celery.glob("dvc-exp-worker-*.pid"):
            stop_worker(int(pid_file.read_text().strip() or 0))
    return final


def stop_worker(pid: int, grace: float = 20) -> None:
    """Wait for a DVC queue worker to exit; kill it (by pid) if it hangs."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + grace
    while pid and time.monotonic() < deadline:
        try:
            if b"queue-worker" not in cmdline.read_bytes():
                return
        except OSError:
            return
        time.sleep(0.5)
    if pid and cmdline.exists() and b"queue-worker" in cmdline.read_bytes():
        os.kill(pid, signal.SIGKILL)


def test_temp_and_queued_runs_land_in_the_repository(wf: Workflow) -> None:
    p = wf.project
    before = exp_refs(p, wf.baseline)

    out = wf.sh("dvc", "exp", "run", "--temp", "-n", "tmp", "-S", "epochs=2").stdout
    tmp = checkpoint_refs(p, wf.baseline, "tmp")
    assert sorted(tmp) == [0, 1]
    assert printed_checkpoints(out) == [(f"tmp@{n}", tmp[n][:7]) for n in (0, 1)]
    for commit in tmp.values():
        assert_checkpoint_complete(p, commit)  # in the main repository's cache, not the temp copy's

    wf.sh("dvc", "exp", "run", "--queue", "-n", "q1", "-S", "lr=0.002", "-S", "epochs=2")
    wf.sh("dvc", "exp", "run", "--queue", "-n", "q2", "-S", "lr=0.004", "-S", "epochs=2")
    status = run_queue(wf, workers=2, names=("q1", "q2"))
    assert status == {"q1": "Success", "q2": "Success"}, wf.sh("dvc", "queue", "logs", "q1", check=False).stdout

    commits = set()
    for exp, lr in (("q1", 0.002), ("q2", 0.004)):
        chain = checkpoint_refs(p, wf.baseline, exp)
        assert sorted(chain) == [0, 1], (exp, exp_refs(p, wf.baseline))
        assert meta(p, chain[0])["parent"] is None and meta(p, chain[1])["parent"] == chain[0]
        for step, commit in chain.items():
            record = meta(p, commit)
            assert (record["exp"], record["step"]) == (exp, step)
            assert lock_params(p, commit)["lr"] == lr
            assert yaml.safe_load(show_file(p, commit, "params.yaml"))["lr"] == lr
            assert json.loads(show_file(p, commit, "dvclive/metrics.json"))["step"] == step
            assert_checkpoint_complete(p, commit)
            commits.add(commit)
    assert len(commits) == 4
    after = exp_refs(p, wf.baseline)
    assert {k: after.get(k) for k in before} == before  # nothing that existed was moved
    assert wf.sh("expckpt", "verify").returncode == 0


# --------------------------------------------------------------------------- 2


def test_sigkill_leaves_only_complete_checkpoints_and_resumes(wf: Workflow) -> None:
    """``dvc exp run`` and train.py killed together right after a checkpoint; the run started
    again goes on from the last complete one and ends where the uninterrupted tut run did.

    The killed run starts from scratch with tut's seed and lr, so its checkpoints are
    byte-identical twins of tut's: resuming must still go on from the killed run's own.
    """
    p, tut = wf.project, wf.tut
    wf.sh("expckpt", "reset")  # start at step 0, not from the workspace's tut@2
    # unbuffered: the checkpoint line reaches the test when it is printed, not at exit
    bg = Background.start(
        ["dvc", "exp", "run", "-n", "killed", "-S", "epochs=8"], p, {"PYTHONUNBUFFERED": "1"}, group=True
    )
    try:
        bg.wait_for("Checkpoint experiment 'killed@1'", timeout=300)
    finally:
        if bg.proc.poll() is None:
            kill_group(bg.proc.pid)
        bg.wait()
    output = bg.text()
    assert bg.proc.returncode == -signal.SIGKILL, output

    refs = check_consistent(p)
    assert unbroken_problems(p, "killed") == []
    killed = checkpoint_refs(p, wf.baseline, "killed")
    last = max(killed)
    assert 1 <= last <= 2, f"killed after killed@1 was printed, before two more epochs: {sorted(killed)}"
    assert refs[f"killed@{last}"].commit == killed[last]
    for step, commit in killed.items():
        assert json.loads(show_file(p, commit, "dvclive/metrics.json"))["step"] == step
        assert meta(p, commit)["parent"] == (killed[step - 1] if step else None)
    assert wf.sh("expckpt", "verify", "killed").returncode == 0

    # the next run goes on from the last complete checkpoint, to tut's 3 epochs
    out = wf.sh("dvc", "exp", "run", "-n", "after-kill", "-S", "epochs=3").stdout
    assert resume_problems(out, "killed", last, 3) == [], out
    after = checkpoint_refs(p, wf.baseline, "after-kill")
    assert sorted(after) == list(range(last + 1, 3))
    if last < 2:
        assert meta(p, after[2])["parent"] == killed[last]
    check_consistent(p)
    # ... and ends with the weights of the uninterrupted run (tut@2)
    assert same_state(p / "model.pt", cache_object(p, lock_out(p, tut[2])["md5"])) == []
    # DVC detaches HEAD at the baseline while `dvc exp run` runs and re-attaches it at the end;
    # SIGKILL skips that, so HEAD stays detached (also after later runs) until the user goes
    # back to the branch
    wf.sh("git", "checkout", "-q", "main")
    assert wf.git("symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert wf.git("rev-parse", "HEAD").strip() == wf.baseline
