"""Sharing at team scale: ``checkpoint.push`` against a real S3-compatible server and a bare Git remote.

The S3 server is moto's (``moto_server``, installed with the ``test`` extra), started by these
tests on 127.0.0.1 on a free port; DVC talks to it through ``dvc-s3`` with fake credentials.
Everything else is the real ``dvc exp run``, ``git`` and ``expckpt``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, make_project, run

pytestmark = pytest.mark.slow

BUCKET = "team"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "expckpt-test",
    "AWS_SECRET_ACCESS_KEY": "expckpt-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
PAUSE = "expckpt: fault injection: pausing"


# --------------------------------------------------------------------------- the S3 server


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):  # noqa: ANN201 - boto3 has no public client type
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def stored(self) -> set[str]:
        """md5s of the objects in the bucket's DVC store."""
        keys: set[str] = set()
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="store/files/md5/"):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return {k.split("/")[-2] + k.split("/")[-1] for k in keys}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log: Path, port: int = 0) -> S3Server:
    """``moto_server`` on 127.0.0.1 (``port`` 0: any free one), with an empty bucket."""
    out = open(log, "wb")  # noqa: SIM115 - the server writes to it until stopped
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **S3_ENV},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            server = S3Server(proc, found[1])
            server.client().create_bucket(Bucket=BUCKET)
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"moto_server did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module", autouse=True)
def _s3_credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in S3_ENV.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


# --------------------------------------------------------------------------- helpers


def team_project(root: Path, endpoint: str, **params: object) -> tuple[Path, Path, str]:
    """The example project with a bare Git remote ``origin`` and an S3 DVC remote (committed)."""
    project = make_project(root / "project", **params)
    remote = root / "remote.git"
    run("git", "init", "-q", "--bare", str(remote), cwd=root)
    run("git", "remote", "add", "origin", str(remote), cwd=project)
    run("dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/store", cwd=project)
    run("dvc", "remote", "modify", "s3", "endpointurl", endpoint, cwd=project)
    run("git", "commit", "-qm", "team remotes", "--", ".dvc/config", cwd=project)
    run("git", "push", "-q", "origin", "main", cwd=project)
    return project, remote, run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()


def remote_checkpoints(remote: Path, exp: str) -> dict[int, str]:
    """step -> commit of ``<exp>@<step>`` refs in a Git repository (a remote, or the project)."""
    out = run("git", "ls-remote", str(remote), "refs/exps/*", cwd=remote).stdout
    found = {}
    for line in out.splitlines():
        sha, ref = line.split("\t")
        name = ref.rpartition("/")[2]
        if name.startswith(f"{exp}@"):
            found[int(name.rpartition("@")[2])] = sha
    return dict(sorted(found.items()))


def model_md5(project: Path, commit: str) -> str:
    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "model.pt")


