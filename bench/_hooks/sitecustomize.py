"""Benchmark hook (bench/resume.py): stamp the moment training starts its first step.

Active only when BENCH_FIRST_STEP_FILE is set and only in processes that import torch (the
training process, not DVC). When torch is imported, ``torch.randperm`` -- the first call of
train.py's ``train_epoch`` -- is wrapped once: its first call appends ``<time.time()>
<caller>`` to that file and puts the original back. Nothing else is changed.
"""

import os
import sys

_MARK = os.environ.get("BENCH_FIRST_STEP_FILE")

if _MARK:
    import importlib.abc
    import importlib.util
    import time

    def _patch(torch):
        original = torch.randperm

        def randperm(*args, **kwargs):
            now = time.time()
            torch.randperm = original
            caller = sys._getframe(1).f_code.co_name
            with open(_MARK, "a") as handle:
                handle.write(f"{now} {caller}\n")
            return original(*args, **kwargs)

        torch.randperm = randperm

    class _TorchImportHook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec("torch")
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _TorchImportHook())
