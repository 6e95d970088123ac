"""``expckpt doctor`` on the DCP sharded front end: ``examples/dcp`` (FSDP2, 2 gloo ranks under
torchrun, ``ckpt/`` a directory of DCP shards).

In process: a DCP directory read whole into the comparer's payload shape, safely. Slow: the
example resumes exactly (people's output and ``--json``), the user's workspace byte for byte as
before; the example with an unregistered NumPy Generator for the data order gets that diagnosis,
and with the generator in its state dict it is exact again.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import run
from doctorkit import run_doctor, workspace_snapshot
from expckpt.errors import CorruptCheckpointError
from expckpt.ops.doctor_compare import Difference, diff_payloads
from expckpt.ops.doctor_hints import script_hints
from expckpt.serialize.dcpread import STEP_KEY, WATCH_KEY, load_dcp_checkpoint, rng_key
from integrationkit import make_example_project


def _packed(value: Any) -> torch.Tensor:
    """As ``DcpHandler`` keeps its own values: ``torch.save`` bytes in a uint8 tensor."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _save(state: dict[str, Any], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one process, no process group
        dcp.save(state, checkpoint_id=path)
    return path


def _state(weight: float = 1.0) -> dict[str, Any]:
    return {
        "app": {
            "model": {"0.weight": torch.full((2, 3), weight), "0.bias": torch.zeros(2)},
            "optimizer": {"state": {"0.weight": {"step": torch.tensor(4.0)}}, "lr": 0.1},
        },
        "rng": {"mine": torch.arange(3)},  # the user's own key, named like the payload's
        STEP_KEY: torch.tensor(3),
        rng_key(0): _packed({"torch": torch.zeros(4, dtype=torch.uint8)}),
        rng_key(1): _packed({"torch": torch.ones(4, dtype=torch.uint8)}),
        WATCH_KEY: _packed({"best_value": 0.5}),
    }


def test_a_dcp_directory_is_read_whole_into_the_payload_shape_the_comparer_uses(tmp_path: Path) -> None:
    payload = load_dcp_checkpoint(_save(_state(), tmp_path / "a"))

    assert payload["step"] == 3
    assert torch.equal(payload["app"]["model"]["0.weight"], torch.ones(2, 3))
    assert payload["app"]["optimizer"]["lr"] == 0.1  # a non-tensor value, loaded with weights_only
    assert torch.equal(payload["app"]["optimizer"]["state"]["0.weight"]["step"], torch.tensor(4.0))
    assert sorted(payload["rng"]) == ["rank0", "rank1"]
    assert torch.equal(payload["rng"]["rank1"]["torch"], torch.ones(4, dtype=torch.uint8))
    assert torch.equal(payload["state.rng"]["mine"], torch.arange(3))
    assert payload["expckpt"] == {"watch": {"best_value": 0.5}}  # the watch: bookkeeping, not compared

    other = load_dcp_checkpoint(_save(_state(weight=1.5), tmp_path / "b"))
    assert diff_payloads(payload, payload) == (6, [])  # 2 weights, a step, the user's, 2 ranks' RNG
    assert diff_payloads(payload, other) == (5, [Difference("app", "model.0.weight", 0.5)])


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch ran",))


def test_a_dcp_directory_that_would_run_code_or_is_not_dcp_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _save({"app": {"hook": _RunsCode()}, STEP_KEY: torch.tensor(0)}, tmp_path / "evil")
    with pytest.raises(CorruptCheckpointError) as caught:
        load_dcp_checkpoint(path)
    assert "is not a readable torch.distributed.checkpoint directory (UnpicklingError: " in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ran").exists()

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(CorruptCheckpointError, match=r"broken is not a readable torch.distributed.checkpoint"):
        load_dcp_checkpoint(tmp_path / "broken")


def test_a_generator_in_a_dcp_state_dict_counts_as_registered(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "order_rng = np.random.default_rng(0)\n"
        "aug = np.random.default_rng(1)\n"
        'state = {"app": AppState(model, optimizer), "order": GeneratorState(order_rng)}\n'
    )
    assert [h.name for h in script_hints(script, tmp_path)] == ["aug"]


