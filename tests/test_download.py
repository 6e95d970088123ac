"""Tests of the ``download`` stage (download.py, and mnist.py for ``data.source: mnist``), with
real files, a real HTTP server on 127.0.0.1 and real subprocesses: no mocks.

MNIST is replaced by small generated IDX files; the digests the stage expects are given
through ``data.mnist_sha256`` in params.yaml.
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
from collections.abc import Iterator

import numpy as np
import pytest
import yaml

from expckpt.errors import ConfigError, DataError, StorageError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "download.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mnist  # noqa: E402  (the example's own module, beside download.py)

_spec = importlib.util.spec_from_file_location("download_stage_under_test", SCRIPT)
assert _spec is not None and _spec.loader is not None
download = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(download)

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
N_TRAIN, N_TEST, SIDE = 20, 10, 28


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run download.py as DVC would: a fresh interpreter, cwd = the project."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def write_params(directory: Path, data: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("download.py: error: "), proc.stderr
    return lines[0]


def assert_no_leftovers(directory: Path, *expected: str) -> None:
    """Only the expected entries remain: no scratch directory, downloads or old data."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected)


# --------------------------------------------------------------------------- server


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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Serve small MNIST look-alikes from 127.0.0.1: good/ and broken variants of it."""
    root = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(42)
    arrays = {
        "train": (
            rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8),
            rng.integers(0, 10, N_TRAIN).astype(np.int64),
        ),
        "test": (
            rng.integers(0, 256, (N_TEST, SIDE, SIDE), dtype=np.uint8),
            rng.integers(0, 10, N_TEST).astype(np.int64),
        ),
    }
    train_images = idx_images(arrays["train"][0])
    files = {
        TRAIN_IMAGES: gzip.compress(train_images),
        TRAIN_LABELS: gzip.compress(idx_labels(arrays["train"][1])),
        TEST_IMAGES: gzip.compress(idx_images(arrays["test"][0])),
        TEST_LABELS: gzip.compress(idx_labels(arrays["test"][1])),
    }
    variants = {
        "good": {},
        "cutgz": {TRAIN_IMAGES: files[TRAIN_IMAGES][: len(files[TRAIN_IMAGES]) // 2]},
        "cutidx": {TRAIN_IMAGES: gzip.compress(train_images[:-100])},
        "magic": {TRAIN_IMAGES: files[TRAIN_LABELS]},
        "label12": {TRAIN_LABELS: gzip.compress(idx_labels(np.full(N_TRAIN, 12)))},
    }
    for variant, overrides in variants.items():
        (root / variant).mkdir()
        for name, data in {**files, **overrides}.items():
            (root / variant / name).write_bytes(data)

    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    def digests(variant: str) -> dict[str, str]:
        folder = root / (variant if (root / variant).is_dir() else "good")
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    try:
        yield {
            "base": f"http://127.0.0.1:{httpd.server_address[1]}",
            "arrays": arrays,
            "files": files,
            "digests": digests,
            "closed": f"http://127.0.0.1:{closed_port}",
        }
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def mnist_params(server: dict, variant: str = "good", **digests: str) -> dict:
    """params ``data:`` for MNIST from ``variant``, trusting the served files' digests."""
    return {
        "source": "mnist",
        "mnist_url": f"{server['base']}/{variant}/",
        "mnist_sha256": {**server["digests"](variant), **digests},
    }


# --------------------------------------------------------------------------- MNIST


