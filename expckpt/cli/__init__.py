"""``expckpt``: the command line, thin over the library (the top layer: may import anything)."""

from expckpt.cli.main import main

__all__ = ["main"]
