#!/usr/bin/env python
"""Bytes written per save by a Hugging Face Trainer run with the expckpt callback (issue 23).

A Trainer (Adam, a ~2.2 MB MLP: the size of the tiny BERT of issue 23) runs ``--saves`` saves
inside a real Git + DVC repository, as ``dvc exp run -n <exp>`` runs it, then the same run with
``save_strategy="no"``; each run is a fresh process that reads its own ``/proc/self/io`` around
``trainer.train()``. Bytes per save = (with saves - without) / saves, for

* ``wchar``: bytes handed to ``write()`` (files, pipes; everything the process wrote);
* ``write_bytes - cancelled_write_bytes``: bytes that reach the block layer, less the dirty pages
  of files deleted before they were flushed (a Trainer folder removed seconds after it was
  written may never reach the disk).

Also printed: what one save leaves (model weights, the HF folder's files, ``model.pt``).

    python bench/hf_writes.py                 # 5 saves
    python bench/hf_writes.py --saves 10
    python bench/hf_writes.py --cache-type hardlink   # the cache object and model.pt one file
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    outs:
      - model.pt:
          checkpoint: true
          persist: true
metrics:
  - dvclive/metrics.json
"""

CHILD = r"""
import json, os, sys
from pathlib import Path
import torch
from torch import nn
import transformers
from expckpt.integrations.hf import ExpCkptTrainerCallback

saves, save_steps, every = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "on"

def io():
    return {k: int(v) for k, v in (l.split(": ") for l in Path("/proc/self/io").read_text().splitlines())}

class Data(torch.utils.data.Dataset):
    def __len__(self): return 64
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(512, generator=g), "labels": torch.randint(0, 10, (), generator=g)}

class MLP(nn.Module):  # 512*512 + 512*512 + 512*10 parameters: 2.1 MB of float32
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

seen = {}
class Sizes(transformers.TrainerCallback):
    def on_save(self, args, state, control, **kw):  # runs before expckpt's callback removes the folder
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and not seen:
            seen.update({p.name: p.stat().st_size for p in folder.iterdir()})

torch.manual_seed(0)
args = transformers.TrainingArguments(
    output_dir="hf-out", max_steps=saves * save_steps, per_device_train_batch_size=16,
    save_strategy="steps" if every else "no", save_steps=save_steps, logging_steps=save_steps,
    seed=0, use_cpu=True, report_to="none", disable_tqdm=True,
)
callback = ExpCkptTrainerCallback("model.pt")
trainer = transformers.Trainer(model=MLP(), args=args, train_dataset=Data(), callbacks=[Sizes(), callback])
before = io()
trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)
after = io()
model_pt = Path("model.pt")
print(json.dumps({
    "io": {k: after[k] - before[k] for k in after},
    "hf_folder": seen,
    "model_pt": model_pt.stat().st_size if model_pt.exists() else None,
    "weights": sum(p.numel() * p.element_size() for p in trainer.model.parameters()),
}))
"""


def one_run(
    root: Path, env: dict[str, str], exp: str, saves: int, save_steps: int, on: bool, cache_type: str | None
) -> dict:
    repo = root / exp
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "train.py").write_text("# the stage command; the benchmark runs the Trainer itself\n")
    (repo / ".gitignore").write_text("/model.pt\n/hf-out\n")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        C.run(args, cwd=repo, env=env)
    if cache_type:
        C.run(["dvc", "config", "cache.type", cache_type], cwd=repo, env=env)
    run_env = {
        **env,
        "DVC_ROOT": str(repo),
        "DVC_EXP_NAME": exp,
        "DVC_EXP_BASELINE_REV": C.head(repo, env),
        "DVC_STAGE": "train",
        "PYTHONPATH": str(C.REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(saves), str(save_steps), "on" if on else "off"],
        cwd=repo,
        env=run_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"hf_writes: the {exp} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--save-steps", type=int, default=2)
    parser.add_argument("--cache-type", help="dvc config cache.type for both runs (default: DVC's reflink,copy)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hf-writes-") as tmp:
        root = Path(tmp)
        env = C.isolated_env(root / "home", Path(sys.executable).parent)
        on = one_run(root, env, "on", opts.saves, opts.save_steps, True, opts.cache_type)
        off = one_run(root, env, "off", opts.saves, opts.save_steps, False, opts.cache_type)
    mb = 1e6
    per = {k: (on["io"][k] - off["io"][k]) / opts.saves for k in on["io"]}
    disk = per["write_bytes"] - per["cancelled_write_bytes"]
    print(
        f"weights {on['weights'] / mb:.2f} MB; model.pt {on['model_pt'] / mb:.2f} MB; one Trainer folder "
        f"{sum(on['hf_folder'].values()) / mb:.2f} MB ({', '.join(f'{k} {v / mb:.2f}' for k, v in sorted(on['hf_folder'].items()))})"
    )
    print(
        f"per save ({opts.saves} saves vs none): wchar {per['wchar'] / mb:.2f} MB, "
        f"write_bytes {per['write_bytes'] / mb:.2f} MB, cancelled {per['cancelled_write_bytes'] / mb:.2f} MB, "
        f"to disk {disk / mb:.2f} MB ({disk / on['weights']:.1f}x the weights)"
    )


if __name__ == "__main__":
    main()