@pytest.mark.slow
def test_mnist_download_produces_dataset(tmp_path: Path, server: dict) -> None:
    write_params(tmp_path, mnist_params(server))
    proc = run(tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"data/: {N_TRAIN} train, {N_TEST} test images 28x28 from mnist" in proc.stdout
    assert proc.stdout.count("fetching http://127.0.0.1:") == 4

    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        with np.load(data / f"{split}.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["images", "labels"]
            images, labels = npz["images"], npz["labels"]
        assert images.dtype == np.uint8 and images.shape == (n, SIDE, SIDE)
        assert labels.dtype == np.int64 and labels.shape == (n,)
        np.testing.assert_array_equal(images, server["arrays"][split][0])
        np.testing.assert_array_equal(labels, server["arrays"][split][1])
    assert json.loads((data / "meta.json").read_text()) == {
        "source": "mnist",
        "height": 28,
        "width": 28,
        "classes": 10,
        "train": N_TRAIN,
        "test": N_TEST,
    }
    assert_no_leftovers(tmp_path, "params.yaml", "data")


# Each bad download: (served folder, digests expected instead of the served ones, fragments
# of the error line). Fragments are formatted with the server's facts.
BAD_DOWNLOADS = {
    "corrupt": (
        "good",
        {TRAIN_IMAGES: "ab" * 32},
        [
            "{base}/good/" + TRAIN_IMAGES,
            TRAIN_IMAGES + " from",
            "is corrupt",
            "expected " + "ab" * 32,
            "got {good}",
            "mnist_url",
        ],
    ),
    "dropped connection": (
        "short",
        {},
        [
            TRAIN_IMAGES + " from {base}/short/" + TRAIN_IMAGES,
            "is truncated ({half} of {size} bytes)",
            "expected {good}",
        ],
    ),
    "truncated gzip": ("cutgz", {}, [TRAIN_IMAGES, "truncated gzip"]),
    "truncated idx": (
        "cutidx",
        {},
        [TRAIN_IMAGES, f"{16 + N_TRAIN * SIDE * SIDE - 100} bytes", f"declares {N_TRAIN}x{SIDE}x{SIDE} images"],
    ),
    "wrong magic": ("magic", {}, [TRAIN_IMAGES, "magic number 2049, expected 2051"]),
    "label out of range": ("label12", {}, [TRAIN_LABELS, "largest 12", "0..9"]),
    "http 404": ("missing", {}, ["{base}/missing/" + TRAIN_IMAGES, "HTTP 404"]),
    "unreachable": ("{closed}", {}, ["{closed}/" + TRAIN_IMAGES, "check the network"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_DOWNLOADS)
def test_bad_download_is_one_line_and_keeps_previous_data(tmp_path: Path, server: dict, case: str) -> None:
    variant, digests, fragments = BAD_DOWNLOADS[case]
    params = mnist_params(server, variant, **digests)
    if variant == "{closed}":
        params["mnist_url"] = server["closed"]  # no slash: the stage adds it
    write_params(tmp_path, params)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.npz").write_text("previous run")
    before = snapshot(tmp_path / "data")

    line = assert_one_line_error(run(tmp_path))
    size = len(server["files"][TRAIN_IMAGES])
    facts = {
        "base": server["base"],
        "closed": server["closed"],
        "size": size,
        "half": size // 2,
        "good": server["digests"]("good")[TRAIN_IMAGES],
    }
    for fragment in fragments:
        assert fragment.format(**facts) in line
    assert snapshot(tmp_path / "data") == before
    assert_no_leftovers(tmp_path, "params.yaml", "data")


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path: Path, server: dict) -> None:
    write_params(tmp_path, mnist_params(server, **{TRAIN_IMAGES: "cd" * 32}))
    proc = run(tmp_path, "-v")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_builtin_digests_are_the_official_mnist_ones() -> None:
    url, table = mnist.settings({})
    assert url == mnist.DEFAULT_URL
    assert set(table) == {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS}
    assert table[TRAIN_IMAGES].startswith("440fcabf73cc546f")
    # an override replaces only the files it names
    _, merged = mnist.settings({"mnist_sha256": {TEST_LABELS: "EF" * 32}})
    assert merged[TEST_LABELS] == "ef" * 32 and merged[TRAIN_IMAGES] == table[TRAIN_IMAGES]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mnist_url": "ftp://example.org/mnist/"}, "data.mnist_url"),
        ({"mnist_url": 42}, "data.mnist_url"),
        ({"mnist_sha256": ["ab" * 32]}, "data.mnist_sha256"),
        ({"mnist_sha256": {TRAIN_IMAGES: "xyz"}}, f"data.mnist_sha256.{TRAIN_IMAGES}"),
        ({"mnist_sha256": {"other.gz": "ab" * 32}}, "data.mnist_sha256.other.gz"),
    ],
)
def test_bad_mnist_settings_are_config_errors(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        mnist.settings(data)
    assert info.value.key == key and key in str(info.value)


def test_read_idx_rejects_a_short_header(tmp_path: Path) -> None:
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(struct.pack(">I", 2051) + b"\x00\x00"))
    with pytest.raises(DataError, match=r"not an IDX images file: .*6 bytes"):
        mnist.read_idx(short, 0x0803, "images")


# --------------------------------------------------------------------------- digits


@pytest.mark.slow
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
    assert json.loads((data / "meta.json").read_text()) == {
        "source": "digits",
        "height": 8,
        "width": 8,
        "classes": 10,
        "train": 1437,
        "test": 360,
    }
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


def test_output_path_taken_by_a_file_is_an_error(tmp_path: Path) -> None:
    params = write_params(tmp_path, {"source": "digits"})
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(StorageError, match="not a directory"):
        download.build_dataset(params, tmp_path / "data")
    assert_no_leftovers(tmp_path, "params.yaml", "data")
    assert (tmp_path / "data").read_text() == "not a directory"


# --------------------------------------------------------------------------- config


@pytest.mark.slow
def test_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    write_params(tmp_path, {"source": "imagenet"})
    line = assert_one_line_error(run(tmp_path))
    assert "data.source" in line and "'imagenet'" in line
    assert "'digits'" in line and "'mnist'" in line
    assert_no_leftovers(tmp_path, "params.yaml")


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan"), "0.2", True, None])
def test_bad_test_fraction_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.test_fraction") as info:
        download.load_digits_split(value)  # type: ignore[arg-type]
    assert info.value.key == "data.test_fraction"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "cannot read params file 'nope.yaml' (No such file or directory)"),
        ("data: [1, 2", "is not valid YAML"),
        ("data: digits", "data in 'nope.yaml' must be a mapping"),
    ],
)
def test_bad_params_file_is_a_clear_error(tmp_path: Path, text: str | None, fragment: str) -> None:
    if text is not None:
        (tmp_path / "nope.yaml").write_text(text)
    line = assert_one_line_error(run(tmp_path, "--params", "nope.yaml"))
    assert fragment in line
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u\n"
        f"spec = u.spec_from_file_location('d', {str(SCRIPT)!r})\n"
        "spec.loader.exec_module(u.module_from_spec(spec))\n"
        "import mnist\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert_no_leftovers(tmp_path)
