"""Which saved random generators this run never seeded (nor drew from), told once at the first save.

A checkpoint saves Python's ``random`` and NumPy's global generator states (``expckpt.state.rng``).
A script that seeds only torch (as pytorch/examples does) saves the states those two took from
OS entropy when they were created: two runs with the same seed and params then write different
checkpoint files, so they never share a cache object.

Neither generator says whether it was seeded, and wrapping ``random.seed`` would change the
user's process. The rule is a heuristic, said as one: a generator whose state at the first save
is still the one it had when expckpt was imported (by ``from expckpt import ...`` at the top of a
script, before it seeds anything) was neither seeded nor used since. It cannot see a generator
seeded before expckpt was imported and never used afterwards (it would be named, wrongly), nor
one that was used without being seeded (not named). torch's generator is not watched: unseeded,
it starts from a fixed seed, so it does not make runs differ.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field

__all__ = ["AT_IMPORT", "SeedWatch", "unseeded_note"]

_NAMES = {"python": "Python's random", "numpy": "NumPy's global generator"}


def _fingerprints() -> dict[str, str]:
    """A digest of each watched generator's state (NumPy only when it is already imported)."""
    found = {"python": hashlib.sha1(repr(random.getstate()).encode()).hexdigest()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        found["numpy"] = hashlib.sha1(keys.tobytes() + repr((kind, pos, has_gauss, cached)).encode()).hexdigest()
    return found


@dataclass
class SeedWatch:
    """The generators' states at one moment, to compare with later."""

    start: dict[str, str] = field(default_factory=_fingerprints)

    def add_new(self) -> None:
        """Record generators that did not exist (were not imported) when this watch started."""
        for name, digest in _fingerprints().items():
            self.start.setdefault(name, digest)

    def untouched(self) -> list[str]:
        """The generators whose state is still the one recorded: neither seeded nor drawn from."""
        now = _fingerprints()
        return [name for name, digest in self.start.items() if now.get(name) == digest]


AT_IMPORT = SeedWatch()
"""Taken when expckpt is imported; NumPy's is added when the torch side of expckpt is imported."""


def unseeded_note(watch: SeedWatch | None = None) -> str | None:
    """One line naming the saved generators this run never seeded, or None."""
    names = [_NAMES[n] for n in (watch or AT_IMPORT).untouched()]
    if not names:
        return None
    fix = {"Python's random": "random.seed(seed)", "NumPy's global generator": "numpy.random.seed(seed)"}
    calls = " and ".join(fix[n] for n in names)
    return (
        f"expckpt: note: {' and '.join(names)} {'was' if len(names) == 1 else 'were'} never seeded (nor used) in"
        f" this run; the checkpoint saves {'its' if len(names) == 1 else 'their'} state drawn from OS entropy,"
        " so two runs with the same seed and"
        f" params write different checkpoint files (no shared cache object); call {calls} with your seed to"
        " make them byte-identical"
    )
