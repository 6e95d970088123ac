"""A pulled ref is untrusted input, and a lost checkpoint is not a fresh start (issue #9, items
4, 5, 7-10).

Hostile refs are made the way an attacker would make them: real Git objects written with
``git hash-object`` / ``git mktree`` / ``git commit-tree`` / ``git update-ref`` (and dulwich
``Tree`` objects for crafted dvclive trees: ``..`` entries, symlinks, submodules, non-UTF-8
names), then read through the real ``expckpt``, ``train.py`` and ``dvc`` processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dulwich.objects import Blob, Tree
from dulwich.repo import Repo

from expckpt.errors import CorruptCheckpointError, MissingCheckpointError, UnsafeCheckpointError
from expckpt.store.cache import DvcCache
from expckpt.store.gitstore import GitStore
from expckpt.store.records import BadRecordError, format_message, parse_message
from expckpt.store.refs import CheckpointRef
from expckpt.store.livefiles import restore_live_files
from expckpt.text import terminal_safe
from faultkit import (
    EPOCHS,
    cache_object,
    checkpoint_refs,
    clone,
    dvc_exp_run,
    first_epoch,
    head,
    locked_model,
    run,
    set_param,
    snapshot,
    train,
    trained,
)

# Any C0 control but LF, DEL, or C1 (CSI is U+009B) on a terminal is an injection.
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
WARNING = re.compile(r"^expckpt: warning: skipping (\S+): .+$", re.M)


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A project with checkpoints straight@0..2 (a copy of the session's reference run)."""
    return trained(tmp_path_factory, tmp_path / "p")


def meta_of(project: Path, commit: str) -> dict:
    message = run("git", "log", "-1", "--format=%B", commit, cwd=project).stdout
    line = next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))
    return json.loads(line.removeprefix("expckpt-meta: "))


def plant(project: Path, name: str, meta_json: str, *, tree: str | None = None) -> str:
    """A checkpoint ref ``name`` on HEAD whose commit carries ``meta_json`` verbatim; its sha."""
    straight = checkpoint_refs(project)[f"straight@{EPOCHS - 1}"]
    tree = tree or run("git", "rev-parse", f"{straight.commit}^{{tree}}", cwd=project).stdout.strip()
    message = project.parent / f"message-{name}"
    message.write_text(f"dvc: commit experiment {'0' * 32}\n\nCrafted.\n\nexpckpt-meta: {meta_json}\n")
    base = head(project)
    commit = run("git", "commit-tree", tree, "-p", base, "-F", str(message), cwd=project).stdout.strip()
    run("git", "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/{name}", commit, cwd=project)
    return commit


