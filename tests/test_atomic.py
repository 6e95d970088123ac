"""Atomic writes and MD5 hashing as DVC does it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from expckpt.serialize.atomic import TEMP_MARK, atomic_write_bytes, atomic_writer, md5_file
from expckpt.errors import StorageError


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TEMP_MARK in p.name)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, the way a full disk fails them with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_atomic_writer_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "dvc.lock"
    target.write_bytes(b"old")
    with atomic_writer(target) as (handle, tmp):
        assert tmp.parent == tmp_path and TEMP_MARK in tmp.name and tmp.name.startswith(TEMP_MARK)
        handle.write(b"new ")
        handle.write(b"content")
        assert target.read_bytes() == b"old"  # nothing visible before the rename
    assert target.read_bytes() == b"new content"
    assert not tmp.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_bytes(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "session.json"
    atomic_write_bytes(target, b"{}", durable=durable)
    assert target.read_bytes() == b"{}"
    atomic_write_bytes(target, b'{"a": 1}', durable=durable)
    assert target.read_bytes() == b'{"a": 1}' and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_body_error_leaves_target_untouched_and_no_temp_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(type(error)):
        with atomic_writer(target) as (handle, tmp):
            handle.write(b"half a checkpoint")
            raise error
    assert target.read_bytes() == b"previous checkpoint"
    assert not tmp.exists() and leftovers(tmp_path) == []


def test_body_error_when_there_was_no_target(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_writer(tmp_path / "new.bin") as (handle, _):
            handle.write(b"x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_os_error_in_the_body_becomes_a_storage_error(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    with pytest.raises(StorageError, match=f"could not write {target}: Permission denied") as info:
        with atomic_writer(target):
            raise PermissionError(13, "Permission denied")
    assert info.value.path == target and target.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_a_write_that_fails_mid_way(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous checkpoint")
    with file_size_limit(64 * 1024), pytest.raises(StorageError, match=f"writing {target}") as info:
        with atomic_writer(target) as (handle, _):
            for _ in range(64):
                handle.write(b"\0" * 4096)
                handle.flush()
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"previous checkpoint" and leftovers(tmp_path) == []


def test_no_space_message_says_what_to_do(tmp_path: Path) -> None:
    import errno

    target = tmp_path / "model.pt"
    with pytest.raises(StorageError, match=r"no space left on the device while writing .*model\.pt; free some space"):
        with atomic_writer(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "file"
    with pytest.raises(StorageError, match=f"could not write {target}"):
        atomic_write_bytes(target, b"x")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 100, 1 << 16])
def test_md5_file_equals_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = (hashlib.md5(data).hexdigest(), size)
    assert md5_file(path) == expected
    assert md5_file(path, chunk=7) == expected  # many chunks, a short last one


def test_md5_file_of_the_empty_file_is_dvcs_empty_hash(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert md5_file(tmp_path / "empty") == ("d41d8cd98f00b204e9800998ecf8427e", 0)