def weights(project: Path, md5: str) -> dict[str, torch.Tensor]:
    path = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def start_run(project: Path, name: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["dvc", "exp", "run", "-n", name],
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def wait_for(text: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return time.monotonic()
        assert proc.poll() is None, f"the run ended before {text!r}:\n{log.read_text(errors='replace')}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {timeout} s:\n{log.read_text(errors='replace')}")


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    return text


# --------------------------------------------------------------------------- the tests


def test_push_during_training_then_a_fresh_clone_resumes_exactly(s3: S3Server, tmp_path: Path) -> None:
    project, remote, baseline = team_project(
        tmp_path, s3.url, epochs=3, checkpoint={"every": 1, "keep_last": 10, "push": "origin"}
    )
    log, pause_s = tmp_path / "run.log", 60.0
    # the last epoch pauses after its ref is written, before it is complete: pushes of the
    # earlier checkpoints must reach both remotes while training is still there
    proc = start_run(project, "tut", log, EXPCKPT_PAUSE_AT="after-ref:2", EXPCKPT_PAUSE_SECONDS=str(pause_s))
    paused_at = wait_for(PAUSE, log, proc)
    seen_at = None
    while time.monotonic() < paused_at + pause_s - 2:
        on_remote = remote_checkpoints(remote, "tut")
        if {0, 1} <= on_remote.keys() and {model_md5(project, on_remote[s]) for s in (0, 1)} <= s3.stored():
            seen_at = time.monotonic()
            break
        time.sleep(0.5)
    out = finish(proc, log)
    assert seen_at is not None, f"tut@0 and tut@1 were not on both remotes while step 2 was in progress:\n{out}"
    assert "expckpt: warning" not in out
    pushed = re.findall(r"^expckpt: pushed (.+) to origin$", out, re.M)
    assert sorted(n for line in pushed for n in line.split(", ")) == ["tut@0", "tut@1", "tut@2"], out

    local = remote_checkpoints(project, "tut")
    assert remote_checkpoints(remote, "tut") == local
    data_md5 = next(
        o["md5"]
        for o in yaml.safe_load(run("git", "show", f"{local[2]}:dvc.lock", cwd=project).stdout)["stages"]["download"][
            "outs"
        ]
    )
    assert {model_md5(project, local[s]) for s in local} | {data_md5} <= s3.stored()

    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(remote), str(clone), cwd=tmp_path)
    run("dvc", "exp", "pull", "origin", "tut@1", cwd=clone)
    run("dvc", "exp", "apply", "tut@1", cwd=clone)
    assert (clone / "data" / "train.npz").is_file()
    resumed = run("dvc", "exp", "run", "-n", "cont", cwd=clone).stdout
    assert "Resuming from model.pt (tut@1): 2 steps done" in resumed
    cont = next(
        line.split()[1]
        for line in run(
            "git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", cwd=clone
        ).stdout.splitlines()
        if line.split()[0].endswith("/cont@2")
    )
    a, b = weights(clone, model_md5(clone, cont)), weights(project, model_md5(project, local[2]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert baseline in run("git", "rev-list", "--all", cwd=clone).stdout


def test_network_down_is_reported_once_and_dropped_checkpoints_are_never_pushed(tmp_path: Path) -> None:
    """Also DVC's own switch: ``DVC_EXP_AUTO_PUSH=true`` pushes to ``origin`` without ``checkpoint.push``."""
    port = free_port()  # nothing listens there until the last epoch
    project, remote, _ = team_project(
        tmp_path, f"http://127.0.0.1:{port}", epochs=4, checkpoint={"every": 1, "keep_last": 1}
    )
    log = tmp_path / "run.log"
    proc = start_run(
        project, "tut", log, EXPCKPT_PAUSE_AT="after-ref:3", EXPCKPT_PAUSE_SECONDS="40", DVC_EXP_AUTO_PUSH="true"
    )
    wait_for(PAUSE, log, proc)
    wait_for("expckpt: warning: could not push tut@", log, proc, timeout=35)
    assert remote_checkpoints(remote, "tut") == {}  # objects first: no ref without its data
    server = start_s3(tmp_path / "moto.log", port)  # the network comes back
    try:
        out = finish(proc, log)
        stored = server.stored()
    finally:
        server.stop()
    warnings = re.findall(r"^expckpt: warning: .*$", out, re.M)
    assert len(warnings) == 1, out
    assert re.fullmatch(
        r"expckpt: warning: could not push tut@[0-2] to origin: .+; training goes on, will retry", warnings[0]
    ), warnings[0]
    assert "(pushing works again)" in out
    on_remote = remote_checkpoints(remote, "tut")
    # keep_last: 1 dropped tut@0 and tut@1 while the network was down: they never went out
    assert 3 in on_remote and not {0, 1} & on_remote.keys(), out
    assert model_md5(project, on_remote[3]) in stored
    local = run("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=project).stdout
    assert "/tut@3" in local and "/tut@0" not in local


def test_gc_cloud_deletes_only_what_no_ref_branch_tag_or_metafile_needs(s3: S3Server, tmp_path: Path) -> None:
    project, remote, _ = team_project(
        tmp_path, s3.url, epochs=4, checkpoint={"every": 1, "keep_last": 10, "push": "origin"}
    )
    # an object expckpt did not write: uploaded by plain `dvc push`, then no metafile names it
    (project / "notes.txt").write_text("team notes\n")
    run("dvc", "add", "-q", "notes.txt", cwd=project)
    notes_md5 = yaml.safe_load((project / "notes.txt.dvc").read_text())["outs"][0]["md5"]
    run("dvc", "push", "-q", cwd=project)
    (project / "notes.txt").unlink()
    (project / "notes.txt.dvc").unlink()
    run("dvc", "exp", "run", "-n", "tut", cwd=project)
    local = remote_checkpoints(project, "tut")
    assert remote_checkpoints(remote, "tut") == local and sorted(local) == [0, 1, 2, 3]
    models = {step: model_md5(project, sha) for step, sha in local.items()}
    assert set(models.values()) | {notes_md5} <= s3.stored()

    # tut@0 and tut@2 leave the Git remote; a tag keeps tut@2's commit; locally only tut@3 stays
    run("dvc", "exp", "remove", "-g", "origin", "tut@0", "tut@2", cwd=project)
    assert sorted(remote_checkpoints(remote, "tut")) == [1, 3]
    run("git", "tag", "good-epoch", local[2], cwd=project)

    # a commit on the Git remote that this repository lacks: its needs are unknown, so nothing goes
    other = tmp_path / "other"
    run("git", "clone", "-q", str(remote), str(other), cwd=tmp_path)
    run("git", "commit", "-q", "--allow-empty", "-m", "teammate's work", cwd=other)
    run("git", "push", "-q", "origin", "HEAD:refs/heads/teammate", cwd=other)
    refused = run("expckpt", "gc", "--workspace", "--keep-last", "1", "--cloud", "--dry-run", cwd=project, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "Git remote 'origin' has commits this repository lacks (teammate)" in refused.stderr
    run("git", "fetch", "-q", "origin", cwd=project)

    dry = run("expckpt", "gc", "--workspace", "--keep-last", "1", "--cloud", "--dry-run", cwd=project).stdout
    assert "Would remove checkpoint tut@0" in dry and "Would remove checkpoint tut@2" in dry
    assert re.search(
        r"^Would delete .* in 1 objects from DVC remote 's3', keeping what refs on Git remote "
        r"'origin' need$",
        dry,
        re.M,
    ), dry
    assert set(models.values()) | {notes_md5} <= s3.stored()  # a dry run deletes nothing

    done = run("expckpt", "gc", "--workspace", "--keep-last", "1", "--cloud", "--force", cwd=project).stdout
    assert re.search(r"^Deleted .* in 1 objects from DVC remote 's3'\.$", done, re.M), done
    stored = s3.stored()
    assert models[0] not in stored  # no ref anywhere, no tag, no metafile: gone
    assert {models[1], models[2], models[3], notes_md5} <= stored  # Git remote ref, tag, kept ref, not expckpt's
    # the team can still pull what the Git remote offers
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(remote), str(clone), cwd=tmp_path)
    run("dvc", "exp", "pull", "origin", "tut@1", cwd=clone)
    run("dvc", "exp", "apply", "tut@1", cwd=clone)
    assert hashlib.md5((clone / "model.pt").read_bytes(), usedforsecurity=False).hexdigest() == models[1]
