"""show: checkpoint chains as a table for people (DVC 2's glyphs) and as JSON for machines."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re

from expckpt.store.catalog import Catalog
from expckpt.store.records import CheckpointRecord, OutputHash
from expckpt.store.refs import CheckpointRef
from expckpt.ops.show import chains_as_json, render_chains

BASE = "b" * 40
OTHER = "c" * 40
T0 = 1_760_000_000.0


def record(
    exp: str,
    step: int,
    metrics: dict[str, float],
    *,
    baseline: str = BASE,
    parent: str | None = None,
    resumed: bool = False,
    time: float | None = None,
) -> CheckpointRecord:
    commit = hashlib.sha1(f"{baseline} {exp} {step}".encode()).hexdigest()
    return CheckpointRecord(
        ref=CheckpointRef(baseline, exp, step),
        commit=commit,
        parent=parent,
        outs={"model.pt": OutputHash(f"{step:032x}", 1000 + step)},
        metrics=metrics,
        time=T0 + step if time is None else time,
        resumed=resumed,
    )


def created(r: CheckpointRecord) -> str:
    return dt.datetime.fromtimestamp(r.time).strftime("%b %d %H:%M:%S")


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_no_checkpoints_says_how_to_make_one() -> None:
    assert (
        render_chains(Catalog([]), {}) == "No checkpoint experiments yet: run `dvc exp run` with a checkpoint output."
    )
    assert chains_as_json(Catalog([]), {}) == []


def test_a_chain_is_drawn_newest_first_under_its_baseline_with_every_metric() -> None:
    runs = [record("tut", s, {"loss": 1.0 / (s + 1), "acc": 0.5 + s / 10}) for s in range(3)]
    lines = render_chains(Catalog(runs), {BASE: "main"}).splitlines()
    assert cells(lines[0]) == ["Experiment", "Step", "Commit", "Created", "acc", "loss"]
    assert set(lines[1]) == {"─", " "}
    assert cells(lines[2]) == [f"main ({BASE[:7]})"]
    newest_first = list(reversed(runs))
    assert [cells(line) for line in lines[3:]] == [
        [
            f"{glyph} {r.name}",
            str(r.step),
            r.commit[:7],
            created(r),
            f"{r.metrics['acc']:.5g}",
            f"{r.metrics['loss']:.5g}",
        ]
        for glyph, r in zip("╓╟╨", newest_first)
    ]
    for line, r in zip(lines[3:], newest_first):  # the columns line up under their headers
        assert line.index(r.commit[:7]) == lines[0].index("Commit")
        assert line.rindex(f"{r.metrics['loss']:.5g}") == lines[0].index("loss")


def test_a_resumed_chain_names_its_origin_and_missing_or_nonfinite_metrics_show_as_such() -> None:
    first = [record("a", s, {"loss": 0.5}) for s in range(2)]
    resumed = record("b", 2, {"loss": math.nan, "f1": 0.25}, parent=first[1].commit, resumed=True, time=T0 + 10)
    other_base = record("x", 0, {}, baseline=OTHER, time=T0 - 5)
    catalog = Catalog([*first, resumed, other_base])
    lines = render_chains(catalog, {BASE: "main"}).splitlines()
    assert cells(lines[0]) == ["Experiment", "Step", "Commit", "Created", "f1", "loss"]
    assert cells(lines[2]) == [f"main ({BASE[:7]})"]  # a labelled baseline first
    assert cells(lines[3]) == [
        "═ b@2",
        "2",
        f"{resumed.commit[:7]} ({first[1].commit[:7]} a@1)",
        created(resumed),
        "0.25",
        "nan",
    ]
    assert cells(lines[4])[0] == "╓ a@1" and cells(lines[4])[-2:] == ["-", "0.5"]
    assert cells(lines[5])[0] == "╨ a@0"
    assert cells(lines[6]) == [f"{OTHER[:7]} ({OTHER[:7]})"]  # unlabelled: its short sha
    assert cells(lines[7]) == ["═ x@0", "0", other_base.commit[:7], created(other_base), "-", "-"]


def test_names_from_git_are_printed_escaped() -> None:
    hostile = record("e", 0, {"loss\x1b[2J\nforged row": 1.0})
    text = render_chains(Catalog([hostile]), {BASE: "br\x9b\u202e"})
    assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert len(text.splitlines()) == 4  # header, rule, baseline, one row: no forged row
    assert "loss\\x1b[2J\\nforged row" in text.splitlines()[0] and "br\\x9b\\u202e" in text


def test_json_holds_each_chain_with_its_origin_and_nonfinite_values_as_strings() -> None:
    first = [record("a", s, {"loss": 0.5}) for s in range(2)]
    resumed = record("b", 2, {"loss": math.inf}, parent=first[1].commit, resumed=True, time=T0 + 10)
    data = json.loads(json.dumps(chains_as_json(Catalog([*first, resumed]), {BASE: "main"})))
    assert [c["experiment"] for c in data] == ["b", "a"]  # the most recently written first
    b, a = data
    assert b["baseline"] == BASE and b["baseline_name"] == "main"
    assert b["resumed_from"] == {"commit": first[1].commit, "name": "a@1"} and a["resumed_from"] is None
    assert b["checkpoints"] == [
        {
            "name": "b@2",
            "step": 2,
            "commit": resumed.commit,
            "parent": first[1].commit,
            "created": dt.datetime.fromtimestamp(T0 + 10, dt.UTC).isoformat(),
            "metrics": {"loss": "inf"},
            "outs": {"model.pt": {"md5": f"{2:032x}", "size": 1002}},
        }
    ]
    assert [c["name"] for c in a["checkpoints"]] == ["a@1", "a@0"]
