"""What a checkpoint commit records about itself, and the catalog of all checkpoints.

Each checkpoint commit's message carries one ``expckpt-meta:`` line of JSON (experiment, step,
parent checkpoint, output hashes, metrics, time). Listing every checkpoint is then a single
``git for-each-ref`` call, with no tree reads: that is what keeps ``expckpt show`` fast.

A pulled ref is anyone's, so every field of the metadata is checked before it is used: md5s are
32 lowercase hex digits (they become cache paths), sizes non-negative ints, times finite Unix
times, parents 40-hex shas, metric names printable and their values finite numbers or the
``"nan"``/``"inf"``/``"-inf"`` markers ``format_message`` writes; ``settings`` (the run's effective
checkpoint settings, ``config.RECORDED``) only known keys whose values ``CheckpointConfig`` accepts. A ref that fails is skipped
with one warning naming it and why; every other checkpoint stays usable.
"""

from __future__ import annotations

import json
import math
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from expckpt.policy.config import RECORDED, CheckpointConfig
from expckpt.errors import ConfigError
from expckpt.store.gitstore import GitStore
from expckpt.store.refs import EXPS_PREFIX, CheckpointRef
from expckpt.text import is_printable, terminal_safe

__all__ = [
    "BadRecord",
    "BadRecordError",
    "CheckpointRecord",
    "InitializedFrom",
    "OutputHash",
    "format_message",
    "lineage_of",
    "load_records",
    "parse_message",
    "warn_once",
]

_META = "expckpt-meta: "


@dataclass(frozen=True)
class OutputHash:
    """A checkpoint output's DVC hash (a directory's ends in ``.dir`` and counts its files)."""

    md5: str
    size: int
    nfiles: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"md5": self.md5, "size": self.size, **({"nfiles": self.nfiles} if self.nfiles is not None else {})}


