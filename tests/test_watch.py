"""watch.flatten_metrics: expckpt's one metric flattener (dvclive's nested summary to flat names)."""

from __future__ import annotations

import math
from pathlib import Path

from expckpt.policy.watch import flatten_metrics


def test_nested_metrics_get_slash_names_and_only_numbers_count() -> None:
    summary = {
        "step": 4,
        "loss": 0.5,
        "train": {"acc": 1, "deep": {"f1": 0.25}},
        "ok": True,
        "note": "x",
        "nan": math.nan,
    }
    flat = flatten_metrics(summary)
    assert set(flat) == {"loss", "train/acc", "train/deep/f1", "nan"}  # dvclive's step left out
    assert flat["train/acc"] == 1.0 and isinstance(flat["train/acc"], float) and math.isnan(flat["nan"])


def test_skip_names_the_keys_left_out_at_every_level() -> None:
    metrics = {"step": 2, "val": {"step": 9, "loss": 0.1}}
    assert flatten_metrics(metrics, skip=frozenset()) == {"step": 2.0, "val/step": 9.0, "val/loss": 0.1}
    assert flatten_metrics(metrics, skip=frozenset({"loss"})) == {"step": 2.0, "val/step": 9.0}


def test_dvclive_s_nonfinite_strings_are_values_so_a_nan_loss_is_seen(tmp_path: Path) -> None:
    """dvclive's ``log_metric`` turns NaN and inf into the strings "nan"/"inf" in its summary."""
    from dvclive import Live

    live = Live(dir=str(tmp_path / "dvclive"), save_dvc_exp=False, dvcyaml=None, report=None)
    live.log_metric("loss", float("nan"))
    live.log_metric("grad", float("-inf"))
    live.log_metric("name", "adam")
    flat = flatten_metrics(dict(live.summary))
    assert math.isnan(flat["loss"]) and flat["grad"] == float("-inf") and "name" not in flat
