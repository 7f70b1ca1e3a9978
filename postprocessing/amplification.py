"""Privacy amplification: Toeplitz hashing by FFT.

The m×n Toeplitz matrix over GF(2) is given by an (n + m − 1)-bit seed with the
convention of ``randextract.ToeplitzHashing`` (its default ``seed_mode``):
``T[i, j] = seed[(i − j) mod (n + m − 1)]``, and the output is ``T · x mod 2``. Toeplitz
matrices with a uniform seed form a 2-universal family, so by the leftover hash lemma the
output is ε-close to uniform and independent of Eve given enough min-entropy (the length
comes from :mod:`postprocessing.estimation`).

The product is an integer linear convolution computed with a float64 real FFT and
rounded: with 0/1 inputs every coefficient is an integer ≤ n, and the FFT's rounding error
is about 1e-16 · log2(N) · ‖seed‖₂ ‖x‖₂ ≈ 1e-8 at n = 10⁷ — far below ½. The code checks
that every needed coefficient is within 0.25 of an integer and refuses otherwise, and
splits inputs longer than ``block_bits`` into blocks (XOR of the blocks' products) so the
bound holds at any size.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from postprocessing.bits import as_bits

#: Inputs longer than this are hashed in blocks of this many bits (precision and memory).
DEFAULT_BLOCK_BITS = 1 << 25
#: Largest distance from an integer the FFT's coefficients may show before we refuse.
MAX_ROUNDING_ERROR = 0.25


class PrecisionError(ArithmeticError):
    """The FFT's result was not close enough to integers to round safely (never expected)."""


def toeplitz_seed_bits(input_bits: int, output_bits: int) -> int:
    """Length of the seed for hashing ``input_bits`` to ``output_bits``: n + m − 1."""
    _check_lengths(input_bits, output_bits)
    return input_bits + output_bits - 1 if output_bits else 0


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, out_len: int, *,
                  block_bits: int = DEFAULT_BLOCK_BITS) -> np.ndarray:
    """``T(seed) · bits mod 2`` as ``out_len`` uint8 bits (randextract's convention).

    ``bits``: the n corrected key bits (uint8 0/1); ``seed_bits``: n + out_len − 1 uniform
    bits, public, fresh for each hash; ``out_len``: 0 ≤ m ≤ n. Pure and deterministic.
    """
    x = as_bits(bits, name="bits")
    n, m = x.size, int(out_len)
    _check_lengths(n, m)
    seed = as_bits(seed_bits, name="seed_bits")
    if m == 0:
        if seed.size:
            raise ValueError(f"seed_bits must be empty for an empty output, got {seed.size} bits")
        return np.zeros(0, dtype=np.uint8)
    if seed.size != n + m - 1:
        raise ValueError(f"seed_bits must be n + out_len − 1 = {n + m - 1} bits, got {seed.size}")
    if block_bits < 1:
        raise ValueError(f"block_bits must be >= 1, got {block_bits}")
    # e[t] = T's diagonal value for i − j = t − (n − 1): the seed rotated so the wrapped
    # (negative) diagonals come first; then y_i = Σ_j x_j e[i − j + n − 1].
    e = np.roll(seed, -m)
    out = np.zeros(m, dtype=np.uint8)
    for j0 in range(0, n, block_bits):
        j1 = min(n, j0 + block_bits)
        out ^= _block_product(x[j0:j1], e[n - j1:n - j0 + m - 1], m)
    return out


def _block_product(u: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    """(u ∗ w)[b − 1 : b − 1 + m] mod 2 for b = len(u), len(w) = b + m − 1."""
    b = u.size
    size = _fft_size(b + m - 1)
    fu = scipy.fft.rfft(u.astype(np.float64), size, workers=1)
    fw = scipy.fft.rfft(w.astype(np.float64), size, workers=1)
    fu *= fw
    del fw
    conv = scipy.fft.irfft(fu, size, workers=1, overwrite_x=True)[b - 1:b - 1 + m]
    rounded = np.rint(conv)
    if m and float(np.max(np.abs(conv - rounded))) > MAX_ROUNDING_ERROR:
        raise PrecisionError(
            f"FFT rounding error too large for an exact Toeplitz product of {b} bits; "
            "lower block_bits")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def _fft_size(length: int) -> int:
    """The smallest 2^a·3^b >= ``length``: pocketfft's radix-2/3/4 passes are the fastest
    (measured here up to twice as fast as ``next_fast_len``'s radix-5 sizes)."""
    best = 1 << max(0, (length - 1).bit_length())
    p3 = 1
    while p3 < best:
        v = p3
        while v < length:
            v *= 2
        best = min(best, v)
        p3 *= 3
    return best


def _check_lengths(n: int, m: int) -> None:
    if n < 1:
        raise ValueError(f"the input must hold at least one bit, got {n}")
    if not 0 <= m <= n:
        raise ValueError(f"out_len must be between 0 and the input length {n}, got {m}")


__all__ = ["DEFAULT_BLOCK_BITS", "PrecisionError", "toeplitz_hash", "toeplitz_seed_bits"]
