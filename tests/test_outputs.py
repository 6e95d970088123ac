"""outputs: capture every checkpoint output's state, write complete hashed temp files, and leave a
directory output's unchanged files alone (in process, no Git)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from expckpt.serialize.atomic import TEMP_MARK
from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.serialize.dirout import WrittenDir
from expckpt.errors import StorageError
from expckpt.train.outputs import OutputFiles
from expckpt.state.state import TrainingState
from expckpt.state.stateset import StateFiles
from expckpt.train.wiring import OutputSpec


def state(seed: int = 0, frozen: bool = False) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    if frozen:
        for p in model[0].parameters():
            p.requires_grad_(False)
    return TrainingState(
        model=model, optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    )


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(f"*{TEMP_MARK}*"))


def test_each_file_output_gets_a_complete_hashed_temp_file_published_only_on_demand(tmp_path: Path) -> None:
    files = OutputFiles([OutputSpec("model.pt", tmp_path / "model.pt"), OutputSpec("ema.pt", tmp_path / "ema.pt")])
    main, ema = state(0), state(1)
    payloads = files.capture(StateFiles({"model.pt": main, "ema.pt": ema}))
    assert list(payloads) == ["model.pt", "ema.pt"]
    items = files.write(payloads)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "ema.pt").exists(), "nothing published yet"
    for item in items:
        assert hashlib.md5(item.tmp.read_bytes()).hexdigest() == item.md5 and item.tmp.stat().st_size == item.size
        item.publish()
    files.published(items)
    assert temp_files(tmp_path) == []
    for name, st in (("model.pt", main), ("ema.pt", ema)):
        loaded = load_checkpoint(tmp_path / name)
        assert all(torch.equal(loaded["model"][k], v) for k, v in st.model.state_dict().items()), name


def test_a_failed_write_leaves_no_temp_file_of_any_output(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where a directory should be")
    files = OutputFiles([OutputSpec("model.pt", tmp_path / "model.pt"), OutputSpec("x/ema.pt", blocked / "ema.pt")])
    payloads = files.capture(StateFiles({"model.pt": state(0), "x/ema.pt": state(1)}))
    with pytest.raises(StorageError):
        files.write(payloads)
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "model.pt").exists()


def test_a_directory_output_rewrites_only_the_files_whose_bytes_changed(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt"
    files = OutputFiles([OutputSpec("ckpt", dest, is_dir=True)])
    st = state(frozen=True)
    payloads = files.capture(StateFiles({"ckpt": st}))
    assert set(payloads["ckpt"]) == {"expckpt.pt", "model/0.pt"}  # the frozen layer has a file of its own
    [first] = files.write(payloads)
    assert isinstance(first, WrittenDir) and sorted(first.changed) == ["expckpt.pt", "model/0.pt"]
    first.publish()
    files.published([first])
    frozen_inode = (dest / "model" / "0.pt").stat().st_ino

    with torch.no_grad():
        st.model[1].weight.add_(1.0)  # a training step changes only the trainable layer
    [second] = files.write(files.capture(StateFiles({"ckpt": st})))
    assert sorted(second.changed) == ["expckpt.pt"] and sorted(second.entries) == ["expckpt.pt", "model/0.pt"]
    assert second.entries["model/0.pt"] == first.entries["model/0.pt"] and second.md5 != first.md5
    second.publish()
    assert (dest / "model" / "0.pt").stat().st_ino == frozen_inode
    assert temp_files(tmp_path) == []