def mktree(project: Path, entries: str) -> str:
    """``git mktree`` of ``entries`` (its stdin format); the tree's sha."""
    proc = subprocess.run(["git", "mktree"], cwd=project, input=entries, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def assert_terminal_safe(*texts: str) -> None:
    for text in texts:
        assert not RAW_CONTROL.search(text), f"raw control character in output: {text!r}"
        assert "\u202e" not in text


# -- item 8, 9, 10: hostile expckpt-meta through every read command --------------------------------
def hostile_refs(project: Path, secret: Path) -> dict[str, str]:
    """Bad refs (name -> commit), each breaking one rule, built from a real record."""
    good = meta_of(project, checkpoint_refs(project)[f"straight@{EPOCHS - 1}"].commit)

    def variant(**changes: object) -> str:
        return json.dumps({**good, **changes}, sort_keys=True)

    out = dict(good["outs"]["model.pt"])
    crafted = {
        # 1e400 is a JSON number that overflows to inf: int() of it crashed every command.
        "huge@5": variant(outs={"model.pt": {**out, "size": 7}})
        .replace('"size":7', '"size":1e400')
        .replace('"size": 7', '"size": 1e400'),
        "nantime@5": variant(time=0).replace('"time": 0', '"time": NaN'),
        # The md5 becomes an absolute path under the cache root: verify hashed this file.
        "outside@5": variant(outs={"model.pt": {"md5": ".." + str(secret), "size": 1}}),
        "ansi@5": variant(metrics={"acc\x1b[2J\x1b]0;pwned\x07\nforged@9  9  0000000": 1.0}),
        "parent@5": variant(parent="\x1b[31m" + "a" * 40),
        "badstep@5": variant(step="5; rm -rf /"),
        "negative@5": variant(outs={"model.pt": {**out, "size": -1}}),
    }
    return {name: plant(project, name, meta) for name, meta in crafted.items()}


@pytest.mark.slow
def test_hostile_records_are_skipped_with_one_warning_by_every_command(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a cache object\n")
    bad = hostile_refs(project, secret)
    # A branch name may hold C1 characters (CSI is U+009B): Git allows any byte >= 0x80. It
    # sorts before main, so `expckpt show` labels the baseline with it.
    run("git", "branch", "a\u009b2J\u202e", cwd=project)
    commands = [
        ("show",),
        ("show", "-A"),
        ("show", "--json"),
        ("list",),
        ("list", "--json"),
        ("verify", "--all"),
        ("gc", "-w", "--dry-run"),
        ("report", "straight"),
    ]
    for args in commands:
        result = run("expckpt", *args, cwd=project, check=False)

        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
        warned = WARNING.findall(result.stderr)
        assert sorted(warned) == sorted(f"refs/exps/{head(project)[:2]}/{head(project)[2:]}/{n}" for n in bad), (
            args,
            result.stderr,
        )
        assert len(result.stderr.strip().splitlines()) == len(bad), (args, result.stderr)
        assert_terminal_safe(result.stdout, result.stderr)
        assert not re.search(r"^\s*forged", result.stdout, re.M), "a newline in a metric name forged a row"
        assert hashlib.md5(secret.read_bytes()).hexdigest() not in result.stdout + result.stderr
        if args[0] in ("show", "list"):
            for step in range(EPOCHS):
                assert f"straight@{step}" in result.stdout, (args, step)
        elif args[0] == "verify":
            assert result.stdout.strip() == f"{EPOCHS} of {EPOCHS} checkpoints verified"
    verified = run("expckpt", "verify", "--all", cwd=project, check=False)
    assert verified.stdout.strip() == f"{EPOCHS} of {EPOCHS} checkpoints verified"
    assert "a\\x9b2J\\u202e" in run("expckpt", "show", cwd=project).stdout, "the branch is shown, escaped"


@pytest.mark.slow
def test_verify_never_hashes_a_file_outside_the_cache(project: Path, tmp_path: Path) -> None:
    """An md5 of ``..`` + an absolute path made ``verify`` hash that file (item 10)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("private\n")
    good = meta_of(project, checkpoint_refs(project)[f"straight@{EPOCHS - 1}"].commit)
    plant(project, "outside@5", json.dumps({**good, "outs": {"model.pt": {"md5": ".." + str(secret), "size": 8}}}))

    result = run("expckpt", "verify", "--all", cwd=project, check=False)

    assert hashlib.md5(secret.read_bytes()).hexdigest() not in result.stdout + result.stderr
    assert result.returncode == 0 and WARNING.findall(result.stderr) == [
        f"refs/exps/{head(project)[:2]}/{head(project)[2:]}/outside@5"
    ], result.stderr
    assert f"md5 '..{str(secret)[:20]}" in result.stderr and "is not 32 lowercase hex digits" in result.stderr


@pytest.mark.slow
def test_training_resumes_beside_hostile_refs(project: Path, tmp_path: Path) -> None:
    """`dvc exp run` used to fail to resume when any checkpoint ref had a bad record."""
    bad = hostile_refs(project, tmp_path / "secret.txt")
    set_param(project, "epochs", EPOCHS + 1)

    result = train(project, "straight", check=False)

    assert result.returncode == 0, result.stderr
    assert f"Resuming from model.pt (straight@{EPOCHS - 1}): {EPOCHS} steps done" in result.stdout
    assert first_epoch(result.stdout) == EPOCHS
    assert sorted(WARNING.findall(result.stderr)) == sorted(
        f"refs/exps/{head(project)[:2]}/{head(project)[2:]}/{n}" for n in bad
    ), result.stderr
    assert_terminal_safe(result.stdout, result.stderr)


@pytest.mark.slow
def test_bytes_in_a_message_cannot_forge_or_hide_other_refs(project: Path) -> None:
    """Ref listing once split `for-each-ref` output on a separator that a message can contain."""
    good = meta_of(project, checkpoint_refs(project)[f"straight@{EPOCHS - 1}"].commit)
    ghost = json.dumps({**good, "exp": "ghost", "step": 1})
    forged = f"\x1f\x1erefs/exps/00/{'0' * 38}/ghost@1\x1f\x1e{'1' * 40}\x1f\x1e0\x1f\x1eexpckpt-meta: {ghost}"
    plant(project, "sep@5", json.dumps({**good, "exp": "sep", "step": 5}) + "\n\n" + forged)

    result = run("expckpt", "list", "-A", "--json", cwd=project, check=False)

    assert result.returncode == 0, result.stderr
    assert sorted(row["name"] for row in json.loads(result.stdout)) == sorted(
        [*(f"straight@{s}" for s in range(EPOCHS)), "sep@5"]
    )


@pytest.mark.slow
def test_a_metric_name_from_a_checkpoint_tree_is_escaped_in_report(project: Path, tmp_path: Path) -> None:
    """``expckpt report`` reads metric names from file names in the newest checkpoint's tree."""
    name = "loss\x1b[2J\x1b[1;1Hforged"
    tsv = tmp_path / "metric.tsv"
    tsv.write_text(f"timestamp\tstep\t{name}\n0\t0\tnan\n")
    blob = run("git", "hash-object", "-w", str(tsv), cwd=project).stdout.strip()
    metrics = mktree(project, f"100644 blob {blob}\t{name}.tsv\n")
    plots = mktree(project, f"040000 tree {metrics}\tmetrics\n")
    live = mktree(project, f"040000 tree {plots}\tplots\n")
    root = mktree(project, f"040000 tree {live}\tdvclive\n")
    good = meta_of(project, checkpoint_refs(project)["straight@0"].commit)
    plant(project, "inj@0", json.dumps({**good, "exp": "inj", "step": 0, "time": good["time"] + 1}), tree=root)

    result = run("expckpt", "report", "inj", cwd=project, check=False)

    assert result.returncode == 0, result.stderr
    assert "loss\\x1b[2J\\x1b[1;1Hforged" in result.stdout
    assert_terminal_safe(result.stdout, result.stderr)
    as_json = run("expckpt", "report", "inj", "--json", cwd=project, check=False)
    assert as_json.returncode == 0, as_json.stderr  # a NaN once crashed it: tuple keys are not JSON
    assert json.loads(as_json.stdout)["nonfinite"] == [{"step": 0, "metric": name, "kind": "NaN"}]
    assert_terminal_safe(as_json.stdout)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"time": 1e400}, "bare Infinity is not JSON"),
        ({"time": -1}, "time -1"),
        ({"time": 10**400}, "time 1000"),  # an int too big for a float
        ({"metrics": {"acc": 10**400}}, "metric 'acc' is 1000"),
        ({"metrics": {"acc": True}}, "metric 'acc' is True"),
        ({"time": True}, "time True"),
        ({"parent": "../../../etc"}, "parent"),
        ({"resumed": "yes"}, "resumed"),
        ({"step": 1.5}, "step 1.5"),
        ({"v": 2}, "format version 2"),
        ({"outs": {"model.pt": {"md5": "D41D8CD98F00B204E9800998ECF8427E", "size": 1}}}, "md5"),
        ({"outs": {"model.pt": {"md5": "d41d8cd98f00b204e9800998ecf8427e", "size": 1.0}}}, "size 1.0"),
        ({"outs": {"model.pt": {"md5": "d41d8cd98f00b204e9800998ecf8427e", "size": True}}}, "size True"),
        ({"outs": {"../x": {"md5": "d41d8cd98f00b204e9800998ecf8427e", "size": 1}}}, "output path '../x'"),
        ({"outs": {"/etc/x": {"md5": "d41d8cd98f00b204e9800998ecf8427e", "size": 1}}}, "output path '/etc/x'"),
        ({"metrics": {"acc": "1e400"}}, "metric 'acc'"),
        ({"metrics": {"acc": None}}, "metric 'acc'"),
        ({"metrics": {"acc": 1e400}}, "bare Infinity is not JSON"),
        ({"metrics": {"a\u202eb": 1.0}}, "metric"),
        ({"metrics": {"": 1.0}}, "metric ''"),
        ({"metrics": {"x" * 256: 1.0}}, "metric"),
        ({"metrics": []}, "metrics []"),
        ({"outs": None}, "outs None"),
    ],
)
def test_every_field_is_validated(change: dict, why: str) -> None:
    ref = CheckpointRef("0" * 40, "tut", 3)
    message = format_message(ref, parent=None, outs={}, metrics={"acc": 0.5}, time=1.7e9)
    meta = json.loads(message.splitlines()[-1].removeprefix("expckpt-meta: "))
    bad = message.splitlines()[-1].split(": ", 1)[0] + ": " + json.dumps({**meta, **change})

    with pytest.raises(BadRecordError, match=re.escape(why)):
        parse_message(ref, "c" * 40, bad)


