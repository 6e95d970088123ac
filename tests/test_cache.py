"""The DVC 3 cache: layout, cache.type (hard link, reflink, copy), the written-objects log, verify,
remove, checkout, and DVC's own reading of its config."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import run
from expckpt.serialize.atomic import TEMP_MARK
from expckpt.store.cache import DvcCache
from expckpt.errors import StorageError


def cache_objects(cache: DvcCache) -> list[tuple[str, Path]]:
    """Every finished object in the cache, as (md5, path)."""
    base = cache.root / "files" / "md5"
    return sorted((obj.parent.name + obj.name, obj) for obj in base.glob("??/*") if TEMP_MARK not in obj.name)


def make_file(path: Path, data: bytes) -> tuple[Path, str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest(), len(data)


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if TEMP_MARK in p.name]


@pytest.fixture
def cache(tmp_path: Path) -> DvcCache:
    return DvcCache(tmp_path / "cache", tmp_path / "git" / "expckpt" / "cache-objects.log")


def test_add_copies_by_default_into_the_dvc3_layout(cache: DvcCache, tmp_path: Path) -> None:
    """DVC's default cache.type is reflink,copy: the object never shares the workspace file's inode."""
    src, md5, size = make_file(tmp_path / "ws" / "model.pt", b"weights" * 100)
    dest = cache.add(src, md5, size)
    assert dest == cache.root / "files" / "md5" / md5[:2] / md5[2:] == cache.object_path(md5)
    assert dest.read_bytes() == src.read_bytes()
    assert os.stat(dest).st_ino != os.stat(src).st_ino
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    assert stat.S_IMODE(src.stat().st_mode) == 0o644
    assert cache.has(md5) and cache.verify(md5) is None
    assert cache.written_objects() == {md5: size}
    assert cache_objects(cache) == [(md5, dest)]
    assert temp_files(cache.root, src.parent) == []


def test_add_hard_links_only_when_configured(tmp_path: Path) -> None:
    cache = DvcCache(tmp_path / "cache", tmp_path / "log", link_types=("hardlink", "copy"))
    src, md5, size = make_file(tmp_path / "ws" / "model.pt", b"weights" * 100)
    dest = cache.add(src, md5, size)
    assert os.stat(dest).st_ino == os.stat(src).st_ino  # no copy on the same filesystem
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444 and cache.verify(md5) is None


def publish_like_the_committer(cache: DvcCache, workspace: Path, data: bytes) -> tuple[Path, str]:
    """Temp file -> cache -> renamed onto the workspace file, the order Committer.publish uses."""
    tmp, md5, size = make_file(workspace / f"{TEMP_MARK}model.pt", data)
    cache.add(tmp, md5, size)
    os.replace(tmp, workspace / "model.pt")
    return workspace / "model.pt", md5


def overwrite_in_place(path: Path, data: bytes) -> None:
    """What the user's own ``torch.save(..., "model.pt")`` does as root: write into the inode."""
    with open(path, "r+b") as handle:
        handle.write(data)


@pytest.mark.parametrize("link_types", [("reflink", "copy"), ("copy",), ("symlink", "copy")])
def test_in_place_write_to_the_workspace_file_leaves_the_checkpoint_intact(
    tmp_path: Path, link_types: tuple[str, ...]
) -> None:
    """Regression (issue #14.2): the workspace file was a hard link to the read-only object, so an
    in-place write as root corrupted the checkpoint; without hardlink configured it cannot."""
    cache = DvcCache(tmp_path / "cache", tmp_path / "log", link_types=link_types)
    (tmp_path / "ws").mkdir()
    path, md5 = publish_like_the_committer(cache, tmp_path / "ws", os.urandom(50_000))
    assert os.stat(path).st_ino != os.stat(cache.object_path(md5)).st_ino
    overwrite_in_place(path, b"user's own torch.save")
    assert cache.verify(md5) is None


def test_in_place_write_through_a_configured_hard_link_changes_the_object(tmp_path: Path) -> None:
    """The hazard the user opts into with cache.type = hardlink (DVC's own caveat)."""
    cache = DvcCache(tmp_path / "cache", tmp_path / "log", link_types=("hardlink",))
    (tmp_path / "ws").mkdir()
    path, md5 = publish_like_the_committer(cache, tmp_path / "ws", os.urandom(50_000))
    assert os.stat(path).st_ino == os.stat(cache.object_path(md5)).st_ino
    overwrite_in_place(path, b"user's own torch.save")
    assert cache.verify(md5) is not None and cache.verify(md5).startswith("corrupt")