# -- real runs: the example, correct, flawed and fixed --------------------------------------------
UNREGISTERED_ORDER = [
    (
        "def train_epoch(",
        "order_rng = np.random.default_rng(20)  # the data order, the same on every rank\n\n\ndef train_epoch(",
    ),
    (
        "    for batch in position.sampled(epoch, sampler, batch_size):\n",
        "    order = order_rng.permutation(len(data))[dist.get_rank() :: dist.get_world_size()]\n"
        "    for batch in position.batches(epoch, lambda: torch.from_numpy(order), batch_size):\n",
    ),
]
REGISTERED_ORDER = [
    *UNREGISTERED_ORDER,
    (
        "from expckpt.errors import ExpCkptError\n",
        "from expckpt.errors import ExpCkptError\nfrom expckpt.state.generators import GeneratorState\n",
    ),
    (
        '        "position": DataPosition(),  # where in the epoch\n',
        '        "position": DataPosition(),  # where in the epoch\n        "order": GeneratorState(order_rng),\n',
    ),
]


def _dcp_project(path: Path, edits: list[tuple[str, str]]) -> Path:
    project = make_example_project(path, "dcp")
    script = project / "train.py"
    text = script.read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    script.write_text(text)
    if edits:
        run("git", "commit", "-qam", "the data order from a generator of the script's own", cwd=project)
    return project


@pytest.mark.slow
def test_the_dcp_example_resumes_exactly_and_the_workspace_is_untouched(tmp_path: Path) -> None:
    project = _dcp_project(tmp_path / "p", [])
    run("dvc", "exp", "run", "-n", "mine", cwd=project)  # the user's own checkpoints, cache and ckpt/
    before = workspace_snapshot(project, "ckpt")
    assert sorted(before["ckpt"]) == ["ckpt/.metadata", "ckpt/__0_0.distcp", "ckpt/__1_0.distcp"]  # type: ignore[arg-type]

    code, out, err = run_doctor(project, tmp=tmp_path / "tmp")
    assert code == 0, err + out
    assert out.startswith("resume is exact: ") and out.rstrip().endswith(" metric values equal"), out
    assert "[3/3] run B resumed done in" in err
    tensors, values = (int(word) for word in out.split() if word.isdigit())

    code, out, err = run_doctor(project, "--json", tmp=tmp_path / "tmp")
    assert code == 0, err + out
    verdict = json.loads(out)
    assert (verdict["exact"], verdict["cause"]) == (True, None)
    assert (verdict["tensors_equal"], verdict["metric_values_equal"]) == (tensors, values)
    assert tensors >= 20 and values == 4  # model, AdamW state, 2 ranks' RNG; loss and acc at steps 2, 3
    assert workspace_snapshot(project, "ckpt") == before


@pytest.mark.slow
def test_a_dcp_script_with_its_own_data_order_generator_gets_that_diagnosis_and_the_fix_is_exact(
    tmp_path: Path,
) -> None:
    code, out, err = run_doctor(_dcp_project(tmp_path / "bad", UNREGISTERED_ORDER), "--json", tmp=tmp_path / "tmp")

    assert code == 1, err + out
    verdict = json.loads(out)
    assert (verdict["exact"], verdict["cause"]) == (False, "outside-state")
    assert verdict["differences"][0]["component"] == "model"  # the weights differ, by name
    assert verdict["explanation"].startswith(
        "the saved state matched at step 1 but training diverged at step 2, the first step after the resume:"
        " something that is not in the checkpoint feeds training: a generator or object of your own"
    )  # "the saved state matched": the two directory checkpoints at the stop were compared
    assert "{..., 'order_rng': GeneratorState(order_rng)}" in verdict["explanation"]
    assert [h["what"] for h in verdict["hints"]] == [
        "`order_rng` is a NumPy Generator (np.random.default_rng(...)) not given to TrainingState"
    ]

    code, out, err = run_doctor(_dcp_project(tmp_path / "fixed", REGISTERED_ORDER), tmp=tmp_path / "tmp")
    assert code == 0, err + out
    assert out.startswith("resume is exact: "), out
