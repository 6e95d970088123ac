"""``expckpt doctor``'s verdict: run A against run B, component by component, and the likely cause.

Two checkpoint payloads (loaded with ``weights_only``) are walked side by side: every tensor of
the model, optimizer, scheduler, each RNG, every extra and stateful object by name, and the
step. dvclive's metrics (``<live>/plots/metrics/*.tsv``) are compared step by step. The cause is
read from *what* differs and *when*:

- the runs differ before B was stopped (metrics of the first K steps, or the checkpoint at step
  K - 1): training is not deterministic, with or without a resume;
- every saved tensor is equal at the end but the metrics are not: what computes the metrics (an
  EMA, an averaged model) is not saved;
- the learning rate differs and the optimizer was driven by a scheduler the checkpoint lacks;
- anything else that diverges after the resume: something that is not in the checkpoint feeds
  training (a generator or value of the user's own), named from the script where possible.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from expckpt.ops.doctor_hints import Hint

__all__ = [
    "Difference",
    "MetricDifference",
    "Verdict",
    "compare_metrics",
    "diagnose",
    "diff_payloads",
    "read_metrics",
    "volatile",
]

_SKIP = frozenset({"format", "expckpt", "best"})
"""expckpt's own bookkeeping: follows from the metrics, compared there."""
README = "see README: Is my resume exact?"
_VOLATILE = re.compile(r"(runtime|_per_second|flos|timestamp)$")


@dataclass(frozen=True)
class Difference:
    """One key of one component that is not equal in A and B."""

    component: str
    key: str
    largest: float | None = None
    """Largest absolute difference (None when not numbers: a shape, dtype or value kind)."""

    def describe(self) -> str:
        where = f"{self.component} {self.key}" if self.key else self.component
        size = f" (largest absolute difference {self.largest:.3g})" if self.largest is not None else ""
        return f"{where} differs{size}"


@dataclass(frozen=True)
class MetricDifference:
    """The first step (dvclive's) whose logged metric differs."""

    step: int
    metric: str
    a: float | None
    b: float | None

    def describe(self) -> str:
        return f"metric {self.metric} at step {self.step}: {_num(self.a)} straight, {_num(self.b)} resumed"


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def volatile(name: str) -> bool:
    """Timings a run logs or keeps (HF's ``train_runtime``, ``*_per_second``, ``total_flos``):
    never equal between two runs, so not compared."""
    return _VOLATILE.search(name) is not None


def _file(name: str, data: torch.Tensor) -> Any:
    """A framework file carried as a byte tensor (HF's checkpoint files), read for comparison:
    JSON as data, torch files with ``weights_only``; None when neither."""
    raw = data.numpy().tobytes()
    try:
        if name.endswith(".json"):
            return json.loads(raw)
        if name.endswith((".pt", ".pth", ".bin")):
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not readable: compared as bytes
        return None
    return None


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if path and volatile(path[-1]):
        return
    if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1 and path:
        content = _file(path[-1], value)
        if content is not None:
            yield from _leaves(content, path)
            return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    elif isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in value):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, str(i)))
    else:
        yield path, value


def _tensor_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float | None]:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False, None
    if torch.equal(a, b):
        return True, None
    if a.is_floating_point() or a.is_complex():
        if torch.allclose(a, b, rtol=0, atol=0, equal_nan=True):
            return True, None
        return False, float((a.double() - b.double()).abs().nan_to_num(nan=math.inf).max())
    if a.dtype == torch.bool:
        return False, None
    return False, float((a.long() - b.long()).abs().max())


def _order(payload: Mapping[str, Any]) -> list[str]:
    keys = [k for k in payload if k not in _SKIP]
    return [k for k in keys if k != "rng"] + (["rng"] if "rng" in keys else [])


