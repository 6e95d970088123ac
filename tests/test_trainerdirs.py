"""The recorded Trainer folders ``expckpt reset`` cleans: only ``checkpoint-<step>`` folders, only inside the workspace."""

from __future__ import annotations

import json
from pathlib import Path

from expckpt.store.trainerdirs import clean_trainer_dirs, record_trainer_dir, recorded_trainer_dirs


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "optimizer.pt").write_bytes(b"x")
    return path


def test_only_checkpoint_folders_of_recorded_dirs_are_removed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for name in ("checkpoint-4", "checkpoint-12", "checkpoint-best", "runs"):
        _folder(ws / "hf-out" / name)
    (ws / "hf-out" / "checkpoint-7").write_text("a file, not a folder\n")
    _folder(ws / "other" / "checkpoint-3")  # not recorded
    assert record_trainer_dir(ws, ws / "hf-out")
    assert record_trainer_dir(ws, ws / "hf-out")  # recorded once
    assert recorded_trainer_dirs(ws) == ["hf-out"]
    removed = clean_trainer_dirs(ws)
    assert sorted(p.name for p in removed) == ["checkpoint-12", "checkpoint-4"]
    assert sorted(p.name for p in (ws / "hf-out").iterdir()) == ["checkpoint-7", "checkpoint-best", "runs"]
    assert (ws / "other" / "checkpoint-3").is_dir()


def test_a_folder_outside_the_workspace_is_never_recorded_nor_cleaned(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", _folder(tmp_path / "elsewhere" / "checkpoint-5").parent
    ws.mkdir()
    assert not record_trainer_dir(ws, outside)
    assert not record_trainer_dir(ws, ws)  # the workspace itself: its own files are not the Trainer's
    assert recorded_trainer_dirs(ws) == []
    (ws / "link").symlink_to(outside)
    record = ws / ".dvc" / "tmp" / "expckpt" / "trainer-dirs.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(["../elsewhere", str(outside), "link"]))  # a hand-edited record
    assert clean_trainer_dirs(ws) == []
    assert (outside / "checkpoint-5").is_dir()
