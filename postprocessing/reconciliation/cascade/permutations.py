"""The passes' permutations, derived alike on both sides from Alice's public seed.

Scheme ``pcg64-permutation-v1``: pass ``p``'s permutation of ``n`` key positions is
``numpy.random.Generator(PCG64(SeedSequence(entropy=int.from_bytes(seed, "big"),
spawn_key=(p,)))).permutation(n)`` (numpy's PCG64 and its Fisher–Yates ``permutation``,
stable under numpy's stream-compatibility policy for ``Generator``). Position ``j`` of pass
``p`` holds key bit ``perm_p[j]``. Another implementation must reproduce these exactly;
the scheme name travels in :class:`~.messages.CascadeSetupReply` so a change is refused.
"""

from __future__ import annotations

import numpy as np


def pass_permutation(seed: bytes, pass_index: int, n_bits: int) -> np.ndarray:
    """Pass ``pass_index``'s permutation (int32 key positions, a permutation of range(n))."""
    ss = np.random.SeedSequence(entropy=int.from_bytes(seed, "big"), spawn_key=(pass_index,))
    return np.random.Generator(np.random.PCG64(ss)).permutation(n_bits).astype(np.int32)


def inverse(perm: np.ndarray) -> np.ndarray:
    """Where each key position sits in the permuted order."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv
