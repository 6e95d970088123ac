"""One contract, every front end: the same rows run over the plain loop, ``CheckpointLive``, torchrun
DDP and sharded DCP (2 gloo processes each), Lightning and the HF ``Trainer``, each through a real
``dvc exp run`` of its example (``tests/contractkit.py``). The README's contract table is this file.

Per front end, one project (5 epochs, ``every`` chosen so that the interval skips the last step,
``keep_last: 1`` + ``keep_best: 1``, pushing to a bare Git remote and a local DVC remote) and one
reference run ``ref``; the rows then run in order in that project.
"""

from __future__ import annotations

import math
import random
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run
from contractkit import EPOCHS, FRONT_ENDS, FrontEnd, back_to_branch, kill_tree, signal_training, start, wait_for
from integrationkit import baseline, checkpoint_refs, lineage, meta

pytestmark = pytest.mark.slow

CHECKPOINT_LINE = re.compile(r"^Checkpoint experiment '([^']+)'", re.M)


@pytest.fixture(scope="module", params=FRONT_ENDS, ids=[f.name for f in FRONT_ENDS])
def ref(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    front: FrontEnd = request.param
    root = tmp_path_factory.mktemp(front.name)
    project = front.make(root / "p")
    run("git", "init", "-q", "--bare", str(root / "origin.git"), cwd=root)
    run("git", "remote", "add", "origin", str(root / "origin.git"), cwd=project)
    run("dvc", "remote", "add", "-d", "storage", str(root / "dvc-storage"), cwd=project)
    values = yaml.safe_load((project / "params.yaml").read_text())
    values["checkpoint"]["push"] = "origin"
    (project / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    run("git", "commit", "-qam", "push checkpoints to origin", cwd=project)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in front.env.items():
            mp.setenv(key, value)
        base = baseline(project)
        out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
        yield {"front": front, "project": project, "base": base, "out": out, "root": root}


def _refs(ref: dict[str, Any], exp: str) -> dict[int, str]:
    return checkpoint_refs(ref["project"], ref["base"], exp)


def _chain(ref: dict[str, Any], exp: str) -> dict[int, dict[str, Any]]:
    """step -> meta of every checkpoint the run ``exp`` made (removed ones too, along the parents)."""
    refs = _refs(ref, exp)
    return {step: meta(ref["project"], commit) for step, commit in lineage(ref["project"], refs[max(refs)]).items()}


def test_the_final_step_is_saved_even_when_the_interval_skips_it(ref: dict[str, Any]) -> None:
    front: FrontEnd = ref["front"]
    assert (front.steps()[-1] + 1) % front.every != 0  # the interval alone would skip it
    assert CHECKPOINT_LINE.findall(ref["out"]) == [f"ref@{s}" for s in front.saved()]  # once each, on rank 0


def test_retention_during_training_keeps_exactly_the_policys_refs(ref: dict[str, Any]) -> None:
    front: FrontEnd = ref["front"]
    chain = _chain(ref, "ref")
    assert sorted(chain) == front.saved()
    best = max(chain, key=lambda s: (chain[s]["metrics"][front.monitor], -s))  # the first of equals wins
    assert sorted(_refs(ref, "ref")) == sorted({front.saved()[-1], best})


def test_push_sends_the_kept_checkpoints_to_the_git_and_dvc_remotes(ref: dict[str, Any]) -> None:
    p, root = ref["project"], ref["root"]
    remote = run("git", "ls-remote", str(root / "origin.git"), "refs/exps/*", cwd=p).stdout
    pushed = {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in remote.splitlines()}
    for step, commit in _refs(ref, "ref").items():
        assert pushed.get(f"ref@{step}") == commit
        for out in meta(p, commit)["outs"].values():
            md5 = out["md5"]
            assert (root / "dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]).is_file(), f"ref@{step}: {md5}"


def test_a_kill_at_a_random_step_resumes_bitwise_exact_under_its_own_name(ref: dict[str, Any], tmp_path: Path) -> None:
    front: FrontEnd = ref["front"]
    p, base = ref["project"], ref["base"]
    after = random.Random(front.name).choice(front.saved()[:-1])
    run("expckpt", "reset", cwd=p)
    proc = start(p, "killed")
    wait_for(p, base, "killed", proc, lambda refs: after in refs)
    kill_tree(proc, "killed", p)
    back_to_branch(p)
    killed = _refs(ref, "killed")
    assert after in killed and max(killed) < front.steps()[-1]

    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout

    assert re.search(rf"Resuming from {front.output}/? \(killed@{max(killed)}\)", out), out
    assert set(_refs(ref, "killed")) <= set(killed)  # nothing more under the killed run's name
    resumed = _refs(ref, "resumed")
    assert max(resumed) == front.steps()[-1]
    assert lineage(p, resumed[max(resumed)])[max(killed)] == killed[max(killed)]
    reference = _refs(ref, "ref")[front.steps()[-1]]
    from integrationkit import same

    assert same(front.exact(p, resumed[max(resumed)], tmp_path), front.exact(p, reference, tmp_path))


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(ref: dict[str, Any], tmp_path: Path) -> None:
    front: FrontEnd = ref["front"]
    p = ref["project"]
    first, second = front.saved()[:2]
    run("expckpt", "reset", cwd=p)
    result = run(
        "dvc", "exp", "run", "-n", "crashed", cwd=p, check=False, env={"EXPCKPT_CRASH_AT": f"after-publish:{second}"}
    )
    assert result.returncode != 0
    back_to_branch(p)
    crashed = _refs(ref, "crashed")
    assert sorted(crashed) == [first]
    front.exact(p, crashed[first], tmp_path)  # loads (weights_only) from the cache
    verified = run("expckpt", "verify", "--all", cwd=p, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_reused_experiment_name_is_refused(ref: dict[str, Any]) -> None:
    """``crashed`` has checkpoints but no experiment of DVC's own (DVC would refuse that name itself)."""
    p = ref["project"]
    before = _refs(ref, "crashed")
    run("expckpt", "reset", cwd=p)
    result = run("dvc", "exp", "run", "-n", "crashed", cwd=p, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "already exist" in line]
    assert len(errors) == 1 and f"'crashed@{min(before)}'" in errors[0], result.stdout + result.stderr
    assert not re.search(r"^Checkpoint experiment", result.stdout, re.M), "it trained"
    assert _refs(ref, "crashed") == before
    back_to_branch(p)


def test_sigterm_pauses_at_the_next_boundary_and_exits_cleanly(ref: dict[str, Any]) -> None:
    """SIGTERM (Kubernetes, SLURM) to the training processes: a checkpoint where training is,
    marked paused, one line naming it, exit 75 (``dvc exp run`` then fails: no final experiment)."""
    front: FrontEnd = ref["front"]
    p, base = ref["project"], ref["base"]
    first = front.saved()[0]
    run("expckpt", "reset", cwd=p)
    # dash, as where SHELL is unset (CI, containers): it does not exec the stage's command, so the
    # signal ends the shell too and DVC finishes before training does (tests/test_reset.py)
    proc = start(p, "termed", env={"SHELL": "/bin/sh"})
    try:
        wait_for(p, base, "termed", proc, lambda refs: first in refs)
        assert signal_training("termed", p, signal.SIGTERM)  # the workers, not torchrun: as a cluster does
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            kill_tree(proc, "termed", p)
    back_to_branch(p)
    termed = _refs(ref, "termed")
    last = max(termed)
    assert re.search(rf"^expckpt: paused by SIGTERM at step \d+ \(termed@{last}\)", output, re.M), output
    assert meta(p, termed[last])["paused"] is True
    if front.ranks == 1:  # torchrun prints its own report of workers that exited non-zero
        assert "Traceback" not in output, output
    verified = run("expckpt", "verify", "--all", cwd=p, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_divergence_stops_and_keeps_the_best(ref: dict[str, Any]) -> None:
    front: FrontEnd = ref["front"]
    p = ref["project"]
    first = front.steps()[0]
    run("expckpt", "reset", cwd=p)
    result = run(
        "dvc",
        "exp",
        "run",
        "-n",
        "div",
        "-S",
        "lr=1.0e+30",
        "-S",
        "+checkpoint.on_divergence=stop",
        "-S",
        f"+checkpoint.divergence_metric={front.loss}",
        cwd=p,
        check=False,
    )
    out = result.stdout + result.stderr
    assert f"expckpt: stopping training at step {first} (" in out, out
    div = _refs(ref, "div")
    assert first in div and not math.isfinite(float(meta(p, div[first])["metrics"][front.loss]))
    assert sorted(div) == [first]  # the stop step: saved though the interval skips it, and nothing after
    back_to_branch(p)
    run("git", "checkout", "-q", "--", "params.yaml", cwd=p)


def _source_step(ref: dict[str, Any]) -> int:
    """A kept checkpoint of ``ref`` that gc's ``--keep-last 1`` would remove if nothing depended
    on it (its best, when that is not its last), else its last."""
    return min(_refs(ref, "ref"))


def test_init_from_starts_a_fresh_trial_that_resumes_its_own_chain(ref: dict[str, Any]) -> None:
    """``-S checkpoint.init_from=ref@<step>``: a new experiment from step 0 with the source's
    weights and its lineage in every checkpoint; killed, it resumes its own chain, not the source."""
    front: FrontEnd = ref["front"]
    p, base = ref["project"], ref["base"]
    source = _source_step(ref)
    spec = f"+checkpoint.init_from=ref@{source}"
    run("expckpt", "reset", cwd=p)
    proc = start(p, "fresh", "-S", spec)
    wait_for(p, base, "fresh", proc, lambda refs: front.saved()[0] in refs)
    output = kill_tree(proc, "fresh", p)
    back_to_branch(p)
    run("git", "checkout", "-q", "HEAD", "--", "params.yaml", cwd=p)
    assert output.count(f"expckpt: fresh trial from ref@{source} (") == 1, output  # rank 0 says it
    fresh = _refs(ref, "fresh")
    first = meta(p, fresh[min(fresh)])
    assert min(fresh) == front.saved()[0] and first["parent"] is None  # step 0 on, not after the source's step
    origin = {"exp": "ref", "step": source, "commit": _refs(ref, "ref")[source]}
    assert first["initialized_from"] == origin

    out = run("dvc", "exp", "run", "-n", "fresh-resumed", "-S", spec, cwd=p).stdout
    run("git", "checkout", "-q", "HEAD", "--", "params.yaml", cwd=p)
    assert re.search(rf"Resuming from {front.output}/? \(fresh@{max(fresh)}\)", out), out
    assert "fresh trial from" not in out, out
    resumed = _refs(ref, "fresh-resumed")
    last = resumed[max(resumed)]
    assert max(resumed) == front.steps()[-1] and lineage(p, last)[max(fresh)] == fresh[max(fresh)]
    assert meta(p, last)["initialized_from"] == origin


def test_a_trials_source_is_a_branch_point_that_gc_keeps(ref: dict[str, Any]) -> None:
    front: FrontEnd = ref["front"]
    p = ref["project"]
    source = _source_step(ref)
    listed = run("expckpt", "list", "ref", cwd=p).stdout
    line = next(line for line in listed.splitlines() if line.startswith(f"ref@{source} "))
    assert re.search(r"branch point of .*\bfresh\b", line), listed
    # ranked upside down, the policy keeps ref's newest and worst: only being a branch point keeps its best
    upside_down = ["-w", "--keep-last", "1", "--keep-best", "1", "--metric", front.monitor, "--mode", "min"]
    gc = run("expckpt", "gc", *upside_down, "--dry-run", cwd=p).stdout
    assert f"Would remove checkpoint ref@{source} " not in gc, gc
    kept = _refs(ref, "ref")
    value = {step: meta(p, commit)["metrics"][front.monitor] for step, commit in kept.items()}
    if value[source] > value[max(kept)]:  # the best is not the newest (nor as good): the policy alone drops it
        assert re.search(rf"^Keeping checkpoint ref@{source}: a branch point of .*\bfresh\b", gc, re.M), gc
        gc = run("expckpt", "gc", *upside_down, "--dry-run", "--include-branch-points", cwd=p).stdout
        assert f"Would remove checkpoint ref@{source} (" in gc, gc


def test_resuming_from_a_lost_checkpoint_is_refused(ref: dict[str, Any]) -> None:
    front: FrontEnd = ref["front"]
    p = ref["project"]
    run("dvc", "exp", "apply", f"ref@{front.steps()[-1]}", cwd=p)
    lock = yaml.safe_load((p / "dvc.lock").read_text())
    (md5,) = [o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"].rstrip("/") == front.output]
    from expckpt.store.cache import DvcCache

    cache = DvcCache.for_project(p, p / ".git")
    if md5.endswith(".dir"):  # DVC rebuilds a directory from its file objects: they go too
        for file_md5 in cache.manifest(md5).values():
            cache.object_path(file_md5).unlink(missing_ok=True)
    cache.object_path(md5).unlink()
    out = p / front.output
    if out.is_dir():
        import shutil

        shutil.rmtree(out)
    else:
        out.unlink()
    before = {exp: _refs(ref, exp) for exp in ("ref", "resumed")}
    result = run("dvc", "exp", "run", "-n", "lost", "-S", f"epochs={EPOCHS + 1}", cwd=p, check=False)
    assert result.returncode != 0
    # ref's last checkpoint, or a byte-identical one of the resumed run (both are that file)
    assert re.search(rf"{front.output}/? should be checkpoint \S+@{front.steps()[-1]} ", result.stderr), result.stderr
    assert not re.search(r"^Checkpoint experiment", result.stdout, re.M), "it trained"
    assert {exp: _refs(ref, exp) for exp in before} == before
    back_to_branch(p)
    run("git", "checkout", "-q", "--", "params.yaml", cwd=p)
    run("expckpt", "reset", cwd=p)
