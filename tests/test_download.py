"""Tests of the ``download`` stage (download.py), with real files, a real HTTP server and
real subprocesses: no mocks.

MNIST is replaced by small generated IDX files served from 127.0.0.1; the digests the
script expects are given through ``data.mnist_sha256`` in params.yaml.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "download.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
N_TRAIN, N_TEST, SIDE = 20, 10, 28


def _load_module():
    spec = importlib.util.spec_from_file_location("download_stage_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


download = _load_module()


# --------------------------------------------------------------------------- helpers


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run download.py as DVC would: a fresh interpreter, cwd = the project."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


def write_params(directory: Path, data: dict, name: str = "params.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("download.py: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def assert_no_leftovers(directory: Path, *expected: str) -> None:
    """Only the expected entries remain: no .data.* staging, backup or download dirs."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected)


# --------------------------------------------------------------------------- fixtures


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; under /short/ it announces the full length of good/'s file
    but hangs up after half of it, like a dropped connection."""

    def do_GET(self) -> None:
        if not self.path.startswith("/short/"):
            return super().do_GET()
        body = (Path(self.directory) / "good" / self.path.rsplit("/", 1)[-1]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def mnist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Serve small MNIST look-alikes: good/, truncated files, bad magic, bad IDX size."""
    root = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(42)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN).astype(np.int64),
        "test_images": rng.integers(0, 256, (N_TEST, SIDE, SIDE), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST).astype(np.int64),
    }
    files = {
        TRAIN_IMAGES: gzip.compress(idx_images(arrays["train_images"])),
        TRAIN_LABELS: gzip.compress(idx_labels(arrays["train_labels"])),
        TEST_IMAGES: gzip.compress(idx_images(arrays["test_images"])),
        TEST_LABELS: gzip.compress(idx_labels(arrays["test_labels"])),
    }
    variants = {
        "good": {},
        # the gzip stream stops half-way
        "cutgz": {TRAIN_IMAGES: files[TRAIN_IMAGES][: len(files[TRAIN_IMAGES]) // 2]},
        # a complete gzip stream whose IDX payload misses its last 100 bytes
        "cutidx": {TRAIN_IMAGES: gzip.compress(idx_images(arrays["train_images"])[:-100])},
        # labels where images should be
        "magic": {TRAIN_IMAGES: files[TRAIN_LABELS]},
    }
    for variant, overrides in variants.items():
        (root / variant).mkdir()
        for name, data in {**files, **overrides}.items():
            (root / variant / name).write_bytes(data)

    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def digests(variant: str) -> dict[str, str]:
        return {p.name: sha256(p.read_bytes()) for p in (root / variant).iterdir()}

    try:
        yield {"base": base, "arrays": arrays, "files": files, "digests": digests}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mnist_params(server: dict, variant: str = "good", **overrides: str) -> dict:
    """params ``data:`` for MNIST from ``variant``, trusting the served files' digests."""
    digests = server["digests"](variant)
    digests.update(overrides)
    return {"source": "mnist", "mnist_url": f"{server['base']}/{variant}/", "mnist_sha256": digests}


# --------------------------------------------------------------------------- MNIST


def test_mnist_download_produces_dataset(tmp_path: Path, mnist_server: dict) -> None:
    write_params(tmp_path, mnist_params(mnist_server))
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"data/: {N_TRAIN} train, {N_TEST} test images 28x28 from mnist" in proc.stdout

    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    arrays = mnist_server["arrays"]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        with np.load(data / f"{split}.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["images", "labels"]
            images, labels = npz["images"], npz["labels"]
        assert images.dtype == np.uint8 and images.shape == (n, SIDE, SIDE)
        assert labels.dtype == np.int64 and labels.shape == (n,)
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
    meta = json.loads((data / "meta.json").read_text())
    assert meta == {"source": "mnist", "height": 28, "width": 28, "classes": 10,
                    "train": N_TRAIN, "test": N_TEST}
    assert_no_leftovers(tmp_path, "params.yaml", "data")


@pytest.mark.parametrize("variant", ["good", "cutgz"])
def test_wrong_sha256_keeps_previous_data(tmp_path: Path, mnist_server: dict, variant: str) -> None:
    """A digest mismatch (a corrupt file, or a download cut short) changes nothing."""
    write_params(tmp_path, mnist_params(mnist_server))
    assert run(tmp_path).returncode == 0
    (tmp_path / "data" / "marker.txt").write_text("previous run")
    before = snapshot(tmp_path / "data")

    # Expect the digest of the complete file, serve `variant`'s copy of it.
    expected = "ab" * 32 if variant == "good" else mnist_server["digests"]("good")[TRAIN_IMAGES]
    actual = mnist_server["digests"](variant)[TRAIN_IMAGES]
    write_params(tmp_path, mnist_params(mnist_server, variant, **{TRAIN_IMAGES: expected}))
    line = assert_one_line_error(run(tmp_path))
    assert TRAIN_IMAGES in line
    assert expected in line and actual in line
    assert "mnist_url" in line

    assert snapshot(tmp_path / "data") == before
    assert_no_leftovers(tmp_path, "params.yaml", "data")


def test_dropped_connection_is_a_clear_error(tmp_path: Path, mnist_server: dict) -> None:
    params = mnist_params(mnist_server)  # the digests of the complete files
    params["mnist_url"] = f"{mnist_server['base']}/short/"
    write_params(tmp_path, params)
    line = assert_one_line_error(run(tmp_path))
    size = len(mnist_server["files"][TRAIN_IMAGES])
    assert f"{TRAIN_IMAGES} from {params['mnist_url']}{TRAIN_IMAGES} is truncated" in line
    assert f"({size // 2} of {size} bytes)" in line
    assert params["mnist_sha256"][TRAIN_IMAGES] in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_truncated_gzip_is_a_clear_error(tmp_path: Path, mnist_server: dict) -> None:
    write_params(tmp_path, mnist_params(mnist_server, "cutgz"))  # digest matches the cut file
    line = assert_one_line_error(run(tmp_path))
    assert TRAIN_IMAGES in line and "truncated gzip" in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_truncated_idx_is_a_clear_error(tmp_path: Path, mnist_server: dict) -> None:
    write_params(tmp_path, mnist_params(mnist_server, "cutidx"))
    line = assert_one_line_error(run(tmp_path))
    assert TRAIN_IMAGES in line and "truncated" in line
    expected_size = 16 + N_TRAIN * SIDE * SIDE
    assert str(expected_size) in line and str(expected_size - 100) in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_wrong_magic_is_a_clear_error(tmp_path: Path, mnist_server: dict) -> None:
    write_params(tmp_path, mnist_params(mnist_server, "magic"))
    line = assert_one_line_error(run(tmp_path))
    assert TRAIN_IMAGES in line and "magic number 2049, expected 2051" in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_http_404_names_the_url(tmp_path: Path, mnist_server: dict) -> None:
    params = mnist_params(mnist_server)
    params["mnist_url"] = f"{mnist_server['base']}/missing/"
    write_params(tmp_path, params)
    line = assert_one_line_error(run(tmp_path))
    assert f"{mnist_server['base']}/missing/{TRAIN_IMAGES}" in line
    assert "404" in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_params(tmp_path, {"source": "mnist", "mnist_url": f"http://127.0.0.1:{port}/mnist"})
    line = assert_one_line_error(run(tmp_path))
    assert f"http://127.0.0.1:{port}/mnist/{TRAIN_IMAGES}" in line
    assert_no_leftovers(tmp_path, "params.yaml")


def test_verbose_shows_the_traceback(tmp_path: Path, mnist_server: dict) -> None:
    write_params(tmp_path, mnist_params(mnist_server, **{TRAIN_IMAGES: "cd" * 32}))
    proc = run(tmp_path, "-v")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_builtin_digests_are_the_official_mnist_ones() -> None:
    table = download.MNIST_SHA256
    assert set(table) == {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS}
    assert table[TRAIN_IMAGES].startswith("440fcabf73cc546f")
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in table.values())
    # an override replaces only the files it names
    merged = download.get_mnist_sha256({"mnist_sha256": {TEST_LABELS: "EF" * 32}})
    assert merged[TEST_LABELS] == "ef" * 32 and merged[TRAIN_IMAGES] == table[TRAIN_IMAGES]


def test_idx_readers_validate(tmp_path: Path) -> None:
    labels = tmp_path / "labels.gz"
    labels.write_bytes(gzip.compress(idx_labels(np.array([3, 1, 4]))))
    np.testing.assert_array_equal(download.read_idx_labels(labels), [3, 1, 4])
    assert download.read_idx_labels(labels).dtype == np.int64
    with pytest.raises(download.DataError, match="magic number 2049, expected 2051"):
        download.read_idx_images(labels)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08"))
    with pytest.raises(download.DataError, match="shorter than the 16-byte"):
        download.read_idx_images(short)
    bad_label = tmp_path / "bad.gz"
    bad_label.write_bytes(gzip.compress(idx_labels(np.array([1, 12]))))
    with pytest.raises(download.DataError, match="label 12"):
        download.read_idx_labels(bad_label)


# --------------------------------------------------------------------------- digits


def test_digits_default_runs_offline(tmp_path: Path) -> None:
    """No data.source at all: the bundled scikit-learn digits, split 80/20."""
    write_params(tmp_path, {"test_fraction": 0.2})
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "data/: 1437 train, 360 test images 8x8 from digits" in proc.stdout

    data = tmp_path / "data"
    with np.load(data / "train.npz") as train, np.load(data / "test.npz") as test:
        tr_images, tr_labels = train["images"], train["labels"]
        te_images, te_labels = test["images"], test["labels"]
    assert tr_images.shape == (1437, 8, 8) and te_images.shape == (360, 8, 8)
    assert tr_images.dtype == te_images.dtype == np.uint8
    assert tr_labels.dtype == te_labels.dtype == np.int64
    assert tr_images.max() == 255 and tr_images.min() == 0
    assert set(np.unique(np.concatenate([tr_labels, te_labels]))) == set(range(10))
    meta = json.loads((data / "meta.json").read_text())
    assert meta == {"source": "digits", "height": 8, "width": 8, "classes": 10,
                    "train": 1437, "test": 360}
    assert_no_leftovers(tmp_path, "params.yaml", "data")


def test_digits_split_is_deterministic_and_complete() -> None:
    (tr_x, tr_y), (te_x, te_y) = download.load_digits_split(0.25)
    (tr_x2, _), (te_x2, _) = download.load_digits_split(0.25)
    assert len(tr_y) + len(te_y) == 1797 and len(te_y) == 450
    np.testing.assert_array_equal(tr_x, tr_x2)
    np.testing.assert_array_equal(te_x, te_x2)
    # every image lands in exactly one split: the multiset of images is unchanged
    from sklearn.datasets import load_digits

    original = (load_digits().images.astype(np.int64) * 255 // 16).astype(np.uint8)
    both = np.concatenate([tr_x, te_x]).reshape(1797, -1)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(both) == key(original.reshape(1797, -1))


def test_rerun_replaces_data_atomically(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_params(tmp_path, {"source": "digits", "test_fraction": 0.2})
    out = tmp_path / "data"
    assert download.main(["--params", str(params), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from an older run")

    write_params(tmp_path, {"source": "digits", "test_fraction": 0.5})
    assert download.main(["--params", str(params), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train"], meta["test"]) == (898, 899)
    assert_no_leftovers(tmp_path, "params.yaml", "data")
    assert "898 train, 899 test images 8x8 from digits" in capsys.readouterr().out


def test_failure_without_previous_data_leaves_nothing(tmp_path: Path) -> None:
    """The output path is blocked by a file: an error, and no temp dirs are left."""
    params = write_params(tmp_path, {"source": "digits"})
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(download.StorageError, match="not a directory"):
        download.build_dataset(params, tmp_path / "data")
    assert_no_leftovers(tmp_path, "params.yaml", "data")
    assert (tmp_path / "data").read_text() == "not a directory"


# --------------------------------------------------------------------------- config


def test_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    write_params(tmp_path, {"source": "imagenet"})
    line = assert_one_line_error(run(tmp_path))
    assert "data.source" in line and "'imagenet'" in line
    assert "'digits'" in line and "'mnist'" in line
    assert_no_leftovers(tmp_path, "params.yaml")

    with pytest.raises(download.ConfigError) as info:
        download.get_source({"source": "imagenet"})
    assert info.value.key == "data.source" and info.value.value == "imagenet"


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "0.2", True, None])
def test_bad_test_fraction_is_a_config_error(value: object) -> None:
    with pytest.raises(download.ConfigError, match="data.test_fraction") as info:
        download.get_test_fraction({"test_fraction": value})
    assert info.value.key == "data.test_fraction"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mnist_url": "ftp://example.org/mnist/"}, "data.mnist_url"),
        ({"mnist_sha256": {TRAIN_IMAGES: "xyz"}}, f"data.mnist_sha256.{TRAIN_IMAGES}"),
        ({"mnist_sha256": {"other.gz": "ab" * 32}}, "data.mnist_sha256.other.gz"),
    ],
)
def test_bad_mnist_settings_are_config_errors(data: dict, key: str) -> None:
    with pytest.raises(download.ConfigError) as info:
        download.get_mnist_url(data)
        download.get_mnist_sha256(data)
    assert info.value.key == key and key in str(info.value)


def test_missing_params_file_is_a_clear_error(tmp_path: Path) -> None:
    line = assert_one_line_error(run(tmp_path, "--params", "nope.yaml"))
    assert "nope.yaml" in line and "not found" in line
    assert_no_leftovers(tmp_path)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u\n"
        f"spec = u.spec_from_file_location('d', {str(SCRIPT)!r})\n"
        "spec.loader.exec_module(u.module_from_spec(spec))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert_no_leftovers(tmp_path)
