"""The workspace note of the last complete checkpoint, its reset mark and the pending mark.

Plain files in a temporary directory: the note is what resuming trusts after a crash, so each
of its states (absent, unreadable, a reset mark, a real note, a pending checkpoint) is read
back here exactly as resuming reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from expckpt.serialize.atomic import md5_file
from expckpt.store.session import SessionNote, hash_with_note


def note_for(path: Path, **changes: object) -> SessionNote:
    """A note describing ``path`` as it is now."""
    st = os.stat(path)
    md5, size = md5_file(path)
    note = SessionNote(
        ref="refs/exps/ab/cdef/run@3",
        commit="c" * 40,
        md5=md5,
        size=size,
        step=3,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
    )
    return replace(note, **changes)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "model.pt").write_bytes(b"weights")
    return tmp_path


def test_note_round_trips_and_lives_under_dvc_tmp(workspace: Path) -> None:
    note = note_for(workspace / "model.pt", applied="a" * 40)

    note.write(workspace, "model.pt")

    assert SessionNote.path_for(workspace, "model.pt") == workspace / ".dvc" / "tmp" / "expckpt" / "model.pt.json"
    assert SessionNote.read(workspace, "model.pt") == note


def test_nested_checkpoint_paths_get_one_flat_note_each(workspace: Path) -> None:
    a, b = note_for(workspace / "model.pt", step=1), note_for(workspace / "model.pt", step=2)

    a.write(workspace, "models/a.pt")
    b.write(workspace, "models__a.pt/x")

    assert SessionNote.path_for(workspace, "models/a.pt").name == "models__a.pt.json"
    assert SessionNote.path_for(workspace, "models/a.pt").parent == workspace / ".dvc" / "tmp" / "expckpt"
    assert SessionNote.read(workspace, "models/a.pt") == a
    assert SessionNote.read(workspace, "models__a.pt/x") == b


def test_a_note_of_an_older_version_without_applied_still_reads(workspace: Path) -> None:
    note = note_for(workspace / "model.pt")
    fields = {k: v for k, v in vars(note).items() if k != "applied"}
    path = SessionNote.path_for(workspace, "model.pt")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fields))

    assert SessionNote.read(workspace, "model.pt") == replace(note, applied=None)


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"ref": "r"}', '{"reset": true}', json.dumps({"x": 1})])
def test_a_missing_or_unreadable_note_reads_as_none(workspace: Path, content: str) -> None:
    assert SessionNote.read(workspace, "model.pt") is None
    path = SessionNote.path_for(workspace, "model.pt")
    path.parent.mkdir(parents=True)
    path.write_text(content)

    assert SessionNote.read(workspace, "model.pt") is None


def test_clear_leaves_a_reset_mark_that_the_first_checkpoint_replaces(workspace: Path) -> None:
    note_for(workspace / "model.pt").write(workspace, "model.pt")

    SessionNote.clear(workspace, "model.pt")

    assert SessionNote.was_reset(workspace, "model.pt")
    assert SessionNote.read(workspace, "model.pt") is None
    fresh = note_for(workspace / "model.pt", step=0)
    fresh.write(workspace, "model.pt")
    assert not SessionNote.was_reset(workspace, "model.pt")
    assert SessionNote.read(workspace, "model.pt") == fresh


def test_forget_reset_drops_the_mark_but_never_a_real_note(workspace: Path) -> None:
    SessionNote.clear(workspace, "model.pt")
    SessionNote.forget_reset(workspace, "model.pt")
    assert not SessionNote.path_for(workspace, "model.pt").exists()

    note = note_for(workspace / "model.pt")
    note.write(workspace, "model.pt")
    SessionNote.forget_reset(workspace, "model.pt")
    assert SessionNote.read(workspace, "model.pt") == note
    assert not SessionNote.was_reset(workspace, "model.pt")


def test_hash_with_note_trusts_the_note_only_while_the_file_is_untouched(workspace: Path) -> None:
    model = workspace / "model.pt"
    real = md5_file(model)
    trusted = note_for(model, md5="f" * 32)  # a note whose stat matches: no rehash

    assert hash_with_note(model, trusted) == ("f" * 32, trusted.size)
    assert hash_with_note(model, None) == real
    assert hash_with_note(model, replace(trusted, inode=trusted.inode + 1)) == real
    assert hash_with_note(model, replace(trusted, mtime_ns=trusted.mtime_ns - 1)) == real
    model.write_bytes(b"weights, but longer")
    assert hash_with_note(model, trusted) == md5_file(model)


def test_pending_mark_round_trips_and_is_separate_from_the_note(workspace: Path) -> None:
    note = note_for(workspace / "model.pt")
    note.write(workspace, "model.pt")
    assert SessionNote.pending(workspace, "model.pt") is None

    SessionNote.mark_pending(workspace, "model.pt", "refs/exps/ab/cdef/run@4", "e" * 32)

    assert SessionNote.pending(workspace, "model.pt") == ("refs/exps/ab/cdef/run@4", "e" * 32)
    assert SessionNote.read(workspace, "model.pt") == note
    SessionNote.clear_pending(workspace, "model.pt")
    assert SessionNote.pending(workspace, "model.pt") is None
    SessionNote.clear_pending(workspace, "model.pt")  # already gone: fine
    assert SessionNote.read(workspace, "model.pt") == note


def test_an_unreadable_pending_mark_reads_as_none(workspace: Path) -> None:
    SessionNote.mark_pending(workspace, "model.pt", "r", "m")
    pending = SessionNote.path_for(workspace, "model.pt").with_suffix(".pending.json")
    assert pending.is_file()
    pending.write_text('{"ref": "r"}')

    assert SessionNote.pending(workspace, "model.pt") is None
