"""Lightning pauses at the next batch and resumes inside the epoch, bitwise (issue 24, B): a real
``dvc exp run`` of ``examples/lightning`` (its ``ResumableLoader`` keeps the position), and
SIGTERM in the middle of a batch with the example's model and loaders in this process.

As in ``test_example_pause.py``, the request to a ``dvc exp run`` arrives while the run publishes
epoch 0 (``EXPCKPT_PAUSE_AT=after-ref:0`` holds it there), so the run pauses after the first
batch of epoch 1: mid-epoch, every time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from conftest import REPO, run
from contractkit import back_to_branch, kill_tree, start, wait_for
from integrationkit import baseline, checkpoint_refs, make_example_project, meta, payload, same, training_state
from test_example_pause import HOLD, request_pause

EPOCHS = 3
BATCHES = 23  # 1,438 training digits, 64 a batch


def lightning(loaded: dict[str, Any]) -> dict[str, Any]:
    """Lightning's own checkpoint dict inside an expckpt checkpoint."""
    return loaded.get("lightning") or loaded["scaler"]


def position(loaded: dict[str, Any]) -> dict[str, Any]:
    """The ``ResumableLoader``'s state, saved by Lightning with its fit loop."""
    (state,) = lightning(loaded)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    return state


def exact(loaded: dict[str, Any]) -> dict[str, Any]:
    """What must be bitwise equal after a resume: weights, RNG, Lightning's optimizer and scheduler."""
    theirs = lightning(loaded)
    return {
        **training_state(loaded),
        "optimizer_states": theirs["optimizer_states"],
        "lr_schedulers": theirs["lr_schedulers"],
        "global_step": theirs["global_step"],
        "epoch": theirs["epoch"],
    }


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    p = make_example_project(tmp_path_factory.mktemp("lightning") / "p", "lightning", epochs=EPOCHS)
    base = baseline(p)
    run("dvc", "exp", "run", "-n", "ref", cwd=p)
    reference = checkpoint_refs(p, base, "ref")
    assert sorted(reference) == list(range(EPOCHS))
    return {"project": p, "base": base, "reference": reference}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "where"),
    [("stop", (1, 1, True)), ("SIGTERM", (0, BATCHES, False))],
    ids=["stop-mid-epoch", "sigterm-lightning-stops-at-the-epoch-end"],
)
def test_lightning_pauses_at_the_next_batch_and_resumes_bitwise(
    ref: dict[str, Any], how: str, where: tuple[int, int, bool]
) -> None:
    """``expckpt stop`` (SIGUSR1 alike) pauses after the first batch of epoch 1. SIGTERM reaches
    Lightning too, which stops ``fit`` at the end of the epoch under way (epoch 0, just published):
    paused there, the same exact resume."""
    p, base, reference = ref["project"], ref["base"], ref["reference"]
    run("expckpt", "reset", cwd=p)
    held_name, resumed_name = f"held-{how.lower()}", f"resumed-{how.lower()}"
    proc = start(p, held_name, env=HOLD)
    try:
        wait_for(p, base, held_name, proc, lambda refs: 0 in refs)  # held just after publishing it
        request_pause(how, p, held_name)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            kill_tree(proc, held_name, p)
    back_to_branch(p)
    held = checkpoint_refs(p, base, held_name)
    why = "expckpt stop" if how == "stop" else how
    line = rf"^expckpt: paused by {why} at step 1 \({held_name}@1\); exiting with status 75"
    assert re.search(line, output, re.M), output
    assert sorted(held) == [0, 1] and meta(p, held[1])["paused"] is True
    paused = payload(p, held[1])
    at = position(paused)
    assert (at["epoch"], at["done"], at["mid_epoch"]) == where, f"{BATCHES} batches an epoch"
    assert lightning(paused)["global_step"] == where[0] * BATCHES + where[1]  # optimizer steps done

    run("dvc", "exp", "apply", f"{held_name}@1", cwd=p)
    out = run("dvc", "exp", "run", "-n", resumed_name, cwd=p).stdout
    assert f"Resuming from model.pt ({held_name}@1): 1 steps done" in out, out
    resumed = checkpoint_refs(p, base, resumed_name)
    assert sorted(resumed) == [1, 2] and meta(p, resumed[1])["parent"] == held[1]
    for step in (1, 2):
        ours, theirs = payload(p, resumed[step]), payload(p, reference[step])
        assert same(exact(ours), exact(theirs)), f"step {step} differs from the uninterrupted run"
        assert position(ours)["mid_epoch"] is False
    ours, theirs = meta(p, resumed[2])["metrics"], meta(p, reference[2])["metrics"]
    assert ours == theirs  # the epoch after the paused one logs what the uninterrupted run logged