def test_non_finite_metric_markers_and_the_biggest_sizes_are_still_valid() -> None:
    ref = CheckpointRef("0" * 40, "tut", 3)
    line = json.dumps(
        {
            "v": 1,
            "outs": {"a/b.pt": {"md5": "f" * 32, "size": 2**63 - 1}},
            "time": 0,
            "metrics": {"train/loss": "nan", "up": "inf", "down": "-inf", "n": 3},
        }
    )
    record = parse_message(ref, "c" * 40, f"x\n\nexpckpt-meta: {line}\n")
    assert record is not None and record.size == 2**63 - 1 and record.metrics["n"] == 3.0


def test_object_path_refuses_anything_but_an_md5(tmp_path: Path) -> None:
    cache = DvcCache(tmp_path / "cache", tmp_path / "log")
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    assert cache.object_path(md5) == tmp_path / "cache" / "files" / "md5" / "d4" / md5[2:]
    for bad in ["..//etc/passwd", "../" * 10 + "xx", md5.upper(), md5 + "\n", md5[:31], md5 + "0", "", "g" * 32]:
        with pytest.raises(CorruptCheckpointError, match="is not a DVC md5"):
            cache.object_path(bad)
    with pytest.raises(CorruptCheckpointError, match=r"\\x1b"):
        cache.object_path("\x1b[2J")


