"""Privacy amplification: Toeplitz hashing by FFT.

The m×n Toeplitz matrix over GF(2) is given by an (n + m − 1)-bit seed with the
convention of ``randextract.ToeplitzHashing`` (its default ``seed_mode``):
``T[i, j] = seed[(i − j) mod (n + m − 1)]``, and the output is ``T · x mod 2``. Toeplitz
matrices with a uniform seed form a 2-universal family, so by the leftover hash lemma the
output is ε-close to uniform and independent of Eve given enough min-entropy (the length
comes from :mod:`postprocessing.estimation`).

**Method.** ``y_i = Σ_j x_j e[i − j + n − 1]`` (``e`` the rotated seed) is the middle m
coefficients of an integer linear convolution, which a cyclic convolution of any size
N ≥ n + m − 1 gives without aliasing (the wrapped terms land only on coefficients we do not
read). It is computed with float64 real FFTs and rounded to integers; only the parity is
kept. For N ≥ :data:`FOUR_STEP_MIN_POINTS` the length-N transform is a four-step
(Bailey) FFT on an N1 × N2 array: real FFTs along contiguous rows of length N2, a twiddle
multiplication, complex FFTs of length N1 down the columns. Every pass then works on
transforms of a few thousand points that fit in cache, which is 2–3× faster than one
out-of-cache transform of 10⁷ points; the spectra stay in the transposed order (a
convolution never needs the natural order), so no transpose is paid on the way back.

**Exactness.** With 0/1 inputs every coefficient is an integer in [0, b] (b the block
length), and rounding is exact while the FFT's error stays below ½. Percival's worst-case
bound for a floating-point FFT convolution of size N = 2^L (Math. Comp. 72 (2003),
387–395) is ``‖z' − z‖∞ < ‖u‖₂‖w‖₂ · ((1+ε)^{3L} (1+ε√5)^{3L+1} (1+β)^{3L} − 1)``
≈ ‖u‖₂‖w‖₂ · 3L(ε + √5ε + β), with ε = 2⁻⁵³ and β the twiddles' relative error (the
four-step's are products of two exponentials of exact phases reduced to [−π, π], each
within ~8ε, so β ≲ 18ε with the product's own rounding). For 0/1 vectors
‖u‖₂‖w‖₂ ≤ √(b(b+m−1)) < N, so the error is below N · L · 7.1e-15: 2e-6 at the
N ≈ 1.2·10⁷ of a 10⁷-bit input. Our transforms are
mixed radix 2/3/4 with one more twiddle level (the four-step), not Percival's radix-2
setting; the bound is of the same form, and even a 10⁴-fold allowance for that leaves
0.02 < ½. Measured: at most one ulp
of the coefficient (~1e-10 at 10⁶ bits). :func:`toeplitz_hash` also checks at run time
that every coefficient it reads is within :data:`MAX_ROUNDING_ERROR` of an integer and
refuses (:class:`PrecisionError`) otherwise; inputs longer than ``block_bits`` are hashed
in blocks (XOR of the blocks' products), which caps b and with it ‖u‖₂.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from postprocessing.bits import as_bits

#: Inputs longer than this are hashed in blocks of this many bits (precision and memory).
DEFAULT_BLOCK_BITS = 1 << 25
#: Largest distance from an integer the FFT's coefficients may show before we refuse.
MAX_ROUNDING_ERROR = 0.25
#: Transforms of at least this many points use the four-step layout; smaller ones fit in
#: cache as a single 1-D transform, which is then as fast or faster (measured crossover
#: between 2^14 and 2^15 points; at 10^5 bits the four-step is already 2x faster).
FOUR_STEP_MIN_POINTS = 1 << 15


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
    Raises :class:`PrecisionError` rather than return a result it cannot prove exact.
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
    """(u ∗ w)[b − 1 : b − 1 + m] mod 2 for b = len(u), len(w) = b + m − 1 (0/1 uint8)."""
    b = u.size
    size = _fft_size(b + m - 1)
    if size < FOUR_STEP_MIN_POINTS:
        fu = scipy.fft.rfft(u.astype(np.float64), size, workers=1)
        fw = scipy.fft.rfft(w.astype(np.float64), size, workers=1)
        fu *= fw
        del fw
        conv = scipy.fft.irfft(fu, size, workers=1, overwrite_x=True)[b - 1:b - 1 + m]
    else:
        conv = _FourStep(size).middle_product(u, w, m)
    return _parity_checked(conv, b)


def _parity_checked(conv: np.ndarray, b: int) -> np.ndarray:
    """The parities of the integers ``conv`` approximates, after the rounding check."""
    rounded = np.rint(conv)
    dist = np.subtract(conv, rounded)
    np.abs(dist, out=dist)
    worst = float(dist.max())
    if not worst <= MAX_ROUNDING_ERROR:  # also refuses NaN
        raise PrecisionError(
            f"FFT rounding error {worst:.3g} too large for an exact Toeplitz product of {b} "
            "bits; lower block_bits")
    # Coefficients are integers in [0, b], exact in float64; int32 holds them for any block
    # the 2**25 default allows and is half the memory traffic of int64.
    ints = rounded.astype(np.int32 if b < 2**31 else np.int64)
    ints &= 1
    return ints.astype(np.uint8)


class _FourStep:
    """Cyclic convolution of size N = N1·N2 by the four-step FFT, in a cache-sized layout.

    Index maps: n = r + N1·c (r < N1 rows, c < N2 columns) in the time domain and
    k = k2 + N2·k1 in the frequency domain, so
    ``X[k2 + N2 k1] = Σ_r ω_N1^{r k1} · ω_N^{r k2} · Σ_c x[r + N1 c] ω_N2^{c k2}``:
    a real FFT along each row (over c), the twiddle ω_N^{r k2}, a complex FFT down each
    column (over r). The spectrum is kept as the (N1, N2/2 + 1) array [k1, k2]; the
    Hermitian half k2 ≤ N2/2 is all a real input needs.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows, self.cols = _split(size)
        self.half = self.cols // 2 + 1
        # Twiddles ω_N^{r·k2} with r = q·S + a: ω^{qS·k2} · ω^{a·k2}, two small tables from
        # exact integer phases (mod N) so each factor is a correctly rounded exponential.
        self.sub = _divisor_near(self.rows, math.isqrt(self.rows))
        k2 = np.arange(self.half, dtype=np.int64)[None, :]
        a = np.arange(self.sub, dtype=np.int64)[:, None]
        q = np.arange(self.rows // self.sub, dtype=np.int64)[:, None] * self.sub
        self.tw_a = _unit_roots(a * k2, size)   # (S, half)
        self.tw_q = _unit_roots(q * k2, size)   # (rows / S, half)

    def middle_product(self, u: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
        """(u ∗ w)[b − 1 : b − 1 + m] as float64 (not yet rounded), b = len(u)."""
        # One grid buffer for both operands: a fresh 10⁸-byte array costs ~20 ms of page
        # faults (counted in process time) at 10⁷ bits.
        grid = np.empty((self.rows, self.cols), dtype=np.float64)
        spec = self._forward(u, grid)
        spec *= self._forward(w, grid)
        del grid
        y = self._inverse(spec)  # y[r, c] = conv[r + N1 c]
        start = u.size - 1
        c0, c1 = start // self.rows, (start + m - 1) // self.rows + 1
        natural = np.ascontiguousarray(y[:, c0:c1].T).reshape(-1)
        off = start - c0 * self.rows
        return natural[off:off + m]

    def _forward(self, v: np.ndarray, grid: np.ndarray) -> np.ndarray:
        # grid[r, c] = v[r + N1 c], zero past the end of v: the full columns by one
        # transposing copy (with the cast to float64), then the partial one, then zeros.
        rows = self.rows
        full = v.size // rows
        np.copyto(grid[:, :full], v[:full * rows].reshape(full, rows).T)
        if full < self.cols:
            rest = v.size - full * rows
            grid[:rest, full] = v[full * rows:]
            grid[rest:, full] = 0.0
            grid[:, full + 1:] = 0.0
        spec = scipy.fft.rfft(grid, axis=1, workers=1)
        self._twiddle(spec, conjugate=False)
        return scipy.fft.fft(spec, axis=0, workers=1, overwrite_x=True)

    def _inverse(self, spec: np.ndarray) -> np.ndarray:
        spec = scipy.fft.ifft(spec, axis=0, workers=1, overwrite_x=True)
        self._twiddle(spec, conjugate=True)
        return scipy.fft.irfft(spec, self.cols, axis=1, workers=1, overwrite_x=True)

    def _twiddle(self, spec: np.ndarray, *, conjugate: bool) -> None:
        """spec[r, k2] *= ω_N^{±r k2}, one pass over ``spec`` (the factor is built per
        band of S rows, which stays in cache)."""
        tw_a = np.conj(self.tw_a) if conjugate else self.tw_a
        bands = spec.reshape(self.rows // self.sub, self.sub, self.half)
        for q in range(bands.shape[0]):
            tq = self.tw_q[q]
            bands[q] *= tw_a * (np.conj(tq) if conjugate else tq)


def _unit_roots(exponents: np.ndarray, size: int) -> np.ndarray:
    """exp(−2πi·e/N) for integer e, from the exact residue e mod N taken into
    (−N/2, N/2], so the phase is within [−π, π] and its rounding error at most ~2πε."""
    j = exponents % size
    j = np.where(2 * j > size, j - size, j)
    return np.exp((-2j * np.pi / size) * j)


def _split(size: int) -> tuple[int, int]:
    """N = N1 · N2 with N1 (rows) near √N and N1 ≤ N2 (more rows than columns measured
    up to 2× slower: the column transforms get long and strided). N1 is kept off powers of
    two when N allows: a power-of-two row stride makes the transposing copy thrash the
    cache (measured 3–6× slower here)."""
    target = math.isqrt(size)
    divisors = [d for d in _smooth_divisors(size) if d * d <= size]
    cands = [d for d in divisors if d & (d - 1)] or divisors
    best = min(cands, key=lambda d: abs(math.log(d / target)))
    return best, size // best


def _smooth_divisors(size: int) -> list[int]:
    out, p2 = [], 1
    while size % p2 == 0:
        p3 = p2
        while size % p3 == 0:
            out.append(p3)
            p3 *= 3
        p2 *= 2
    return out


def _divisor_near(value: int, target: int) -> int:
    return min((d for d in _smooth_divisors(value)), key=lambda d: abs(d - target))


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


__all__ = ["DEFAULT_BLOCK_BITS", "FOUR_STEP_MIN_POINTS", "MAX_ROUNDING_ERROR", "PrecisionError",
           "toeplitz_hash", "toeplitz_seed_bits"]
