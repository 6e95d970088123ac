"""The ``download`` stage of the example pipeline: fetch a digit dataset into ``data/``.

Two sources, chosen by ``data.source`` in ``params.yaml``:

``digits`` (default, works offline)
    The 1,797 real handwritten 8x8 digits bundled with scikit-learn, scaled to 0..255 and
    split deterministically into train and test by ``data.test_fraction``.
``mnist``
    The four official MNIST IDX files, downloaded from ``data.mnist_url`` and checked
    against their SHA-256 digests before they are parsed.

Either way the result is the directory ``data/`` holding ``train.npz`` and ``test.npz``
(arrays ``images``: uint8 [N, H, W] and ``labels``: int64 [N], no pickles) and
``meta.json``. The directory is built next to ``data/`` and swapped in only when it is
complete, so a failed run leaves the previous ``data/`` as it was.

Usage: ``python download.py [--params params.yaml] [--out data] [-v]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import math
import os
import secrets
import shutil
import struct
import sys
import tempfile
import traceback
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from expckpt.errors import ConfigError, DataError, ExpCkptError, StorageError

PROG = "download.py"
SOURCES = ("digits", "mnist")
DEFAULT_SOURCE = "digits"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 16
NUM_CLASSES = 10
SPLIT_SEED = 0
MNIST_HINT = "check data.mnist_url (and data.mnist_sha256 if you set it) and run again"

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# split -> (images file, labels file)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# SHA-256 of the official MNIST files (sizes 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes).
# Source: tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt ("url size sha256"
# for https://storage.googleapis.com/cvdf-datasets/mnist/...); the same digests appear in
# torchvision-style MNIST loaders and Guild AI's mnist package for yann.lecun.com's copies.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

Split = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, H, W], labels int64 [N])


# --------------------------------------------------------------------------- params


def load_data_params(path: Path) -> dict[str, Any]:
    """Return the ``data:`` section of the params file (empty if the section is absent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"params file {str(path)!r} not found; create it with a 'data:' section "
            f"(e.g. 'data: {{source: digits, test_fraction: 0.2}}') or pass --params PATH",
            key="params",
            value=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read params file {str(path)!r}: {exc.strerror or exc}",
            key="params",
            value=str(path),
        ) from exc
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"params file {str(path)!r} is not valid YAML: {exc}", key="params", value=str(path)
        ) from exc
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(
            f"params file {str(path)!r} must be a mapping at the top level, "
            f"got {type(params).__name__}",
            key="params",
            value=str(path),
        )
    data = params.get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"data in {str(path)!r} must be a mapping (source, test_fraction, ...), "
            f"got {data!r}",
            key="data",
            value=data,
        )
    return data


def get_source(data: Mapping[str, Any]) -> str:
    """Return ``data.source``, defaulting to ``digits``; reject unknown sources."""
    source = data.get("source", DEFAULT_SOURCE)
    if source is None:
        source = DEFAULT_SOURCE
    if source not in SOURCES:
        raise ConfigError(
            f"data.source is {source!r}; allowed values are "
            + ", ".join(repr(s) for s in SOURCES),
            key="data.source",
            value=source,
        )
    return source


def get_test_fraction(data: Mapping[str, Any]) -> float:
    """Return ``data.test_fraction``, a number strictly between 0 and 1."""
    value = data.get("test_fraction", DEFAULT_TEST_FRACTION)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ConfigError(
            f"data.test_fraction must be a number between 0 and 1 (exclusive), got {value!r}",
            key="data.test_fraction",
            value=value,
        )
    return float(value)


def get_mnist_url(data: Mapping[str, Any]) -> str:
    """Return ``data.mnist_url`` (an http, https or file URL) ending in ``/``."""
    url = data.get("mnist_url", DEFAULT_MNIST_URL)
    scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme not in ("http", "https", "file"):
        raise ConfigError(
            f"data.mnist_url must be an http(s):// or file:// URL of the directory holding "
            f"the MNIST .gz files, got {url!r} (default {DEFAULT_MNIST_URL})",
            key="data.mnist_url",
            value=url,
        )
    return url if url.endswith("/") else url + "/"


def get_mnist_sha256(data: Mapping[str, Any]) -> dict[str, str]:
    """Return the expected digests: the built-in table updated by ``data.mnist_sha256``."""
    overrides = data.get("mnist_sha256") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"data.mnist_sha256 must map file names to SHA-256 hex digests, got {overrides!r}",
            key="data.mnist_sha256",
            value=overrides,
        )
    table = dict(MNIST_SHA256)
    for name, digest in overrides.items():
        key = f"data.mnist_sha256.{name}"
        if name not in MNIST_SHA256:
            raise ConfigError(
                f"{key}: unknown MNIST file {name!r}; known files are "
                + ", ".join(MNIST_SHA256),
                key=key,
                value=name,
            )
        if not _is_sha256_hex(digest):
            raise ConfigError(
                f"{key} must be 64 hexadecimal characters, got {digest!r}", key=key, value=digest
            )
        table[name] = digest.lower()
    return table


def _is_sha256_hex(value: object) -> bool:
    """True if ``value`` is a string of 64 hex digits."""
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- digits