def test_terminal_safe_escapes_every_control_character() -> None:
    assert terminal_safe("acc/val-1.0 é ✓") == "acc/val-1.0 é ✓"
    assert (
        terminal_safe("a\x1b[31m\r\n\t\x7f\x9b\u2028\u202e\x00") == "a\\x1b[31m\\r\\n\\t\\x7f\\x9b\\u2028\\u202e\\x00"
    )
    assert terminal_safe("\udcff") == "\\udcff"  # a non-UTF-8 byte decoded with surrogateescape


# -- item 7: a checkpoint tree must not write or delete outside <workspace>/dvclive ---------------
def _tree(repo: Repo, entries: list[tuple[bytes, int, bytes]]) -> bytes:
    tree = Tree()
    for name, mode, sha in entries:
        tree.add(name, mode, sha)
    repo.object_store.add_object(tree)
    return tree.id


def _blob(repo: Repo, data: bytes) -> bytes:
    blob = Blob.from_string(data)
    repo.object_store.add_object(blob)
    return blob.id


def traversal_commit(project: Path, base_commit: str, dvclive_entries: list[tuple[bytes, int, bytes]]) -> str:
    """A copy of ``base_commit`` whose dvclive tree also holds ``dvclive_entries``."""
    repo = Repo(str(project))
    root = repo[repo[base_commit.encode()].tree]
    _, live_sha = root[b"dvclive"]
    live = repo[live_sha]
    entries = [(e.path, e.mode, e.sha) for e in live.iteritems()] + dvclive_entries
    new_root = [(e.path, e.mode, e.sha) for e in root.iteritems() if e.path != b"dvclive"]
    new_root.append((b"dvclive", 0o040000, _tree(repo, entries)))
    return _tree(repo, new_root).decode()


