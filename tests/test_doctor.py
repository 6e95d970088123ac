"""``expckpt doctor``: the stop hook, the comparison, the diagnosis, and real runs of real scripts.

In process: ``EXPCKPT_STOP_AFTER_STEP`` in ``Checkpointer.save``, payload and metric diffs, each
diagnosis branch, the script hints and bad input. Slow: ``expckpt doctor`` on the example (exact,
the user's workspace byte for byte as before) and on one flawed tiny script per cause.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_project, run, train_in_exp_env
from integrationkit import make_example_project
from doctorkit import DVC_YAML, plain_project, run_doctor, tiny_project, workspace_snapshot
from expckpt.train.checkpointer import Checkpointer
from expckpt.ops.doctor_compare import (
    Difference,
    MetricDifference,
    compare_metrics,
    diagnose,
    diff_payloads,
    read_metrics,
)
from expckpt.ops.doctor_hints import Hint, script_hints
from expckpt.ops.doctor_run import copy_workspace, doctor_plan
from expckpt.errors import ConfigError, ProjectError
from expckpt.state.generators import GeneratorState
from expckpt.store.project import Project
from expckpt.state.state import TrainingState
from expckpt.policy.stopafter import ENV, REASON, stop_after_step, stop_reason
from inprocess import dvc_env, new_repo, new_state, refs, train_step


# -- the core hook -----------------------------------------------------------------------------
def test_stop_after_step_reads_a_step_and_refuses_anything_else() -> None:
    assert stop_after_step({}) is None
    assert stop_after_step({ENV: ""}) is None
    assert stop_after_step({ENV: "3"}) == 3
    assert (stop_reason(2, 3), stop_reason(3, 3), stop_reason(5, 3), stop_reason(5, None)) == (
        None,
        REASON,
        REASON,
        None,
    )
    with pytest.raises(ConfigError, match=r"EXPCKPT_STOP_AFTER_STEP must be a step number \(0 or more\), got '-1'"):
        stop_after_step({ENV: "-1"})


def test_the_named_step_is_saved_and_stops_training_whatever_every_says(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    state = new_state()
    ckpt = Checkpointer.from_env(config={"every": 5}, env={**dvc_env(repo, "run"), ENV: "2"})
    ckpt.restore(state)

    decisions = [ckpt.save(state, step, train_step(state, step)) for step in range(3)]
    ckpt.close(state)

    assert [(d.saved, d.stop) for d in decisions] == [(False, None), (False, None), (True, "doctor stop")]
    assert sorted(refs(repo)) == ["run@2"]


# -- comparing ----------------------------------------------------------------------------------
def _payload(weight: float = 1.0, lr: float = 0.1, numpy_key: int = 7) -> dict:
    return {
        "format": "expckpt/1",
        "step": 3,
        "model": {"weight": torch.full((2, 2), weight), "bias": torch.zeros(2)},
        "optimizer": {"state": {}, "param_groups": [{"lr": lr, "params": [0, 1]}]},
        "rng": {"torch": torch.zeros(4, dtype=torch.uint8), "numpy": ["MT19937", torch.tensor([numpy_key]), 0, 0, 0.0]},
        "expckpt": {"watch": {"best": 0.5}},
    }


@pytest.mark.parametrize(
    ("b", "expected"),
    [
        (_payload(), []),
        (_payload(weight=1.25), [Difference("model", "weight", 0.25)]),
        (_payload(lr=0.05), [Difference("optimizer", "param_groups.0.lr", pytest.approx(0.05))]),
        (_payload(numpy_key=8), [Difference("rng", "numpy.1", 1.0)]),
        ({**_payload(), "scheduler": {"last_epoch": 3}}, [Difference("scheduler", "", None)]),
    ],
)
def test_payloads_are_compared_key_by_key_with_the_largest_difference(b: dict, expected: list) -> None:
    equal, diffs = diff_payloads(_payload(), b)
    assert diffs == expected
    assert equal == 4 - sum(d.component in ("model", "rng") for d in diffs)


def test_metrics_are_read_from_dvclive_and_the_first_difference_is_by_step(tmp_path: Path) -> None:
    for name, rows in (("a", ["0\t1.5", "1\t1.25", "2\t1.0"]), ("b", ["0\t1.5", "1\t1.25", "2\t0.75"])):
        folder = tmp_path / name / "dvclive" / "plots" / "metrics"
        folder.mkdir(parents=True)
        (folder / "loss.tsv").write_text("step\tloss\n" + "\n".join(rows) + "\n")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a == {"loss": {0: 1.5, 1: 1.25, 2: 1.0}}
    assert compare_metrics(a, b, range(2)) == (2, None)
    assert compare_metrics(a, b, range(3)) == (2, MetricDifference(2, "loss", 1.0, 0.75))


GEN = Hint(
    "generator",
    "train.py",
    12,
    "`aug` is a NumPy Generator (np.random.default_rng(...)) not given to TrainingState",
    "aug",
)


@pytest.mark.parametrize(
    ("case", "cause", "says"),
    [
        ("exact", None, "resume is exact: 4 tensors and 2 metric values equal"),
        ("early", "nondeterministic", "already differ at step 0, before any stop or resume"),
        ("metrics only", "unsaved-metric-state", "an EMA or averaged model"),
        ("lr", "scheduler", "the LR scheduler is not in the checkpoint"),
        ("generator", "outside-state", "TrainingState(..., aug=GeneratorState(aug))"),
        ("generator", "outside-state", "train.py:12: `aug` is a NumPy Generator"),
        ("local", "outside-state", "a value of your own kept outside the state"),
    ],
)
def test_the_cause_is_read_from_what_differs_and_when(case: str, cause: str | None, says: str) -> None:
    late = MetricDifference(2, "loss", 1.0, 0.9)
    final = _payload()
    final["optimizer"]["param_groups"][0]["initial_lr"] = 0.1
    args = {
        "exact": ((4, []), (2, None), None, [], final, []),
        "early": (
            (3, [Difference("model", "weight", 0.1)]),
            (0, late),
            MetricDifference(0, "loss", 2.0, 2.1),
            None,
            final,
            [],
        ),
        "metrics only": ((4, []), (1, late), None, [], final, []),
        "lr": ((2, [Difference("optimizer", "param_groups.0.lr", 0.05)]), (1, late), None, [], final, []),
        "generator": ((3, [Difference("model", "weight", 0.1)]), (1, late), None, [], _payload(), [GEN]),
        "local": ((2, [Difference("optimizer", "param_groups.0.lr", 0.05)]), (1, late), None, [], _payload(), []),
    }[case]
    verdict = diagnose(1, 3, *args)
    assert verdict.cause == cause
    assert says in "\n".join(verdict.lines())
    assert json.loads(json.dumps(verdict.as_json()))["exact"] is (cause is None)


def test_the_script_hints_name_unregistered_generators_schedulers_and_workers(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "aug = np.random.default_rng(0)\n"
        "kept = np.random.default_rng(1)\n"
        "order = np.random.RandomState(0).permutation(10)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "sched = torch.optim.lr_scheduler.StepLR(opt, 1)\n"
        "loader = DataLoader(ds, num_workers=2, persistent_workers=True, generator=g)\n"
        "plain = DataLoader(ds, num_workers=0)\n"
        "state = TrainingState(model=model, rng=GeneratorState(kept))\n"
    )
    hints = script_hints(script, tmp_path)
    assert [(h.kind, h.line) for h in hints] == [("generator", 1), ("generator", 4), ("scheduler", 5), ("workers", 6)]
    assert (
        str(hints[1])
        == "train.py:4: `g` is a torch.Generator (torch.Generator(...)), the DataLoader's generator, not given to TrainingState"
    )


@pytest.mark.parametrize(
    "make",
    [lambda: np.random.default_rng(3), lambda: torch.Generator().manual_seed(3), lambda: random.Random(3)],
    ids=["numpy", "torch", "python"],
)
def test_a_generator_state_round_trips_through_a_safe_checkpoint(make: object) -> None:
    generator = make()  # type: ignore[operator]
    draw = {
        np.random.Generator: lambda: generator.normal(size=3).tolist(),
        torch.Generator: lambda: torch.rand(3, generator=generator).tolist(),
        random.Random: lambda: [generator.random() for _ in range(3)],
    }[type(generator)]
    state = TrainingState(gen=GeneratorState(generator))
    draw()
    buffer = io.BytesIO()
    torch.save(state.capture(), buffer)
    expected = draw()
    state.restore(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert draw() == expected


def test_a_generator_state_refuses_what_is_not_a_generator() -> None:
    with pytest.raises(
        ConfigError,
        match=r"GeneratorState needs a numpy\.random\.Generator, torch.Generator or"
        " random.Random, got a int",
    ):
        GeneratorState(3)


# -- bad input, in process ----------------------------------------------------------------------
NO_CHECKPOINT = "stages:\n  train:\n    cmd: python train.py\n    outs: [model.pt]\n"


@pytest.mark.parametrize(
    ("dvc_yaml", "stage", "steps", "error", "match"),
    [
        (None, None, 0, ConfigError, r"--steps must be a whole number of steps, 1 or more, got 0"),
        (None, "fit", 2, ConfigError, r"dvc.yaml has no stage 'fit' \(it has: train\); pass one of them with --stage"),
        (
            NO_CHECKPOINT,
            None,
            2,
            ProjectError,
            r"dvc.yaml has no output with `checkpoint: true`, so there is no resume",
        ),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(
    tmp_path: Path, dvc_yaml: str | None, stage: str | None, steps: int, error: type, match: str
) -> None:
    project = tiny_project(tmp_path / "p", **({"dvc_yaml": dvc_yaml} if dvc_yaml else {}))
    with pytest.raises(error, match=match):
        doctor_plan(Project.discover(project, env={}), stage, steps)


def test_the_copy_holds_the_workspace_as_it_is_but_no_checkpoint_and_a_cache_of_its_own(tmp_path: Path) -> None:
    with_data = DVC_YAML.replace("stages:\n", "stages:\n  data:\n    cmd: python make.py\n    outs: [data]\n")
    project = tiny_project(tmp_path / "p", dvc_yaml=with_data)
    (project / "data").mkdir()
    (tmp_path / "cache-object").write_text("data")
    (project / "data" / "x.txt").symlink_to(tmp_path / "cache-object")  # DVC's cache.type: symlink
    (project / ".gitignore").write_text("/model.pt\n/data\n")
    (project / "notes.py").write_text("untracked")
    (project / "train.py").write_text("edited, not committed")
    (project / "model.pt").write_bytes(b"the user's checkpoint")
    (project / "dvclive").mkdir()
    (project / "dvclive" / "metrics.json").write_text("{}")
    plan = doctor_plan(Project.discover(project, env={}), None, 2)

    copy = copy_workspace(plan, tmp_path / "copy")

    assert (copy / "notes.py").read_text() == "untracked" and (copy / "train.py").read_text() == "edited, not committed"
    assert (copy / "data" / "x.txt").read_text() == "data" and not (copy / "data" / "x.txt").is_symlink()
    assert not (copy / "model.pt").exists() and not (copy / "dvclive").exists()
    assert f"dir = {copy / '.dvc' / 'cache'}" in (copy / ".dvc" / "config.local").read_text()
    assert run("git", "status", "--porcelain", cwd=copy).stdout == ""
    assert run("git", "rev-list", "--count", "HEAD", cwd=copy).stdout.strip() == "1"


# -- real runs ------------------------------------------------------------------------------------
_snapshot = workspace_snapshot
_doctor = run_doctor


@pytest.mark.slow
def test_the_example_resumes_exactly_and_the_workspace_is_untouched(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=4, device="cpu")
    train_in_exp_env(project, "mine")
    before = _snapshot(project)

    code, out, err = _doctor(project, tmp=tmp_path / "tmp")

    assert code == 0, err
    assert out.startswith("resume is exact: ") and out.rstrip().endswith("metric values equal"), out
    assert "[3/3] run B resumed done in" in err
    assert _snapshot(project) == before


FLAW_CAUSES = [
    ("numpy_generator", "outside-state", "`aug` is a NumPy Generator"),
    ("dataloader_generator", "outside-state", "`g` is a torch.Generator"),
    ("python_random", "outside-state", "`picker` is a Python random.Random"),
    ("scheduler", "scheduler", "`sched` is an LR scheduler"),
    ("ema", "unsaved-metric-state", "`ema` is an EMA / averaged model"),
    ("workers", "outside-state", "DataLoader workers keep random state of their own (persistent_workers=True)"),
    ("nondeterministic", "nondeterministic", None),
    ("local_value", "outside-state", None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("flaw", "cause", "hint"), FLAW_CAUSES, ids=[f[0] for f in FLAW_CAUSES])
def test_each_flawed_script_gets_its_diagnosis(tmp_path: Path, flaw: str, cause: str, hint: str | None) -> None:
    project = tiny_project(tmp_path / "p", flaw)

    code, out, err = _doctor(project, "--json", tmp=tmp_path / "tmp")

    assert code == 1, err
    verdict = json.loads(out)
    assert (verdict["exact"], verdict["cause"]) == (False, cause)
    assert [h["what"] for h in verdict["hints"] if hint and hint in h["what"]] != [] if hint else verdict["hints"] == []
    if flaw == "nondeterministic":
        assert "torch.use_deterministic_algorithms(True)" in verdict["explanation"]
    if flaw == "local_value":
        assert "a value of your own kept outside the state" in verdict["explanation"]


@pytest.mark.slow
def test_the_tiny_correct_script_is_exact_and_a_flawed_one_says_why_in_words(tmp_path: Path) -> None:
    ok = tiny_project(tmp_path / "ok")
    (ok / "params.yaml").write_text("epochs: 4\ncheckpoint:\n  every: 1\n  push: origin\n")  # no remote in the copies
    code, out, err = _doctor(ok, tmp=tmp_path / "tmp")
    assert (code, out.strip()) == (0, "resume is exact: 4 tensors and 2 metric values equal"), err

    code, out, _ = _doctor(tiny_project(tmp_path / "bad", "numpy_generator"), tmp=tmp_path / "tmp")
    assert code == 1
    assert (
        "likely cause: the saved state matched at step 1 but training diverged at step 2, the first step after the"
        " resume: something that is not in the checkpoint feeds training: a generator or object of your own not"
        " given to TrainingState"
    ) in out
    assert (
        "train.py:" in out
        and "`aug` is a NumPy Generator (np.random.default_rng(...)) not given to TrainingState" in out
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (
            ("loss.backward()", "raise SystemExit('boom')"),
            "stage 'train' failed in the doctor's copy (doctor-a, `dvc exp run` exit 255); fix it so `dvc exp run` succeeds,"
            " then try again; its last lines: Running stage 'train': | > python train.py | boom | ERROR: failed to reproduce",
        ),
        (
            ('live.steps(params["epochs"])', "live.steps(3)"),
            "run A of stage 'train' ended after step 2, before step 3: the doctor needs 4 steps; use --steps 1 or train for",
        ),
    ],
)
def test_a_failing_or_short_run_is_one_line_and_leaves_nothing(
    tmp_path: Path, edit: tuple[str, str], says: str
) -> None:
    project = tiny_project(tmp_path / "p")
    script = project / "train.py"
    script.write_text(script.read_text().replace(*edit))
    before = _snapshot_light(project)

    code, out, err = _doctor(project, tmp=tmp_path / "tmp")

    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("expckpt: error: ")]
    assert len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err
    assert _snapshot_light(project) == before


def _snapshot_light(project: Path) -> tuple[str, str, list[str]]:
    return (
        run("git", "status", "--porcelain", "--ignored", "-uall", cwd=project).stdout,
        run("git", "for-each-ref", cwd=project).stdout,
        sorted(os.listdir(project)),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("example", "args"), [("lightning", ()), ("hf", ("--steps", "24")), ("ddp", ())])
def test_each_front_end_example_resumes_exactly(tmp_path: Path, example: str, args: tuple[str, ...]) -> None:
    """Lightning's callback, the HF Trainer's (its steps are global steps: 23 a epoch here) and torchrun DDP."""
    if example == "ddp" and not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    project = make_example_project(tmp_path / "p", example)

    code, out, err = _doctor(project, *args, tmp=tmp_path / "tmp")

    assert code == 0, err + out
    assert out.startswith("resume is exact: "), out


@pytest.mark.slow
def test_a_plain_checkpointer_loop_resumes_exactly_compared_on_its_checkpoints_metrics(tmp_path: Path) -> None:
    """No dvclive: the metrics compared are those each checkpoint commit carries."""
    code, out, err = _doctor(plain_project(tmp_path / "p"), tmp=tmp_path / "tmp")

    assert (code, out.strip()) == (0, "resume is exact: 6 tensors and 2 metric values equal"), err
