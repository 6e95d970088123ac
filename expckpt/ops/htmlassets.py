"""The files ``expckpt report --html`` inlines: vendored Vega/Vega-Lite and the page's own JS/CSS.

They ship inside the package (``expckpt/assets``, pyproject package-data); ``assets/README.md``
says where the Vega builds came from and their versions.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["asset", "inline_script"]

_SCRIPT_END = "</script"


@cache
def asset(name: str) -> str:
    """The text of ``expckpt/assets/<name>``."""
    return resources.files("expckpt").joinpath("assets", name).read_text(encoding="utf-8")


def inline_script(text: str) -> str:
    """``text``, checked to be safe between ``<script>`` tags: a ``</script`` or ``<!--`` in it would
    end or bend the element early (the vendored builds have neither; a new build that did is refused
    here rather than shipped broken)."""
    lowered = text.lower()
    for bad in (_SCRIPT_END, "<!--"):
        if bad in lowered:
            raise ValueError(f"an inlined script holds {bad!r}; it cannot sit inside <script> as it is")
    return text
