"""The user's own files behind a symlinked checkpoint output (issue 21 item 4): a directory
output ``ckpt/`` that links to a scratch disk holding a file of the user's. Publishing a
directory checkpoint removes files its manifest does not list, so that file was deleted; now
the run is refused before training, in one line, and the file stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import run
from expckpt.errors import ProjectError
from test_dirout import train
from test_multi_outputs import toy_project


def test_symlinked_directory_output_is_refused_and_the_users_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "notes.txt").write_text("the user's own file")
    os.symlink(scratch, proj / "ckpt")

    with pytest.raises(ProjectError) as caught:
        train(proj, "a", range(2), monkeypatch)

    assert str(caught.value) == (
        f"checkpoint output ckpt goes through a symbolic link (ckpt -> {scratch}); expckpt and DVC replace what is"
        " inside an output, so other files behind the link could be deleted: make ckpt a real directory (to keep"
        " checkpoints on another disk, put DVC's cache there: `dvc cache dir <path>`)"
    )
    assert (scratch / "notes.txt").read_text() == "the user's own file"
    assert sorted(os.listdir(scratch)) == ["notes.txt"], "nothing written through the link"
    assert run("git", "for-each-ref", "refs/exps", cwd=proj).stdout == ""