def diff_payloads(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[int, list[Difference]]:
    """(tensors equal, every difference) between two checkpoint payloads, in component order."""
    equal = 0
    diffs: list[Difference] = []
    for component in _order({**a, **{k: v for k, v in b.items() if k not in a}}):
        if component not in a or component not in b:
            diffs.append(Difference(component, "", None))
            continue
        left, right = dict(_leaves(a[component])), dict(_leaves(b[component]))
        for path in [*left, *(p for p in right if p not in left)]:
            key = ".".join(path)
            if path not in left or path not in right:
                diffs.append(Difference(component, key, None))
                continue
            x, y = left[path], right[path]
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                same, largest = _tensor_diff(x, y)
                equal += same
                if not same:
                    diffs.append(Difference(component, key, largest))
            elif x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
                numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
                diffs.append(Difference(component, key, abs(float(x) - float(y)) if numeric else None))
    return equal, diffs


def read_metrics(workspace: Path, live_dir: str = "dvclive") -> dict[str, dict[int, float]]:
    """metric -> step -> value, from dvclive's ``plots/metrics`` files."""
    root = workspace / live_dir / "plots" / "metrics"
    found: dict[str, dict[int, float]] = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        name = path.relative_to(root).with_suffix("").as_posix()
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                column = path.stem if path.stem in row else next(iter(reversed(row)))
                try:
                    found.setdefault(name, {})[int(row["step"])] = float(row[column])
                except (KeyError, TypeError, ValueError):
                    continue
    return found


def compare_metrics(
    a: Mapping[str, Mapping[int, float]], b: Mapping[str, Mapping[int, float]], steps: Sequence[int]
) -> tuple[int, MetricDifference | None]:
    """(values equal, the first difference by step) over ``steps``."""
    equal, first = 0, None
    for step in steps:
        for metric in sorted(m for m in set(a) | set(b) if not volatile(m)):
            x, y = a.get(metric, {}).get(step), b.get(metric, {}).get(step)
            if x is None and y is None:
                continue
            if (x is not None and x == y) or (x is not None and y is not None and math.isnan(x) and math.isnan(y)):
                equal += 1
            elif first is None:
                first = MetricDifference(step, metric, x, y)
    return equal, first


@dataclass
class Verdict:
    """What ``expckpt doctor`` found; ``lines()`` for people, ``as_json()`` for CI."""

    stop: int
    """Run B stopped after this step (K - 1, or the first checkpoint after it)."""
    end: int
    """Both runs ended after this step (2K - 1, or the first checkpoint after it)."""
    tensors: int
    metric_values: int
    differences: list[Difference] = field(default_factory=list)
    first_metric: MetricDifference | None = None
    cause: str | None = None
    """None (exact), nondeterministic, unsaved-metric-state, scheduler or outside-state."""
    explanation: str = ""
    hints: list[Hint] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.cause is None

    def lines(self) -> list[str]:
        if self.exact:
            return [f"resume is exact: {self.tensors} tensors and {self.metric_values} metric values equal"]
        out = [f"resume is NOT exact: straight to step {self.end} vs stopped after step {self.stop} and resumed"]
        if self.differences:
            first = self.differences[0]
            n = len(self.differences) - 1
            more = f" (and {n} more key{'s' if n > 1 else ''})" if n else ""
            out.append(f"  first difference at step {self.end}: {first.describe()}{more}")
        else:
            out.append(f"  every saved tensor is equal at step {self.end} ({self.tensors} tensors)")
        if self.first_metric is not None:
            out.append(f"  first metric difference: {self.first_metric.describe()}")
        out.append(f"  likely cause: {self.explanation}")
        out += [f"    {hint}" for hint in self.hints]
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "stopped_after": self.stop,
            "end": self.end,
            "tensors_equal": self.tensors,
            "metric_values_equal": self.metric_values,
            "cause": self.cause,
            "explanation": self.explanation,
            "differences": [vars(d) for d in self.differences],
            "first_metric_difference": vars(self.first_metric) if self.first_metric else None,
            "hints": [{"kind": h.kind, "file": h.file, "line": h.line, "what": h.what} for h in self.hints],
        }


def _has_scheduler(payload: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Mapping) and "last_epoch" in v for v in payload.values())


