"""Checkpoint files: hashed temp writes, and loading that never runs code and names its failures."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from expckpt.serialize.atomic import TEMP_MARK, md5_file
from expckpt.serialize.checkpoint_file import check_architecture, load_checkpoint, write_temp
from expckpt.serialize.loading import load_model
from expckpt.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CorruptCheckpointError,
    StorageError,
    UnsafeCheckpointError,
)


def model(hidden: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


def save(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if TEMP_MARK in p.name]


# -- write_temp ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_write_temp_hash_is_the_published_files_md5(tmp_path: Path, durable: bool) -> None:
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"previous checkpoint")
    payload = {"model": model().state_dict(), "step": 4, "big": torch.randn(50_000)}
    written = write_temp(payload, dest, durable=durable)
    assert written.dest == dest and written.tmp.parent == tmp_path and TEMP_MARK in written.tmp.name
    assert dest.read_bytes() == b"previous checkpoint"  # not published yet
    assert md5_file(written.tmp) == (written.md5, written.size)
    written.publish()
    assert md5_file(dest) == (written.md5, written.size)
    assert not written.tmp.exists() and leftovers(tmp_path) == []
    loaded = load_checkpoint(dest)
    assert loaded["step"] == 4 and torch.equal(loaded["big"], payload["big"])


def streamed_payload() -> dict:
    """Big storages (streamed as views of the tensors), small ones, views, sharing, plain values."""
    torch.manual_seed(3)
    big = torch.randn(600_000)
    return {
        "model": model().state_dict(),
        "big": big,
        "again": big,
        "slice": big[1000:2000],
        "ints": torch.arange(70_000, dtype=torch.int64),
        "half": torch.randn(40_000).half(),
        "empty": torch.zeros(0),
        "step": 9,
        "name": "run",
    }


@pytest.mark.parametrize("durable", [True, False])
def test_streamed_file_is_exactly_what_torch_save_writes(tmp_path: Path, durable: bool) -> None:
    import hashlib
    import io

    payload = streamed_payload()
    written = write_temp(payload, tmp_path / "model.pt", durable=durable)
    expected = io.BytesIO()
    torch.save(payload, expected)  # into a file object, as write_temp streams
    data = written.tmp.read_bytes()
    assert data == expected.getvalue()
    assert written.md5 == hashlib.md5(data).hexdigest() and written.size == len(data)
    assert md5_file(written.tmp) == (written.md5, written.size)  # DVC's hash of the file
    loaded = torch.load(written.tmp, weights_only=True)
    assert loaded.keys() == payload.keys()
    for key in ("big", "slice", "ints", "half", "empty"):
        assert loaded[key].dtype == payload[key].dtype and torch.equal(loaded[key], payload[key]), key
    assert loaded["model"].keys() == payload["model"].keys()
    assert all(torch.equal(loaded["model"][k], v) for k, v in payload["model"].items())
    assert (loaded["step"], loaded["name"]) == (9, "run")
    # Shared storage stays shared, as torch.save writes it: one object for both names, and the
    # slice a view into the same storage at its offset (the file holds the 600k floats once).
    assert loaded["again"] is loaded["big"]
    assert loaded["slice"].untyped_storage().data_ptr() == loaded["big"].untyped_storage().data_ptr()
    assert loaded["slice"].storage_offset() == 1000


def test_streaming_hashes_each_byte_once_in_order(tmp_path: Path) -> None:
    """Held chunks (views of the state's storages) and copied ones (headers) interleave correctly."""
    import hashlib

    from expckpt.serialize.streaming import HashingStream

    chunks = [torch.randn(50_000), torch.arange(30_000, dtype=torch.int32), torch.randn(10)]
    spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in chunks[:2]]
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    stream = HashingStream(fd, spans)
    for i, tensor in enumerate(chunks):
        stream.write(b"header %d" % i)
        stream.write(memoryview(tensor.numpy()).cast("B"))
    md5, size = stream.finish(durable=True)
    os.close(fd)
    data = (tmp_path / "out").read_bytes()
    assert (md5, size) == (hashlib.md5(data).hexdigest(), len(data))
    assert data.endswith(chunks[2].numpy().tobytes())


