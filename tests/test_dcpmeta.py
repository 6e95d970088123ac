"""A DCP directory's ``.metadata`` is checked before DCP unpickles it (``expckpt/serialize/dcpmeta.py``):
DCP's own index passes, a crafted pickle is named and never runs, and ``checkpoint.init_from`` from
such a directory stops with one line."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from expckpt.errors import UnsafeCheckpointError
from expckpt.serialize.dcpmeta import unsafe_global


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def dcp_dir(tmp_path: Path) -> Path:
    """A real DCP checkpoint of a small model, written by one process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to save in a single process"
        torch.manual_seed(0)
        dcp.save({"model": torch.nn.Linear(4, 3).state_dict()}, checkpoint_id=tmp_path / "src")
    return tmp_path / "src"


def test_dcps_own_index_passes_and_a_crafted_one_is_named_without_running(dcp_dir: Path, tmp_path: Path) -> None:
    assert unsafe_global(dcp_dir / ".metadata") is None
    marker = tmp_path / "ran"
    (dcp_dir / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": _RunsCode(marker)}))
    assert unsafe_global(dcp_dir / ".metadata") == f"{os.system.__module__}.system"
    (tmp_path / "junk").write_bytes(b"not a pickle")
    assert (unsafe_global(tmp_path / "junk") or "").startswith("no readable index (")
    assert not marker.exists()


def test_init_from_a_directory_whose_metadata_would_run_code_stops(
    dcp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expckpt import Checkpointer
    from expckpt.integrations.dcp import DcpHandler

    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        good = Checkpointer.from_env(f"{tmp_path}/good/", {"init_from": str(dcp_dir)}, handler=DcpHandler)
        assert good.restore({"model": model}) is None  # DCP's own index: loaded
        good.close()
    torch.manual_seed(0)
    assert torch.equal(model.weight, torch.nn.Linear(4, 3).weight)

    evil = tmp_path / "evil"
    shutil.copytree(dcp_dir, evil)
    marker = tmp_path / "ran"
    (evil / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": _RunsCode(marker)}))
    checkpointer = Checkpointer.from_env(f"{tmp_path}/trial/", {"init_from": str(evil)}, handler=DcpHandler)
    with pytest.raises(
        UnsafeCheckpointError, match=r"its DCP \.metadata holds \S+\.system, not only DCP's index"
    ) as err:
        checkpointer.restore({"model": torch.nn.Linear(4, 3)})
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert not [q for q in tmp_path.iterdir() if ".expckpt-tmp-" in q.name]


def test_resuming_from_a_workspace_directory_whose_metadata_would_run_code_stops(
    dcp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DCP checkpoint pulled from a teammate and applied: resuming reads its ``.metadata`` too."""
    from expckpt import Checkpointer
    from expckpt.integrations.dcp import DcpHandler

    monkeypatch.chdir(tmp_path)
    workspace = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, workspace)
    marker = tmp_path / "ran"
    (workspace / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": _RunsCode(marker)}))
    checkpointer = Checkpointer.from_env(f"{workspace}/", {}, handler=DcpHandler)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system, not only DCP's index"):
        checkpointer.restore({"model": torch.nn.Linear(4, 3)})
    assert not marker.exists()