@pytest.mark.slow
def test_resuming_from_a_pulled_ref_with_dotdot_entries_writes_nothing_outside(project: Path, tmp_path: Path) -> None:
    """``dvclive/../../pwned.txt`` would land beside the repository; the run refuses, one line."""
    repo = Repo(str(project))
    pwned = _blob(repo, b"pwned\n")
    up2 = _tree(repo, [(b"pwned.txt", 0o100644, pwned)])
    up1 = _tree(repo, [(b"..", 0o040000, up2)])
    straight = checkpoint_refs(project)[f"straight@{EPOCHS - 1}"]
    tree = traversal_commit(project, straight.commit, [(b"..", 0o040000, up1)])
    meta = meta_of(project, straight.commit)
    commit = plant(project, f"pulled@{EPOCHS - 1}", json.dumps({**meta, "exp": "pulled"}), tree=tree)
    run("git", "update-ref", "refs/exps/exec/EXEC_APPLY", commit, cwd=project)  # as `dvc exp apply pulled@2`
    set_param(project, "epochs", EPOCHS + 1)
    live_before = {p: p.read_bytes() for p in (project / "dvclive").rglob("*") if p.is_file()}
    refs_before = checkpoint_refs(project)

    result = train(project, "more", check=False)

    assert not (tmp_path / "pwned.txt").exists() and not (project.parent / "pwned.txt").exists()
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: refused to restore the dvclive files"), lines
    assert "not a plain relative path" in lines[0] and commit[:7] in lines[0]
    assert first_epoch(result.stdout) is None
    assert {p: p.read_bytes() for p in (project / "dvclive").rglob("*") if p.is_file()} == live_before
    assert checkpoint_refs(project) == refs_before


@pytest.mark.slow
def test_a_symlinked_dvclive_is_neither_emptied_nor_written_through(project: Path, tmp_path: Path) -> None:
    """A symlink already in the workspace (e.g. from `dvc exp apply` of a hostile commit) must
    not make resuming delete or write files it points to."""
    victim = tmp_path / "victim"
    shutil.copytree(project / "dvclive", victim)
    (victim / "keep.txt").write_text("precious\n")
    shutil.rmtree(project / "dvclive")
    (project / "dvclive").symlink_to(victim)
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    set_param(project, "epochs", EPOCHS + 1)

    result = train(project, "straight", check=False)

    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a symlink" in lines[0] and "nothing was written" in lines[0], lines


@pytest.fixture
def store_with_live(tmp_path: Path) -> tuple[Path, GitStore, Repo]:
    """A tiny repository and a workspace whose dvclive holds one file."""
    root = tmp_path / "ws"
    root.mkdir()
    run("git", "init", "-q", cwd=root)
    (root / "dvclive").mkdir()
    (root / "dvclive" / "metrics.json").write_text("{}")
    return root, GitStore.open(root), Repo(str(root))


@pytest.mark.parametrize(
    ("name", "mode", "kind", "message"),
    [
        (b"..", 0o040000, "tree", "not a plain relative path"),
        (b"/abs", 0o100644, "blob", "not a plain relative path"),
        (b"a/../../x", 0o100644, "blob", "not a plain relative path"),
        (b".", 0o040000, "tree", "not a plain relative path"),
        (b"esc\x1b[2J", 0o100644, "blob", "not a plain relative path"),
        (b"\xff\xfe", 0o100644, "blob", "not a plain relative path"),
        (b"link", 0o120000, "blob", "is a symlink"),
        (b"sub", 0o160000, "commit", "is a submodule"),
        (b"fake-dir", 0o040000, "blob", "is a broken directory"),
        (b"exec-as-tree", 0o100755, "tree", "not a file"),
    ],
)
def test_unsafe_tree_entries_are_refused_before_anything_changes(
    store_with_live: tuple[Path, GitStore, Repo], tmp_path: Path, name: bytes, mode: int, kind: str, message: str
) -> None:
    root, store, repo = store_with_live
    payload = _blob(repo, b"x")
    sha = {"blob": payload, "tree": _tree(repo, [(b"x", 0o100644, payload)]), "commit": b"1" * 40}[kind]
    live = _tree(repo, [(b"acc.tsv", 0o100644, _blob(repo, b"step\tacc\n")), (name, mode, sha)])
    tree = _tree(repo, [(b"dvclive", 0o040000, live)])
    commit = run("git", "commit-tree", tree.decode(), "-m", "crafted", cwd=root).stdout.strip()

    with pytest.raises(UnsafeCheckpointError, match=re.escape(message)):
        restore_live_files(store, commit, root, "dvclive")

    assert sorted(p.name for p in (root / "dvclive").iterdir()) == ["metrics.json"], "nothing removed or written"
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


