"""MNIST for the example's ``download`` stage (``data.source: mnist``).

Downloads the four official IDX files from ``data.mnist_url``, checks each against its
SHA-256 before reading a byte of it, and parses them into uint8 images and int64 labels.
``data.mnist_sha256`` ({file name: digest}) replaces built-in digests, for a mirror that
serves other bytes. Every failure is a ``DataError`` or ``ConfigError`` whose message names
the file or URL and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import re
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from expckpt.errors import ConfigError, DataError

DEFAULT_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
HINT = "check data.mnist_url (and data.mnist_sha256 if you set it) and run again"

# (images, labels) for the train split, then the test split
FILES = [("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]

# SHA-256 of the official files, as listed by tensorflow/datasets
# (tensorflow_datasets/url_checksums/mnist.txt, for the storage.googleapis.com copies).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


def settings(data: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Return (base URL ending in ``/``, expected digest of each file) from ``data:``."""
    url = data.get("mnist_url", DEFAULT_URL)
    scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else None
    if scheme not in ("http", "https", "file"):
        raise ConfigError(f"data.mnist_url must be an http(s):// or file:// URL of the directory "
                          f"holding the MNIST .gz files, got {url!r} (default {DEFAULT_URL})",
                          key="data.mnist_url", value=url)
    overrides = data.get("mnist_sha256") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"data.mnist_sha256 must map file names to SHA-256 digests, got "
                          f"{overrides!r}", key="data.mnist_sha256", value=overrides)
    digests = dict(SHA256)
    for name, digest in overrides.items():
        key = f"data.mnist_sha256.{name}"
        if name not in SHA256:
            raise ConfigError(f"{key}: unknown MNIST file {name!r}; known files are "
                              + ", ".join(SHA256), key=key, value=name)
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ConfigError(f"{key} must be 64 hexadecimal characters, got {digest!r}",
                              key=key, value=digest)
        digests[name] = digest.lower()
    return (url if url.endswith("/") else url + "/"), digests


def fetch(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` while hashing it; a wrong SHA-256 deletes ``dest``."""
    digest, size, declared = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            declared = response.headers.get("Content-Length")
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {HINT}",
                        path=url) from exc
    except urllib.error.URLError as exc:
        raise DataError(f"cannot download {url}: {exc.reason}; check the network and "
                        "data.mnist_url", path=url) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"download of {url} broke off after {size} bytes ({exc!r}); run again",
                        path=url) from exc
    actual = digest.hexdigest()
    if actual != sha256:
        dest.unlink()
        short = declared is not None and declared.isdigit() and size < int(declared)
        what = f"truncated ({size} of {declared} bytes)" if short else "corrupt"
        raise DataError(f"{dest.name} from {url} is {what}: SHA-256 expected {sha256}, got "
                        f"{actual} ({size} bytes); the download was discarded; {HINT}", path=url)


def read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes: magic number, one size per dimension, data."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (EOFError, OSError, zlib.error) as exc:
        state = "a truncated" if isinstance(exc, EOFError) else "not a valid"
        raise DataError(f"{path.name} is {state} gzip file ({exc}); {HINT}", path=path) from exc
    ndim = magic & 0xFF  # 0x0801: labels, 1 dimension; 0x0803: images, 3 dimensions
    header = 4 * (1 + ndim)
    found = int.from_bytes(raw[:4], "big")
    if found != magic or len(raw) < header:
        raise DataError(f"{path.name} is not an IDX {what} file: magic number {found}, expected "
                        f"{magic}, {len(raw)} bytes; {HINT}", path=path)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) != header + math.prod(dims):
        raise DataError(f"{path.name} holds {len(raw)} bytes but its header declares "
                        f"{'x'.join(map(str, dims))} {what} ({header + math.prod(dims)} bytes); "
                        f"the file is truncated or padded; {HINT}", path=path)
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def load(data: Mapping[str, Any], workdir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Download, verify and parse MNIST into [(train images, labels), (test images, labels)]."""
    base, digests = settings(data)
    splits = []
    for images_name, labels_name in FILES:
        for name in (images_name, labels_name):
            print(f"fetching {base}{name}", flush=True)
            fetch(base + name, workdir / name, digests[name])
        images = read_idx(workdir / images_name, 0x0803, "images")
        labels = read_idx(workdir / labels_name, 0x0801, "labels").astype(np.int64)
        if len(images) != len(labels) or labels.max(initial=0) > 9:
            raise DataError(f"{labels_name} does not fit {images_name}: {len(labels)} labels "
                            f"(largest {labels.max(initial=0)}) for {len(images)} images; "
                            f"MNIST has one label 0..9 per image; {HINT}",
                            path=workdir / labels_name)
        splits.append((images, labels))
    return splits