def _lr_driven(payload: Mapping[str, Any]) -> bool:
    """An optimizer whose param groups carry ``initial_lr``: an LR scheduler drove it."""
    return any(path[-1:] == ("initial_lr",) for k, v in payload.items() if k not in _SKIP for path, _ in _leaves(v))


def diagnose(
    stop: int,
    end: int,
    final: tuple[int, list[Difference]],
    metrics: tuple[int, MetricDifference | None],
    early: MetricDifference | None,
    at_stop: list[Difference] | None,
    final_a: Mapping[str, Any],
    hints: Sequence[Hint],
) -> Verdict:
    """The verdict from the differences at the ``end``, of the metrics after the ``stop``, of the
    metrics up to it (``early``) and of the checkpoints at the stop (``at_stop``, None when run A
    saved none there)."""
    (tensors, diffs), (values, first) = final, metrics
    verdict = Verdict(stop=stop, end=end, tensors=tensors, metric_values=values, differences=diffs, first_metric=first)
    resumed = stop + 1
    if not diffs and first is None and early is None and not at_stop:
        return verdict
    if early is not None or at_stop:
        where = f"step {early.step}" if early is not None else f"step {stop}"
        if early is not None:
            verdict.first_metric = early
        verdict.cause = "nondeterministic"
        verdict.explanation = (
            f"two runs from the same start already differ at {where}, before any stop or resume: training is not"
            " deterministic. Turn on torch.use_deterministic_algorithms(True) (on a GPU also set"
            " CUBLAS_WORKSPACE_CONFIG=:4096:8 and torch.backends.cudnn.benchmark = False) and seed every generator"
            " from params.yaml, not from the clock or the process"
        )
        verdict.hints = [h for h in hints if h.kind == "workers"]
        return verdict
    matched = (
        f"the saved state matched at step {stop}" if at_stop is not None else f"the runs matched up to step {stop}"
    )
    if not diffs:
        verdict.cause = "unsaved-metric-state"
        verdict.explanation = (
            f"{matched} and every saved tensor is equal at the end, but the metrics differ from step"
            f" {first.step if first else resumed}: what computes them is not in the checkpoint: an EMA or averaged"
            f" model, or a metric's running state, not given to TrainingState (e.g. TrainingState(..., ema=ema));"
            f" {README}"
        )
        verdict.hints = [h for h in hints if h.kind == "ema"]
        return verdict
    lr = any(d.component != "rng" and d.key.endswith(".lr") for d in diffs)
    if lr and _lr_driven(final_a) and not _has_scheduler(final_a):
        verdict.cause = "scheduler"
        verdict.explanation = (
            f"{matched} but the learning rate differs after the resume: the LR scheduler is not in the checkpoint;"
            f" give it to TrainingState (TrainingState(model=..., optimizer=..., scheduler=scheduler)); {README}"
        )
        verdict.hints = [h for h in hints if h.kind == "scheduler"]
        return verdict
    verdict.cause = "outside-state"
    named = [h for h in hints if h.kind in ("generator", "workers")]
    generators = [h for h in named if h.kind == "generator"]
    what = (
        "a generator or object of your own not given to TrainingState"
        if named
        else "a value of your own kept outside the state (a counter, list or attribute updated as training goes);"
        " keep it in TrainingState, e.g. TrainingState(..., progress={'count': 0}), and read it from there"
    )
    if generators:
        name = generators[0].name if generators[0].name.isidentifier() else "gen"
        what += (
            f"; register it with `from expckpt.state.generators import GeneratorState` and"
            f" TrainingState(..., {name}=GeneratorState({name})) (a DCP state dict:"
            f" {{..., {name!r}: GeneratorState({name})}})"
        )
    if any(h.kind == "workers" for h in named):
        what += (
            "; DataLoader workers that keep random state of their own restart from a new seed on resume:"
            " use persistent_workers=False or draw the randomness in the main process"
        )
    verdict.explanation = (
        f"{matched} but training diverged at step {resumed}, the first step after the resume:"
        f" something that is not in the checkpoint feeds training: {what} ({README})"
    )
    verdict.hints = named
    return verdict