def test_a_safe_tree_is_restored_exactly(store_with_live: tuple[Path, GitStore, Repo], tmp_path: Path) -> None:
    root, store, repo = store_with_live
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (root / "dvclive" / "plots").mkdir()
    (root / "dvclive" / "plots" / "acc.tsv").symlink_to(outside)  # a file symlink is replaced, not followed
    metrics = _tree(repo, [(b"acc.tsv", 0o100644, _blob(repo, b"step\tacc\n0\t1\n"))])
    live = _tree(repo, [(b"plots", 0o040000, metrics), (b"run.sh", 0o100755, _blob(repo, b"#!\n"))])
    commit = run(
        "git", "commit-tree", _tree(repo, [(b"dvclive", 0o040000, live)]).decode(), "-m", "ok", cwd=root
    ).stdout.strip()

    restore_live_files(store, commit, root, "dvclive")

    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "dvclive").rglob("*") if p.is_file()}
    assert files == {"dvclive/plots/acc.tsv": b"step\tacc\n0\t1\n", "dvclive/run.sh": b"#!\n"}
    assert not (root / "dvclive" / "plots" / "acc.tsv").is_symlink()
    assert outside.read_text() == "keep"


def test_a_file_where_the_tree_has_a_directory_is_replaced(store_with_live: tuple[Path, GitStore, Repo]) -> None:
    root, store, repo = store_with_live
    (root / "dvclive" / "plots").write_text("a file, inside dvclive")
    metrics = _tree(repo, [(b"acc.tsv", 0o100644, _blob(repo, b"1\n"))])
    live = _tree(repo, [(b"plots", 0o040000, metrics)])
    commit = run(
        "git", "commit-tree", _tree(repo, [(b"dvclive", 0o040000, live)]).decode(), "-m", "ok", cwd=root
    ).stdout.strip()

    restore_live_files(store, commit, root, "dvclive")

    assert (root / "dvclive" / "plots" / "acc.tsv").read_bytes() == b"1\n"


# -- item 4: `dvc gc -w` takes checkpoint objects; verify names the cause and the remedies ---------
@pytest.mark.slow
def test_plain_dvc_gc_loses_checkpoints_and_verify_names_the_remedy(project: Path) -> None:
    objects = {
        name: cache_object(project, locked_model(project, ref.commit)[0])
        for name, ref in checkpoint_refs(project).items()
    }

    run("dvc", "gc", "-w", "--all-experiments", "-f", cwd=project)
    assert all(obj.is_file() for obj in objects.values()), "the safe form keeps every checkpoint"
    assert run("expckpt", "verify", "--all", cwd=project, check=False).returncode == 0

    run("dvc", "gc", "-w", "-f", cwd=project)
    lost = sorted(name for name, obj in objects.items() if not obj.is_file())
    assert lost == [f"straight@{s}" for s in range(EPOCHS - 1)], "DVC keeps only the workspace's"

    result = run("expckpt", "verify", "--all", cwd=project, check=False)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == [f"expckpt: {name}" for name in lost]
    assert all("missing from the cache" in line for line in lines[:-1])
    assert lines[-1].startswith(f"expckpt: {len(lost)} checkpoints have no cache object")
    assert "`dvc gc -w --all-experiments`" in lines[-1] and "`dvc exp pull <remote> straight@0`" in lines[-1]