@dataclass(frozen=True)
class InitializedFrom:
    """The checkpoint a new trial took its weights from: experiment, step and commit."""

    exp: str
    step: int
    commit: str

    @property
    def name(self) -> str:
        return f"{self.exp}@{self.step}"

    def as_dict(self) -> dict[str, object]:
        return {"exp": self.exp, "step": self.step, "commit": self.commit}


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint experiment: where it is and what it holds."""

    ref: CheckpointRef
    commit: str
    parent: str | None
    """Commit of the checkpoint this one continued from (``None`` for a fresh start)."""
    outs: Mapping[str, OutputHash]
    metrics: Mapping[str, float]
    time: float
    params: Mapping[str, object] = field(default_factory=dict)
    resumed: bool = False
    """True for the first checkpoint of a run that continued from ``parent`` (a branch point)."""
    initialized_from: InitializedFrom | None = None
    """The checkpoint whose weights a new trial started from (``init_from``), if it did."""
    paused: bool = False
    """True when the run was paused at this checkpoint (to be continued later)."""
    settings: CheckpointConfig | None = None
    """The checkpoint settings the run that wrote it used (None: written before expckpt recorded them)."""
    origin: str | None = None
    """Commit of the checkpoint the run that wrote this one resumed from (every checkpoint of
    that run records it, so the branch point survives retention removing the run's first one)."""

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def exp(self) -> str:
        return self.ref.exp

    @property
    def step(self) -> int:
        return self.ref.step

    @property
    def size(self) -> int:
        return sum(out.size for out in self.outs.values())


def _finite_or_str(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def format_message(
    ref: CheckpointRef,
    *,
    parent: str | None,
    outs: Mapping[str, OutputHash],
    metrics: Mapping[str, float],
    time: float,
    resumed: bool = False,
    settings: Mapping[str, object] | None = None,
    origin: str | None = None,
    initialized_from: InitializedFrom | None = None,
    paused: bool = False,
) -> str:
    """The commit message of a checkpoint: DVC's subject line plus one JSON metadata line."""
    meta = {
        "v": 1,
        "exp": ref.exp,
        "step": ref.step,
        "parent": parent,
        "resumed": resumed,
        "outs": {path: o.as_dict() for path, o in outs.items()},
        "metrics": {k: _finite_or_str(v) for k, v in metrics.items()},
        "time": round(time, 3),
        **({"settings": dict(settings)} if settings is not None else {}),
        **({"origin": origin} if origin is not None else {}),
    }
    if initialized_from is not None:
        meta["initialized_from"] = initialized_from.as_dict()
    if paused:
        meta["paused"] = True
    digest = next(iter(outs.values())).md5 if outs else "0" * 32
    return (
        f"dvc: commit experiment {digest}\n\n"
        f"Checkpoint {ref.name} of experiment {ref.exp}, written by expckpt.\n\n"
        f"{_META}{json.dumps(meta, sort_keys=True, separators=(',', ':'))}\n"
    )


class BadRecordError(ValueError):
    """An ``expckpt-meta`` line that is not a valid record (hand-edited, damaged or hostile)."""


@dataclass(frozen=True)
class BadRecord:
    """A checkpoint ref whose record was refused, and why (for one warning line)."""

    ref: str
    commit: str
    why: str

    def warning(self) -> str:
        return f"expckpt: warning: skipping {terminal_safe(self.ref)}: {terminal_safe(self.why)}"


_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")
"""A file's MD5, or a directory's (its ``.dir`` manifest's)."""
_SHA = re.compile(r"[0-9a-f]{40}")
_MAX_NAME = 255
_MAX_SIZE = 2**63 - 1
_MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second datetime can show
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _show(value: object) -> str:
    """``repr(value)`` cut to a length that fits a warning line."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _reject_constant(token: str) -> object:
    raise BadRecordError(f"bare {token} is not JSON")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or not is_printable(value):
        raise BadRecordError(f"{kind} {_show(value)} is not a printable name of 1-{_MAX_NAME} characters")
    return value


def _out_path(value: object) -> str:
    path = _name("output path", value)
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise BadRecordError(f"output path {_show(path)} is not a plain relative path")
    return path


def _output(path: str, value: object) -> OutputHash:
    if not isinstance(value, dict):
        raise BadRecordError(f"output {_show(path)} is {_show(value)}, not an object")
    md5, size = value.get("md5"), value.get("size")
    if not isinstance(md5, str) or not _MD5.fullmatch(md5):
        raise BadRecordError(f"md5 {_show(md5)} of {_show(path)} is not 32 lowercase hex digits (+ .dir)")
    if not _is_int(size) or not 0 <= size <= _MAX_SIZE:  # type: ignore[operator]
        raise BadRecordError(f"size {_show(size)} of {_show(path)} is not a non-negative integer")
    nfiles = value.get("nfiles")
    if nfiles is not None and (not _is_int(nfiles) or not 0 <= nfiles <= _MAX_SIZE or not md5.endswith(".dir")):
        raise BadRecordError(f"nfiles {_show(nfiles)} of {_show(path)} is not a directory's file count")
    return OutputHash(md5, size, nfiles)  # type: ignore[arg-type]


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (an int too big for a float is not)."""
    if not (_is_int(value) or isinstance(value, float)):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _metric(name: str, value: object) -> float:
    """A finite JSON number, or one of the strings ``format_message`` writes for NaN/inf."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    number = _finite(value)
    if number is not None:
        return number
    raise BadRecordError(f"metric {_show(name)} is {_show(value)}, not a finite number or 'nan'/'inf'/'-inf'")


def _time(value: object) -> float:
    number = _finite(value)
    if number is not None and 0 <= number <= _MAX_TIME:
        return number
    raise BadRecordError(f"time {_show(value)} is not a Unix time between 0 and {_MAX_TIME:.0f}")


def _settings(value: object) -> CheckpointConfig:
    """The recorded checkpoint settings: an object of ``RECORDED`` keys that ``CheckpointConfig`` accepts."""
    if not isinstance(value, dict):
        raise BadRecordError(f"settings {_show(value)} is not an object")
    for key in value:
        if key not in RECORDED:
            raise BadRecordError(f"settings key {_show(key)} is not one of {', '.join(RECORDED)}")
    for key in ("monitor", "divergence_metric"):
        if value.get(key) is not None:
            _name(f"settings {key}", value[key])
    try:
        return CheckpointConfig.from_params(value)
    except ConfigError as exc:
        raise BadRecordError(f"settings are not valid ({exc})") from None


def _record(ref: CheckpointRef, commit: str, meta: object) -> CheckpointRecord:
    """Check every field of a parsed ``expckpt-meta`` object (all of it is untrusted)."""
    if not isinstance(meta, dict):
        raise BadRecordError(f"metadata is {type(meta).__name__}, not an object")
    if meta.get("v", 1) != 1 or isinstance(meta.get("v"), bool):
        raise BadRecordError(f"format version {_show(meta.get('v'))} is not 1 (written by a newer expckpt?)")
    if "step" in meta and (not _is_int(meta["step"]) or meta["step"] < 0):
        raise BadRecordError(f"step {_show(meta['step'])} is not a non-negative integer")
    if "exp" in meta and not isinstance(meta["exp"], str):
        raise BadRecordError(f"experiment {_show(meta['exp'])} is not a string")
    parent = meta.get("parent")
    if parent is not None and (not isinstance(parent, str) or not _SHA.fullmatch(parent)):
        raise BadRecordError(f"parent {_show(parent)} is not a 40-hex commit id")
    origin = meta.get("origin")
    if origin is not None and (not isinstance(origin, str) or not _SHA.fullmatch(origin)):
        raise BadRecordError(f"origin {_show(origin)} is not a 40-hex commit id")
    resumed = meta.get("resumed", False)
    if not isinstance(resumed, bool):
        raise BadRecordError(f"resumed {_show(resumed)} is not true or false")
    paused = meta.get("paused", False)
    if not isinstance(paused, bool):
        raise BadRecordError(f"paused {_show(paused)} is not true or false")
    outs, metrics = meta.get("outs"), meta.get("metrics", {})
    if not isinstance(outs, dict):
        raise BadRecordError(f"outs {_show(outs)} is not an object")
    if not isinstance(metrics, dict):
        raise BadRecordError(f"metrics {_show(metrics)} is not an object")
    if "time" not in meta:
        raise BadRecordError("it has no time")
    return CheckpointRecord(
        ref=ref,
        commit=commit,
        parent=parent,
        outs={_out_path(p): _output(p, o) for p, o in outs.items()},
        metrics={_name("metric", k): _metric(k, v) for k, v in metrics.items()},
        time=_time(meta["time"]),
        resumed=resumed,
        initialized_from=_initialized_from(meta.get("initialized_from")),
        paused=paused,
        settings=_settings(meta["settings"]) if "settings" in meta else None,
        origin=origin,
    )


def _initialized_from(value: object) -> InitializedFrom | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"exp", "step", "commit"}:
        raise BadRecordError(f"initialized_from {_show(value)} is not an object of exp, step and commit")
    step, commit = value["step"], value["commit"]
    if not _is_int(step) or step < 0:
        raise BadRecordError(f"initialized_from step {_show(step)} is not a non-negative integer")
    if not isinstance(commit, str) or not _SHA.fullmatch(commit):
        raise BadRecordError(f"initialized_from commit {_show(commit)} is not a 40-hex commit id")
    return InitializedFrom(_name("initialized_from experiment", value["exp"]), step, commit)


def lineage_of(value: object) -> InitializedFrom | None:
    """``value`` (a checkpoint file's own note of its trial's source) as lineage, if it is valid."""
    try:
        return _initialized_from(value)
    except BadRecordError:
        return None


def parse_message(ref: CheckpointRef, commit: str, message: str) -> CheckpointRecord | None:
    """Rebuild a record from a commit message.

    ``None`` if expckpt did not write it (no ``expckpt-meta:`` line, e.g. a plain DVC
    experiment); ``BadRecordError`` if the line is there but any field is invalid.
    """
    for line in message.splitlines():
        if line.startswith(_META):
            try:
                meta = json.loads(line[len(_META) :], parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                raise BadRecordError(f"its metadata is not valid JSON ({exc})") from None
            try:
                return _record(ref, commit, meta)
            except BadRecordError:
                raise
            except (ArithmeticError, TypeError, ValueError) as exc:  # a case the checks missed
                raise BadRecordError(f"its metadata does not parse ({type(exc).__name__}: {exc})") from None
    return None


_WARNED: weakref.WeakKeyDictionary[GitStore, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def warn_once(store: GitStore, bad: BadRecord) -> None:
    """Print ``bad``'s warning on stderr, once per ref and commit for each opened repository
    (a command that loads the records several times still warns once)."""
    seen = _WARNED.setdefault(store, set())
    if (bad.ref, bad.commit) not in seen:
        seen.add((bad.ref, bad.commit))
        print(bad.warning(), file=sys.stderr)


def load_records(
    store: GitStore,
    baselines: Iterable[str] | None = None,
    *,
    on_bad: Callable[[BadRecord], None] | None = None,
) -> list[CheckpointRecord]:
    """Every checkpoint expckpt wrote in this repository (optionally only for some baselines).

    A ref whose record is invalid is left out and handed to ``on_bad``; by default its warning
    goes to stderr once (``warn_once``), so one hostile ref never stops the others being used.
    """
    wanted = None if baselines is None else set(baselines)
    records = []
    for entry in store.list_refs(EXPS_PREFIX):
        ref = CheckpointRef.parse(entry.ref)
        if ref is None or (wanted is not None and ref.baseline not in wanted):
            continue
        try:
            record = parse_message(ref, entry.commit, entry.message)
        except BadRecordError as exc:
            bad = BadRecord(entry.ref, entry.commit, str(exc))
            if on_bad is None:
                warn_once(store, bad)
            else:
                on_bad(bad)
            continue
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (r.ref.baseline, r.exp, r.step))
    return records
