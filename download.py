"""The ``download`` stage of the example pipeline: put a digit dataset in ``data/``.

``data.source`` in params.yaml picks where the digits come from:

- ``digits`` (default, offline): the 1,797 handwritten 8x8 digits bundled with scikit-learn,
  split into train and test by ``data.test_fraction``.
- ``mnist``: the four MNIST files from ``data.mnist_url``, each checked by SHA-256 (mnist.py).

Either way ``data/`` ends up holding ``train.npz`` and ``test.npz`` (``images`` uint8 [N, H, W],
``labels`` int64 [N]; no pickles) and ``meta.json``. It is built beside the old ``data/`` and
renamed into place only when complete, so a failed run leaves the old one as it was.

Usage: ``python download.py [--params params.yaml] [--out data] [-v]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from expckpt.errors import ConfigError, ExpCkptError, StorageError

Split = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, H, W], labels int64 [N])


def read_data_params(path: Path) -> dict[str, Any]:
    """Return the ``data:`` section of the params file (empty when there is none)."""
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read params file {str(path)!r} ({exc.strerror}); run in "
                          "the project directory or pass --params PATH",
                          key="params", value=str(path)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {exc}",
                          key="params", value=str(path)) from exc
    data = (params.get("data") or {}) if isinstance(params, dict) else params
    if not isinstance(data, dict):
        raise ConfigError(f"data in {str(path)!r} must be a mapping (source: digits, "
                          f"test_fraction: 0.2), got {data!r}", key="data", value=data)
    return data


def load_digits_split(test_fraction: float) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits scaled to 0..255, split the same way on every run."""
    number = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not (number and 0 < test_fraction < 1):
        raise ConfigError("data.test_fraction must be a number between 0 and 1 (exclusive), "
                          f"got {test_fraction!r}", key="data.test_fraction", value=test_fraction)
    from sklearn.datasets import load_digits  # slow to import, and only this source needs it

    digits = load_digits()
    images = (digits.images.astype(np.int64) * 255 // 16).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    n = len(labels)
    n_test = min(max(math.ceil(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(0).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def publish(out: Path, new: Path, train: Split, test: Split, meta: dict[str, Any]) -> None:
    """Write the dataset into the new directory ``new``, then swap it in for ``out``.

    Files are flushed to disk first; then ``out`` moves aside to ``new``'s sibling ``old`` and
    ``new`` takes its place. If that last rename fails, the previous data is put back.
    """
    old = new.with_name("old")
    try:
        new.mkdir()
        np.savez(new / "train.npz", images=train[0], labels=train[1])
        np.savez(new / "test.npz", images=test[0], labels=test[1])
        (new / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for path in new.iterdir():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        if out.exists():
            out.rename(old)
        try:
            new.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc}; nothing was replaced", path=out) from exc


def build_dataset(params_path: Path, out: Path) -> dict[str, Any]:
    """Read the params, replace ``out`` with the dataset, and return its ``meta.json``."""
    data = read_data_params(params_path)
    source = data.get("source") or "digits"
    if source not in ("digits", "mnist"):
        raise ConfigError(f"data.source is {source!r}; allowed values are 'digits', 'mnist'",
                          key="data.source", value=source)
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out} exists and is not a directory; move it away or choose "
                           "another --out", path=out)
    try:  # scratch space beside `out`, so that renames stay on one file system
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise StorageError(f"cannot create a directory in {out.parent}: {exc}",
                           path=out.parent) from exc
    try:
        if source == "digits":
            train, test = load_digits_split(data.get("test_fraction", 0.2))
        else:
            import mnist  # mnist.py, beside this file; only this source needs it

            train, test = mnist.load(data, workdir=scratch)
        height, width = train[0].shape[1:]
        meta = {"source": source, "height": height, "width": width, "classes": 10,
                "train": len(train[1]), "test": len(test[1])}
        publish(out, scratch / "new", train, test, meta)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the downloads and the previous data
    return meta


def main(argv: list[str] | None = None) -> int:
    """Run the stage: exit 0, or 1 with one line on stderr saying what is wrong."""
    parser = argparse.ArgumentParser(prog="download.py", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        meta = build_dataset(args.params, args.out)
    except ExpCkptError as exc:
        if args.verbose:
            traceback.print_exc()
        print("download.py: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    print(f"{args.out}/: {meta['train']} train, {meta['test']} test images "
          f"{meta['height']}x{meta['width']} from {meta['source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
