"""watch.flatten_metrics: expckpt's one metric flattener (dvclive's nested summary to flat names)."""

from __future__ import annotations

import math

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
