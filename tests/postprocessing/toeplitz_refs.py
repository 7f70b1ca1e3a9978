"""The two references the Toeplitz hash is checked against: randextract's implementation
and the direct matrix product over the integers."""

from __future__ import annotations

import numpy as np
from randextract import ToeplitzHashing


def random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n, dtype=np.uint8)


def randextract_hash(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    return np.asarray(ToeplitzHashing(input_length=x.size, output_length=m).extract(x, seed), dtype=np.uint8)


def direct_hash(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """T[i, j] = seed[(i − j) mod (n + m − 1)], product over the integers, then mod 2."""
    n = x.size
    i, j = np.arange(m)[:, None], np.arange(n)[None, :]
    matrix = seed[(i - j) % (n + m - 1)].astype(np.int64)
    return ((matrix @ x.astype(np.int64)) % 2).astype(np.uint8)