def test_discard_removes_the_temp_file(tmp_path: Path) -> None:
    written = write_temp({"step": 1}, tmp_path / "model.pt")
    written.discard()
    written.discard()  # twice is fine
    assert list(tmp_path.iterdir()) == []


def test_write_temp_into_a_missing_directory(tmp_path: Path) -> None:
    dest = tmp_path / "gone" / "model.pt"
    with pytest.raises(StorageError, match=f"could not write {dest}"):
        write_temp({"step": 1}, dest)


def test_write_temp_that_fails_mid_way_leaves_nothing(tmp_path: Path) -> None:
    import resource
    import signal

    dest = tmp_path / "model.pt"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # like a disk that fills up
    try:
        with pytest.raises(StorageError, match=f"writing {dest}"):
            write_temp({"w": torch.zeros(100_000)}, dest)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(tmp_path.iterdir()) == []


# -- load_checkpoint: corrupt files -------------------------------------------------------------


def assert_corrupt(path: Path) -> CorruptCheckpointError:
    with pytest.raises(CorruptCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "is truncated or corrupt" in message
    assert "dvc exp apply" in message and "expckpt reset" in message  # what to do next
    assert "\n" not in message and info.value.path == path
    return info.value


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = save(tmp_path / "model.pt", {"model": model().state_dict(), "w": torch.randn(10_000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_corrupt(path)


def test_legacy_format_truncated(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    assert_corrupt(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0" * 100,
        b"PK\x03\x04garbage",
        b"not a checkpoint\n",
        b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>\n",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 12345\n",
        b"\x80\x02}q\x00",  # a pickle cut short
    ],
)
def test_garbage_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert_corrupt(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    for seed in range(5):
        path.write_bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
            .numpy()
            .tobytes()
        )
        assert_corrupt(path)


def test_flipped_bytes_in_a_tensor_record(tmp_path: Path) -> None:
    path = save(tmp_path / "model.pt", {"w": torch.randn(1000)})
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl")  # damage the pickle's zip entry header and body
    data[start : start + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))
    assert_corrupt(path)


@pytest.mark.parametrize("payload", [torch.zeros(3), [1, 2, 3], "text", None])
def test_not_a_dict(tmp_path: Path, payload: object) -> None:
    path = save(tmp_path / "model.pt", payload)
    with pytest.raises(CorruptCheckpointError, match=f"{path} is not a checkpoint .it holds a"):
        load_checkpoint(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


# -- load_checkpoint: hostile files ------------------------------------------------------------


class Exploit:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalExploit(Exploit):
    """Unpickling it calls ``eval`` (a builtin, not a blocked module) to create ``marker``."""

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class Plain:
    """An ordinary user object: its class must be imported to unpickle it."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["zip", "zip-protocol-4", "legacy", "raw-pickle"])
@pytest.mark.parametrize("exploit", [Exploit, EvalExploit])
def test_crafted_pickle_is_refused_without_running(tmp_path: Path, fmt: str, exploit: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {"model": {"w": torch.zeros(2)}, "evil": exploit(marker)}
    if fmt == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=5))
    elif fmt == "zip-protocol-4":
        torch.save(payload, path, pickle_protocol=4)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(fmt == "zip"))

    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "would run code when loaded" in message and "trust" in message
    assert isinstance(info.value, CheckpointError) and info.value.path == path
    with pytest.raises(UnsafeCheckpointError):
        load_model(path, model())
    assert not marker.exists()

    # The file really is hostile: an unsafe load runs the command.
    if fmt == "raw-pickle":
        pickle.loads(path.read_bytes())  # noqa: S301 (it must run the hostile payload)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_user_objects_are_refused_as_unsafe(tmp_path: Path) -> None:
    path = save(tmp_path / "model.pt", {"model": {"w": torch.zeros(2)}, "config": Plain()})
    with pytest.raises(UnsafeCheckpointError, match="would run code when loaded"):
        load_checkpoint(path)


def test_damaged_data_is_not_called_hostile(tmp_path: Path) -> None:
    """Garbage the safe unpickler rejects is corrupt, not unsafe: the advice differs."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00a" + bytes(range(200, 256)))
    error = assert_corrupt(path)
    assert not isinstance(error, UnsafeCheckpointError) and "Weights only" not in str(error)


# -- architecture ----------------------------------------------------------------------------


def test_architecture_mismatch_names_the_parameter(tmp_path: Path) -> None:
    path = save(tmp_path / "model.pt", {"model": model(hidden=3).state_dict()})
    other = model(hidden=5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ArchitectureMismatchError, match=r"0\.bias is \[3\] in the file but \[5\] in the model") as info:
        load_model(path, other)
    assert str(path) in str(info.value) and "expckpt reset" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched


def test_architecture_missing_and_unexpected_keys(tmp_path: Path) -> None:
    weights = model().state_dict()
    with pytest.raises(ArchitectureMismatchError, match=r"missing 2\.bias, 2\.weight; unexpected 1\.bias, 1\.weight"):
        check_architecture(model(), {k.replace("2.", "1."): v for k, v in weights.items()}, tmp_path / "m.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"unexpected extra\.weight"):
        check_architecture(model(), {**weights, "extra.weight": torch.zeros(1)}, tmp_path / "m.pt")
    check_architecture(model(), weights, tmp_path / "m.pt")  # a match passes


def test_weights_that_are_not_a_mapping(tmp_path: Path) -> None:
    path = save(tmp_path / "model.pt", {"model": [1, 2]})
    with pytest.raises(CorruptCheckpointError, match="has no model weights"):
        load_model(path, model())


# -- devices -------------------------------------------------------------------------------


@contextlib.contextmanager
def tag_storages_as(location: str) -> Iterator[None]:
    """Make ``torch.save`` record CPU storages as living on ``location`` (as if saved on a GPU)."""
    entry = (-1, lambda storage: location if storage.device.type == "cpu" else None, lambda storage, loc: None)
    torch.serialization.register_package(*entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def test_checkpoint_saved_on_a_gpu_loads_on_cpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    source = model()
    path = tmp_path / "model.pt"
    with tag_storages_as("cuda:0"):
        torch.save({"model": source.state_dict(), "step": 7}, path)
    assert not any(p[0] == -1 for p in torch.serialization._package_registry)

    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # a plain load fails on this CPU-only machine

    payload = load_checkpoint(path)
    assert payload["step"] == 7
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    target = model(hidden=3)
    torch.nn.init.zeros_(target[0].weight)
    load_model(path, target)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


# -- load_model -------------------------------------------------------------------------------


def test_load_model_loads_only_the_weights(tmp_path: Path) -> None:
    source = model()
    optimizer = torch.optim.Adam(source.parameters())
    source(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    path = save(tmp_path / "model.pt", {"model": source.state_dict(), "optimizer": optimizer.state_dict(), "step": 2})

    target = model()
    assert not all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    target.eval()
    payload = load_model(path, target)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    assert not target.training  # the mode is the caller's
    assert payload["step"] == 2 and "state" in payload["optimizer"]
    with torch.no_grad():
        assert torch.equal(target(torch.ones(1, 4)), source(torch.ones(1, 4)))


def test_load_model_from_a_bare_state_dict(tmp_path: Path) -> None:
    source = model()
    path = save(tmp_path / "weights.pt", source.state_dict())
    target = model(hidden=3)
    torch.nn.init.zeros_(target[2].weight)
    load_model(path, target)
    assert torch.equal(target[2].weight, source[2].weight)
