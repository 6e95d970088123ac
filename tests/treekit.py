"""A real Git + DVC repository holding a small checkpoint tree, for the tree and report tests.

``tut`` runs steps 0-11; ``tut-b`` continued from ``tut@5`` with a higher lr (its step 7 logged a
NaN accuracy, its step 8 paused); ``warm`` is a new trial initialized from ``tut@11``'s weights.
Commits are written the way expckpt writes them (an ``expckpt-meta`` line, a tree holding
``params.yaml``) by ``GitStore``; ``initialized_from`` and ``paused`` are added to the line as the
writer that records them does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from conftest import run
from expckpt.store.gitstore import GitStore
from expckpt.store.records import OutputHash, format_message
from expckpt.store.refs import CheckpointRef

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@dataclass
class TreeRepo:
    path: Path
    store: GitStore
    base: str
    commits: dict[str, str] = field(default_factory=dict)
    """checkpoint name -> commit"""
    time: float = 1_760_000_000.0

    def write(
        self,
        exp: str,
        step: int,
        *,
        metrics: dict[str, float],
        params: str = "lr: 0.1\n",
        parent: str | None = None,
        resumed: bool = False,
        extra: dict | None = None,
    ) -> str:
        ref = CheckpointRef(self.base, exp, step)
        tree = self.store.tree_with_files(self.store.commit_tree(self.base), {"params.yaml": params.encode()})
        self.time += 10
        message = format_message(
            ref,
            parent=parent,
            outs={"model.pt": OutputHash(MD5, 1000 + step)},
            metrics=metrics,
            time=self.time,
            resumed=resumed,
        )
        if extra:
            head, _, line = message.rstrip("\n").rpartition("\n")
            meta = json.loads(line.removeprefix("expckpt-meta: "))
            message = f"{head}\nexpckpt-meta: {json.dumps({**meta, **extra}, sort_keys=True)}\n"
        commit = self.store.write_commit(tree, [self.base], message)
        self.store.create_ref(ref.ref, commit)
        self.commits[ref.name] = commit
        return commit


def init_repo(path: Path, params: str = "lr: 0.1\n") -> TreeRepo:
    path.mkdir(parents=True)
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    (path / "params.yaml").write_text(params)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "baseline", cwd=path)
    base = run("git", "rev-parse", "HEAD", cwd=path).stdout.strip()
    return TreeRepo(path, GitStore.open(path), base)


def small_tree(path: Path) -> TreeRepo:
    repo = init_repo(path)
    previous = None
    for step in range(12):
        previous = repo.write("tut", step, metrics={"acc": step / 20, "loss": 1 / (step + 1)}, parent=previous)
    previous = repo.commits["tut@5"]
    for step, acc in ((6, 0.33), (7, math.nan), (8, 0.4)):
        previous = repo.write(
            "tut-b",
            step,
            metrics={"acc": acc, "loss": 0.2},
            params="lr: 0.5\n",
            parent=previous,
            resumed=step == 6,
            extra={"paused": True} if step == 8 else None,
        )
    init = {"initialized_from": {"exp": "tut", "step": 11, "commit": repo.commits["tut@11"]}}
    repo.write("warm", 0, metrics={"acc": 0.1, "loss": 0.9}, params="lr: 0.01\n", extra=init)
    repo.write("warm", 1, metrics={"acc": 0.2, "loss": 0.8}, params="lr: 0.01\n", parent=repo.commits["warm@0"])
    return repo
