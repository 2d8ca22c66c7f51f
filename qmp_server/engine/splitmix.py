"""SplitMix64 and seed keys: the pseudo-random arithmetic of the guest's baselines.

Why a module: the random baseline (:mod:`qmp_server.engine.guest`) and the text baseline
(:mod:`qmp_server.engine.text_fill`) derive their content from the same two functions; the
C fast path (``_pages.c``) computes the same numbers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

__all__ = ["seed_key", "splitmix"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser applied to ``x * golden`` (in place on a fresh array)."""
    z = x * _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def seed_key(seed: int, salt: bytes, person: bytes) -> int:
    """A 64-bit key of ``seed`` for one use (``salt``) of one generator (``person``)."""
    digest = hashlib.blake2b(
        str(seed).encode() + b"\0" + salt, digest_size=8, person=person
    ).digest()
    return int.from_bytes(digest, "little")