def load_digits_split(test_fraction: float) -> tuple[Split, Split]:
    """Split scikit-learn's bundled 8x8 digits into (train, test), deterministically.

    Pixel values 0..16 are scaled to 0..255 (``value * 255 // 16``). The order comes from
    ``numpy.random.default_rng(0).permutation``; the test part has ``ceil(n * fraction)``
    images (at least one, and at least one image is left for training).
    """
    from sklearn.datasets import load_digits  # imported here: slow, and only needed here

    digits = load_digits()
    images = (digits.images.astype(np.int64) * 255 // 16).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    n = len(labels)
    n_test = min(max(math.ceil(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


# --------------------------------------------------------------------------- mnist


def fetch_verified(
    url: str, dest: Path, sha256: str, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> int:
    """Download ``url`` to ``dest``, checking its SHA-256; return the number of bytes.

    The body is streamed to ``dest`` + ``.part`` while hashing and renamed to ``dest`` only
    if the digest matches; on any failure no file is left behind and ``DataError`` is raised
    naming the URL (and, for a mismatch, the expected and actual digests).
    """
    name = dest.name
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        try:
            out = open(part, "wb")
        except OSError as exc:
            raise StorageError(f"cannot create {part}: {exc}", path=part) from exc
        with out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    declared = response.headers.get("Content-Length")
                    while chunk := response.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except urllib.error.HTTPError as exc:
                raise DataError(
                    f"cannot download {url}: HTTP {exc.code} {exc.reason}; "
                    f"check data.mnist_url (default {DEFAULT_MNIST_URL})",
                    path=url,
                ) from exc
            except urllib.error.URLError as exc:
                raise DataError(
                    f"cannot download {url}: {exc.reason}; check the network and data.mnist_url",
                    path=url,
                ) from exc
            except TimeoutError as exc:
                raise DataError(
                    f"cannot download {url}: no data within {timeout:g} s; "
                    f"check the network and data.mnist_url",
                    path=url,
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise DataError(
                    f"download of {url} broke off after {size} bytes ({exc!r}); run again",
                    path=url,
                ) from exc

        actual = digest.hexdigest()
        expected = sha256.lower()
        truncated = declared is not None and declared.isdigit() and size < int(declared)
        if truncated or actual != expected:
            what = f"truncated ({size} of {declared} bytes)" if truncated else "corrupt"
            raise DataError(
                f"{name} from {url} is {what}: SHA-256 expected {expected}, got {actual} "
                f"({size} bytes); the download was discarded; {MNIST_HINT}",
                path=url,
            )
        os.replace(part, dest)
        return size
    finally:
        part.unlink(missing_ok=True)


def _read_gzip(path: Path) -> bytes:
    """Return the decompressed contents of a .gz file, or raise ``DataError``."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError as exc:
        raise DataError(
            f"{path.name} is a truncated gzip file ({exc}); {MNIST_HINT}",
            path=path,
        ) from exc
    except (OSError, zlib.error) as exc:
        raise DataError(
            f"{path.name} is not a valid gzip file ({exc}); {MNIST_HINT}",
            path=path,
        ) from exc


def _parse_idx(path: Path, magic: int, ndim: int, what: str) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes with ``ndim`` dimensions."""
    raw = _read_gzip(path)
    header_len = 4 * (1 + ndim)
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found is not None and found != magic:
        raise DataError(
            f"{path.name} is not an IDX {what} file: magic number {found}, expected {magic}; "
            f"{MNIST_HINT}",
            path=path,
        )
    if len(raw) < header_len:
        raise DataError(
            f"{path.name} is truncated: {len(raw)} bytes, shorter than the {header_len}-byte "
            f"IDX {what} header; {MNIST_HINT}",
            path=path,
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = header_len + math.prod(dims)
    if len(raw) != expected:
        shape = "x".join(str(d) for d in dims)
        state = "truncated" if len(raw) < expected else "longer than declared"
        raise DataError(
            f"{path.name} is {state}: its header declares {shape} bytes of {what} "
            f"({expected} bytes with header) but it holds {len(raw)} bytes; "
            f"{MNIST_HINT}",
            path=path,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_images(path: Path) -> np.ndarray:
    """Read a gzipped IDX image file (magic 2051) into a uint8 array [N, H, W]."""
    return _parse_idx(path, IDX_IMAGES_MAGIC, 3, "images").copy()


def read_idx_labels(path: Path) -> np.ndarray:
    """Read a gzipped IDX label file (magic 2049) into an int64 array [N] of 0..9."""
    labels = _parse_idx(path, IDX_LABELS_MAGIC, 1, "labels").astype(np.int64)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path.name} holds label {int(labels.max())}; MNIST labels are 0..9",
            path=path,
        )
    return labels


def load_mnist(base_url: str, sha256: Mapping[str, str], workdir: Path) -> tuple[Split, Split]:
    """Download, verify and parse the four MNIST files into (train, test)."""
    splits: list[Split] = []
    for split, (images_name, labels_name) in MNIST_FILES.items():
        for name in (images_name, labels_name):
            url = base_url + name
            print(f"fetching {url}", flush=True)
            fetch_verified(url, workdir / name, sha256[name])
        images = read_idx_images(workdir / images_name)
        labels = read_idx_labels(workdir / labels_name)
        if len(images) != len(labels):
            raise DataError(
                f"MNIST {split} split: {images_name} has {len(images)} images but "
                f"{labels_name} has {len(labels)} labels; {MNIST_HINT}",
                path=workdir / images_name,
            )
        splits.append((images, labels))
    train, test = splits
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"MNIST train images are {train[0].shape[1:]} but test images are "
            f"{test[0].shape[1:]}; {MNIST_HINT}",
        )
    return train, test


# --------------------------------------------------------------------------- output


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_sibling_dir(out_dir: Path, kind: str) -> Path:
    """Create a new, uniquely named hidden directory beside ``out_dir`` (``.data.<hex>.<kind>``).

    Unlike ``tempfile.mkdtemp`` it gets the usual permissions (umask), which the published
    directory keeps.
    """
    while True:
        path = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.{kind}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split as an uncompressed, pickle-free .npz file and fsync it."""
    with open(path, "xb") as f:
        np.savez(f, images=images, labels=labels)
        f.flush()
        os.fsync(f.fileno())


def _save_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` as indented JSON and fsync it."""
    with open(path, "x", encoding="utf-8") as f:
        json.dump(dict(obj), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_dataset_atomically(
    out_dir: Path, train: Split, test: Split, meta: Mapping[str, Any]
) -> None:
    """Write ``train.npz``, ``test.npz`` and ``meta.json`` into ``out_dir``, all or nothing.

    Everything is built in a temporary directory beside ``out_dir`` and fsynced; then the old
    ``out_dir`` (if any) is renamed to a backup, the new one renamed into place, and the
    backup removed. On failure the previous ``out_dir`` is kept and no temporary directory
    is left behind.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise StorageError(
            f"{out_dir} exists and is not a directory; move it away or choose another --out",
            path=out_dir,
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = _make_sibling_dir(out_dir, "tmp")
    except OSError as exc:
        raise StorageError(f"cannot create a directory in {parent}: {exc}", path=parent) from exc

    backup: Path | None = None  # holds the previous out_dir while the new one moves in
    committed = False
    try:
        _save_split(staging / "train.npz", *train)
        _save_split(staging / "test.npz", *test)
        _save_json(staging / "meta.json", meta)
        _fsync_dir(staging)

        if out_dir.exists():
            backup = _make_sibling_dir(out_dir, "old")
            try:
                os.replace(out_dir, backup)  # an empty directory may be replaced by rename
            except BaseException:
                os.rmdir(backup)
                backup = None
                raise
        try:
            os.rename(staging, out_dir)
        except BaseException:
            if backup is not None:
                os.rename(backup, out_dir)  # put the previous data back
                backup = None
            raise
        committed = True
        _fsync_dir(parent)
    except OSError as exc:
        kept = f"; the previous data is in {backup}" if backup is not None else ""
        raise StorageError(
            f"cannot write {out_dir}: {exc}; nothing was replaced{kept}", path=out_dir
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if committed and backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def describe(train: Split, test: Split, source: str) -> dict[str, Any]:
    """Build the ``meta.json`` contents for a dataset."""
    height, width = train[0].shape[1:]
    return {
        "source": source,
        "height": int(height),
        "width": int(width),
        "classes": NUM_CLASSES,
        "train": int(len(train[1])),
        "test": int(len(test[1])),
    }


# --------------------------------------------------------------------------- CLI


def build_dataset(params_path: Path, out_dir: Path) -> dict[str, Any]:
    """Read the params, build the dataset into ``out_dir`` and return its metadata."""
    data = load_data_params(params_path)
    source = get_source(data)
    if source == "digits":
        train, test = load_digits_split(get_test_fraction(data))
    else:
        base_url = get_mnist_url(data)
        sha256 = get_mnist_sha256(data)
        parent = out_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            downloads = tempfile.TemporaryDirectory(
                prefix=f".{out_dir.name}.", suffix=".dl", dir=parent
            )
        except OSError as exc:
            raise StorageError(
                f"cannot create a directory in {parent}: {exc}", path=parent
            ) from exc
        with downloads as workdir:
            train, test = load_mnist(base_url, sha256, Path(workdir))
    meta = describe(train, test, source)
    write_dataset_atomically(out_dir, train, test, meta)
    return meta


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch the example digit dataset into DIR/{train,test}.npz and meta.json.",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file with a 'data:' section (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=Path("data"),
                        help="output directory, replaced atomically (default: data)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the full traceback on errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the download stage; return the process exit code."""
    args = parse_args(argv)
    try:
        meta = build_dataset(args.params, args.out)
    except ExpCkptError as exc:
        if args.verbose:
            traceback.print_exc()
        else:
            message = " ".join(str(exc).split())  # always exactly one line
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.out} was left as it was", file=sys.stderr)
        return 130
    print(
        f"{args.out}/: {meta['train']} train, {meta['test']} test images "
        f"{meta['height']}x{meta['width']} from {meta['source']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