# -- item 5: a checkpoint that can no longer be found stops the run ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("named_by", ["note", "dvc.lock"])
def test_a_lost_checkpoint_stops_training_instead_of_starting_over(project: Path, named_by: str) -> None:
    last = f"straight@{EPOCHS - 1}"
    md5, _ = locked_model(project, checkpoint_refs(project)[last].commit)
    (project / "model.pt").unlink()
    cache_object(project, md5).unlink()
    if named_by == "dvc.lock":
        (project / ".dvc" / "tmp" / "expckpt" / "model.pt.json").unlink()
        assert md5 in (project / "dvc.lock").read_text()
    set_param(project, "epochs", EPOCHS + 1)
    before = snapshot(project)

    result = train(project, "straight", check=False)

    assert result.returncode == 1, result.stdout
    assert first_epoch(result.stdout) is None, "started over from epoch 0"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: error: model.pt should be checkpoint {last} ("), lines
    for remedy in (f"`dvc exp pull <remote> {last}`", "`dvc exp apply", "`expckpt reset`", md5):
        assert remedy in lines[0]
    assert snapshot(project) == before


@pytest.mark.slow
def test_after_expckpt_reset_a_missing_file_is_a_fresh_start(project: Path) -> None:
    md5, _ = locked_model(project, checkpoint_refs(project)[f"straight@{EPOCHS - 1}"].commit)
    run("expckpt", "reset", cwd=project)
    cache_object(project, md5).unlink()
    set_param(project, "epochs", 1)

    result = train(project, "fresh", check=False)

    assert result.returncode == 0, result.stderr
    assert first_epoch(result.stdout) == 0


def test_the_library_error_names_the_checkpoint(project: Path) -> None:
    from expckpt.train.resume import refuse_lost_checkpoint

    md5, _ = locked_model(project, checkpoint_refs(project)["straight@2"].commit)
    (project / "model.pt").unlink()
    cache_object(project, md5).unlink()
    store = GitStore.open(project)
    cache = DvcCache.for_project(project, store.git_dir)
    with pytest.raises(MissingCheckpointError) as info:
        refuse_lost_checkpoint(project / "model.pt", "model.pt", project, store, cache)
    assert info.value.checkpoint == "straight@2"
    assert info.value.path == project / "model.pt"


@pytest.mark.slow
def test_dvc_gc_then_apply_then_exp_run_stops_naming_the_lost_checkpoint(project: Path) -> None:
    """Issue #9 item 4 as a user meets it, through the real `dvc`: a plain `dvc gc -w`, then
    `dvc exp apply straight@1` (whose object is gone), then `dvc exp run`."""
    run("dvc", "gc", "-w", "-f", cwd=project)
    applied = run("dvc", "exp", "apply", "straight@1", cwd=project, check=False)
    assert not (project / "model.pt").exists(), applied.stdout + applied.stderr
    refs_before = checkpoint_refs(project)

    result = dvc_exp_run(project, check=False)

    assert result.returncode != 0
    assert first_epoch(result.stdout) is None, "started over from epoch 0"
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: model.pt should be checkpoint straight@1 ("), (
        result.stderr
    )
    assert "`dvc exp pull <remote> straight@1`" in errors[0] and "`expckpt reset`" in errors[0]
    assert checkpoint_refs(project) == refs_before


@pytest.mark.slow
def test_dvc_exp_pull_brings_a_lost_checkpoint_back(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The remedy `expckpt verify` names works: a pushed checkpoint lost to a plain `dvc gc -w`
    comes back with `dvc exp pull <remote> <name>` (the DVC remote committed before training)."""
    project = clone(tmp_path_factory, tmp_path / "p")
    run("git", "init", "-q", "--bare", str(tmp_path / "remote.git"), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(tmp_path / "remote.git"), cwd=project)
    run("dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store"), cwd=project)
    run("git", "commit", "-qm", "DVC remote", "--", ".dvc/config", cwd=project)
    train(project, "straight")
    run("dvc", "exp", "push", "origin", "straight@0", cwd=project)
    run("dvc", "gc", "-w", "-f", cwd=project)
    lost = run("expckpt", "verify", "--all", cwd=project, check=False)
    assert lost.returncode == 1 and "`dvc exp pull <remote> straight@0`" in lost.stderr

    run("dvc", "exp", "pull", "origin", "straight@0", cwd=project)

    result = run("expckpt", "verify", "straight", cwd=project, check=False)
    assert "straight@0" not in result.stderr, result.stderr
    assert "straight@1" in result.stderr, "not pushed, so still lost"