def test_unsupported_link_types_fall_back_to_a_copy(tmp_path: Path) -> None:
    """reflink is not supported on ext4/tmpfs; a hard link across filesystems is not either."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    cache = DvcCache(tmp_path / "cache", tmp_path / "log", link_types=("reflink", "hardlink"))
    with tempfile.TemporaryDirectory(dir=shm) as other:
        src, md5, size = make_file(Path(other) / "model.pt", os.urandom(10_000))
        dest = cache.add(src, md5, size)
        assert os.stat(dest).st_ino != os.stat(src).st_ino and cache.verify(md5) is None


def test_add_copies_across_filesystems(cache: DvcCache) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(cache.root.parent).st_dev:
        pytest.skip("needs a second filesystem (/dev/shm) to force a copy")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        src, md5, size = make_file(Path(other) / "model.pt", os.urandom(100_000))
        dest = cache.add(src, md5, size)
        assert os.stat(dest).st_ino != os.stat(src).st_ino
        assert dest.read_bytes() == src.read_bytes()
        assert stat.S_IMODE(dest.stat().st_mode) == 0o444
        assert stat.S_IMODE(src.stat().st_mode) == 0o644  # the source is left as it was
    assert cache.verify(md5) is None and cache.written_objects() == {md5: size}
    assert temp_files(cache.root) == []


def test_add_is_idempotent(cache: DvcCache, tmp_path: Path) -> None:
    src, md5, size = make_file(tmp_path / "model.pt", b"same bytes")
    first = cache.add(src, md5, size)
    other, _, _ = make_file(tmp_path / "copy.pt", b"same bytes")
    assert cache.add(other, md5, size) == first
    assert cache.add(src, md5, size) == first
    assert cache.written_log.read_text() == f"{md5} {size}\n"  # logged once
    assert cache_objects(cache) == [(md5, first)]


def test_log_keeps_every_object_even_after_removal(cache: DvcCache, tmp_path: Path) -> None:
    expected = {}
    for i in range(3):
        src, md5, size = make_file(tmp_path / f"m{i}.pt", f"checkpoint {i}".encode() * (i + 1))
        cache.add(src, md5, size)
        expected[md5] = size
    cache.remove(next(iter(expected)))
    assert cache.written_objects() == expected
    # Foreign or damaged lines in the log are ignored.
    with open(cache.written_log, "a") as log:
        log.write("garbage\nabc 12\n" + "f" * 32 + " notanumber\n")
    assert cache.written_objects() == expected


def test_written_objects_of_a_fresh_cache(cache: DvcCache) -> None:
    assert cache.written_objects() == {} and cache_objects(cache) == []
    assert not cache.has("0" * 32)


def test_verify_detects_corruption_and_missing_objects(cache: DvcCache, tmp_path: Path) -> None:
    src, md5, size = make_file(tmp_path / "model.pt", b"good bytes")
    obj = cache.add(src, md5, size)
    assert cache.verify(md5) is None
    os.chmod(obj, 0o644)
    obj.write_bytes(b"bad! bytes")  # same size, other content
    bad = hashlib.md5(b"bad! bytes").hexdigest()
    assert cache.verify(md5) == f"corrupt (content hashes to {bad})"
    obj.unlink()
    assert cache.verify(md5) == "missing from the cache"


def test_remove_returns_the_bytes_freed(cache: DvcCache, tmp_path: Path) -> None:
    src, md5, size = make_file(tmp_path / "model.pt", b"x" * 4321)
    cache.add(src, md5, size)
    assert cache.remove(md5) == 4321
    assert not cache.has(md5) and src.read_bytes() == b"x" * 4321  # the workspace copy stays
    assert cache.remove(md5) == 0
    assert cache.remove("0" * 32) == 0


def test_add_replaces_a_truncated_object(cache: DvcCache, tmp_path: Path) -> None:
    src, md5, size = make_file(tmp_path / "model.pt", b"full content")
    obj = cache.object_path(md5)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"full")  # left by a crash of some other writer
    assert cache.add(src, md5, size) == obj
    assert cache.verify(md5) is None


def test_checkout_writes_a_writable_copy(cache: DvcCache, tmp_path: Path) -> None:
    src, md5, size = make_file(tmp_path / "ws" / "model.pt", os.urandom(5000))
    cache.add(src, md5, size)
    dest = tmp_path / "other-ws" / "model.pt"
    dest.parent.mkdir()
    dest.write_bytes(b"old checkpoint")
    cache.checkout(md5, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert os.stat(dest).st_ino != os.stat(cache.object_path(md5)).st_ino
    assert os.access(dest, os.W_OK) and dest.stat().st_mode & stat.S_IWUSR
    assert temp_files(dest.parent) == []


def test_checkout_of_a_missing_object_leaves_the_workspace_alone(cache: DvcCache, tmp_path: Path) -> None:
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"current checkpoint")
    with pytest.raises(StorageError, match=f"could not write {dest}"):
        cache.checkout("0" * 32, dest)
    assert dest.read_bytes() == b"current checkpoint"
    assert temp_files(tmp_path) == []


def test_unwritable_cache_raises_a_storage_error(tmp_path: Path) -> None:
    """Running as root, permissions are no obstacle: the cache path is a file, so mkdir fails."""
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    cache = DvcCache(blocker, tmp_path / "git" / "cache-objects.log")
    src, md5, size = make_file(tmp_path / "ws" / "model.pt", b"checkpoint")
    with pytest.raises(StorageError, match=r"could not add .* to the DVC cache at .*; free some space") as info:
        cache.add(src, md5, size)
    message = str(info.value)
    assert "\n" not in message and str(src) in message and str(blocker) in message
    assert info.value.path == cache.object_path(md5)
    assert blocker.read_text() == "not a directory"
    assert src.read_bytes() == b"checkpoint"
    assert temp_files(tmp_path) == [] and not cache.written_log.exists()


def test_failure_after_the_temp_link_cleans_up(cache: DvcCache, tmp_path: Path) -> None:
    """The final rename fails (a directory squats the object's name): the temp link is removed."""
    src, md5, size = make_file(tmp_path / "ws" / "model.pt", b"checkpoint")
    squatter = cache.object_path(md5)
    (squatter / "inside").mkdir(parents=True)
    with pytest.raises(StorageError, match="could not add") as info:
        cache.add(src, md5, size)
    assert "\n" not in str(info.value)
    assert temp_files(cache.root, src.parent) == [] and sorted(squatter.parent.iterdir()) == [squatter]
    assert cache.written_objects() == {} and src.read_bytes() == b"checkpoint"


# -- where the cache is -------------------------------------------------------------------------


def dvc_project(path: Path) -> Path:
    path.mkdir(parents=True)
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    return path


def test_for_project_default_location(tmp_path: Path) -> None:
    dvc_project(tmp_path / "proj")
    cache = DvcCache.for_project(tmp_path / "proj", tmp_path / "proj" / ".git")
    assert cache.root == tmp_path / "proj" / ".dvc" / "cache"
    assert cache.written_log == tmp_path / "proj" / ".git" / "expckpt" / "cache-objects.log"


@pytest.mark.slow
def test_for_project_honours_cache_dir_as_real_dvc_does(tmp_path: Path) -> None:
    """The object we add is the one ``dvc checkout`` finds, with ``cache.dir`` set by ``dvc``."""
    proj = dvc_project(tmp_path / "proj")
    run("dvc", "cache", "dir", "../shared-cache", cwd=proj)
    cache = DvcCache.for_project(proj, proj / ".git")
    assert cache.root == (tmp_path / "shared-cache").resolve()

    src, md5, size = make_file(proj / "model.pt", os.urandom(3000))
    data = src.read_bytes()
    cache.add(src, md5, size)
    (proj / "model.pt.dvc").write_text(f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: model.pt\n")
    src.unlink()
    run("dvc", "checkout", "model.pt.dvc", cwd=proj)
    assert (proj / "model.pt").read_bytes() == data
    assert not (proj / ".dvc" / "cache" / "files").exists()


def test_config_local_overrides_config(tmp_path: Path) -> None:
    proj = dvc_project(tmp_path / "proj")
    # The format dvc writes: configobj, indented keys, quoted section names.
    (proj / ".dvc" / "config").write_text(
        "[core]\n    remote = r\n['remote \"r\"']\n    url = /tmp/x\n[cache]\n    dir = ../../team-cache\n"
    )
    assert DvcCache.for_project(proj, proj / ".git").root == (tmp_path / "team-cache").resolve()
    (proj / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {tmp_path / 'mine'}\n")
    assert DvcCache.for_project(proj, proj / ".git").root == tmp_path / "mine"


@pytest.mark.parametrize(
    ("level", "value", "expected"),
    [
        ("--project", "hardlink", ("hardlink",)),
        ("--local", "copy", ("copy",)),
        ("--global", "hardlink,copy", ("hardlink", "copy")),
        ("--system", "symlink,copy", ("symlink", "copy")),
    ],
)
def test_cache_type_is_read_through_dvc_at_every_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str, value: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "system"))
    proj = dvc_project(tmp_path / "proj")
    assert DvcCache.for_project(proj, proj / ".git").link_types == ("reflink", "copy")  # DVC's default
    run("dvc", "config", level, "cache.type", value, cwd=proj)
    cache = DvcCache.for_project(proj, proj / ".git")
    assert cache.link_types == expected
    src, md5, size = make_file(proj / "model.pt", os.urandom(2000))
    dest = cache.add(src, md5, size)
    assert (os.stat(dest).st_ino == os.stat(src).st_ino) == (expected[0] == "hardlink")


def test_cache_shared_group_makes_group_writable_directories(tmp_path: Path) -> None:
    proj = dvc_project(tmp_path / "proj")
    run("dvc", "config", "cache.shared", "group", cwd=proj)
    cache = DvcCache.for_project(proj, proj / ".git")
    src, md5, size = make_file(proj / "model.pt", b"shared checkpoint")
    dest = cache.add(src, md5, size)
    assert stat.S_IMODE(dest.parent.stat().st_mode) == 0o2775
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444


@pytest.mark.slow
def test_for_project_does_not_import_dvc_until_the_cache_is_used(tmp_path: Path) -> None:
    """``expckpt show`` builds a DvcCache and must stay fast: DVC is imported on first use only."""
    proj = dvc_project(tmp_path / "proj")
    code = (
        "import sys; from pathlib import Path; from expckpt.store.cache import DvcCache\n"
        f"c = DvcCache.for_project(Path({str(proj)!r}), Path({str(proj / '.git')!r}))\n"
        "c.written_objects(); assert 'dvc' not in sys.modules, 'imported too early'\n"
        "c.root; assert 'dvc' in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