@pytest.mark.slow
def test_lightning_ddp_pauses_mid_epoch_and_resumes_bitwise(tmp_path: Path) -> None:
    """Under ``torchrun --nproc_per_node 2`` every rank takes the pause at the same batch (each
    its share of the order); the resume ends bitwise, every rank's RNG included."""
    p = make_example_project(tmp_path / "p", "lightning", epochs=EPOCHS, devices=2)
    dvc_yaml = (p / "dvc.yaml").read_text()
    (p / "dvc.yaml").write_text(
        dvc_yaml.replace("cmd: python train.py", "cmd: torchrun --standalone --nproc_per_node 2 train.py")
    )
    run("git", "commit", "-qam", "DDP", cwd=p)
    base = baseline(p)
    run("dvc", "exp", "run", "-n", "ref", cwd=p)
    reference = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    proc = start(p, "held", env=HOLD)
    try:
        wait_for(p, base, "held", proc, lambda refs: 0 in refs)
        request_pause("stop", p, "held")
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            kill_tree(proc, "held", p)
    back_to_branch(p)
    held = checkpoint_refs(p, base, "held")
    assert "expckpt: paused by expckpt stop at step 1 (held@1)" in output, output
    paused = payload(p, held[1])
    at = position(paused)
    assert (at["epoch"], at["done"], at["mid_epoch"]) == (1, 1, True)
    assert lightning(paused)["global_step"] == 12 + 1  # 719 digits a rank, 64 a batch: 12 batches an epoch

    run("dvc", "exp", "apply", "held@1", cwd=p)
    run("dvc", "exp", "run", "-n", "resumed", cwd=p)
    resumed = checkpoint_refs(p, base, "resumed")
    assert sorted(resumed) == [1, 2]
    ours, theirs = payload(p, resumed[2]), payload(p, reference[2])
    assert same(exact(ours), exact(theirs)) and same(ours["extras"], theirs["extras"])


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_example", REPO / "examples" / "lightning" / "train.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def _fit(
    example: ModuleType,
    folder: Path,
    epochs: int,
    signal_at: tuple[int, int] | None = None,
    signum: int = signal.SIGTERM,
    plain_loader: bool = False,
) -> None:
    """The example's ``fit`` in ``folder`` (no ``dvc exp run``: model.pt is written there);
    ``signal_at`` = (epoch, batch): ``signum`` to this process as that batch starts."""
    import lightning.pytorch as pl

    from expckpt.integrations.lightning import ExpCkptCallback

    class Sigterm(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if (trainer.current_epoch, args[-1]) == signal_at:
                os.kill(os.getpid(), signum)

    os.chdir(folder)
    pl.seed_everything(20, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Sigterm(), ExpCkptCallback("model.pt", {"every": 1, "keep_last": None})],
    )
    train, val = example.digits_loaders(64, 20)
    if plain_loader:
        train = torch.utils.data.DataLoader(train.dataset, batch_size=64, shuffle=True)
    trainer.fit(example.DigitsMLP(0.01), train, val)


def test_sigterm_inside_a_batch_pauses_after_it_and_the_resume_is_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes' SIGTERM while batch 5 of epoch 1 trains: Lightning and expckpt both hear it;
    the pause is saved after that batch (mid-epoch, exit 75), and ``fit`` again ends bitwise
    equal to a run never stopped."""
    example = _example()
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        (tmp_path / "ref").mkdir()
        _fit(example, tmp_path / "ref", 3)
        (tmp_path / "run").mkdir()
        with pytest.raises(SystemExit) as stopped:
            _fit(example, tmp_path / "run", 3, signal_at=(1, 5))
        assert stopped.value.code == 75
        paused = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
        at = position(paused)
        assert (at["epoch"], at["done"], at["mid_epoch"]) == (1, 6, True)
        assert lightning(paused)["global_step"] == BATCHES + 6
        _fit(example, tmp_path / "run", 3)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    ours = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert same(exact(ours), exact(theirs))


@pytest.mark.parametrize(
    ("plain_loader", "batch"), [(True, 5), (False, BATCHES - 1)], ids=["plain-dataloader", "last-batch"]
)
def test_a_pause_waits_for_the_epoch_end_when_a_batch_boundary_would_not_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plain_loader: bool, batch: int
) -> None:
    """A plain ``DataLoader`` has no position to resume; after the last batch validation comes
    first: SIGUSR1 there pauses at the end of the epoch (its checkpoint, marked paused, exit 75)."""
    example = _example()
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with pytest.raises(SystemExit) as stopped:
            _fit(example, tmp_path, 3, signal_at=(1, batch), signum=signal.SIGUSR1, plain_loader=plain_loader)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert stopped.value.code == 75
    paused = torch.load(tmp_path / "model.pt", weights_only=True)
    assert paused["step"] == 1 and lightning(paused)["global_step"] == 2 * BATCHES
    assert lightning(paused)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2
