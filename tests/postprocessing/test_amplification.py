"""Toeplitz privacy amplification: randextract's reference output, exactness, errors."""

from __future__ import annotations

import numpy as np
import pytest

from postprocessing.amplification import toeplitz_hash, toeplitz_seed_bits
from tests.postprocessing.toeplitz_refs import direct_hash as _direct
from tests.postprocessing.toeplitz_refs import randextract_hash as _reference
from tests.postprocessing.toeplitz_refs import random_bits as _random


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 1), (5, 4), (20, 8), (64, 64), (1000, 300),
                                      (4097, 4097), (100_000, 20_000), (123_457, 999)])
def test_output_equals_randextract(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 7 + m)
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    ours = toeplitz_hash(x, seed, m)
    assert ours.dtype == np.uint8 and ours.shape == (m,)
    np.testing.assert_array_equal(ours, _reference(x, seed, m))


def test_output_equals_randextract_on_random_shapes() -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(1, 3000))
        m = int(rng.integers(1, n + 1))
        x, seed = _random(rng, n), _random(rng, n + m - 1)
        np.testing.assert_array_equal(toeplitz_hash(x, seed, m), _reference(x, seed, m))


def test_output_equals_the_matrix_product() -> None:
    rng = np.random.default_rng(5)
    for n, m in [(1, 1), (3, 2), (50, 50), (700, 123), (2048, 1)]:
        x, seed = _random(rng, n), _random(rng, n + m - 1)
        np.testing.assert_array_equal(toeplitz_hash(x, seed, m), _direct(x, seed, m))


def test_blocked_product_equals_the_single_fft() -> None:
    rng = np.random.default_rng(6)
    x, seed = _random(rng, 10_001), _random(rng, 10_001 + 2_500 - 1)
    whole = toeplitz_hash(x, seed, 2_500)
    for block in (1, 7, 1000, 4096, 10_000, 10_001):
        np.testing.assert_array_equal(toeplitz_hash(x, seed, 2_500, block_bits=block), whole)


def test_hash_is_linear_and_depends_on_every_bit() -> None:
    rng = np.random.default_rng(8)
    n, m = 5000, 800
    seed = _random(rng, n + m - 1)
    x, y = _random(rng, n), _random(rng, n)
    np.testing.assert_array_equal(toeplitz_hash(x ^ y, seed, m),
                                  toeplitz_hash(x, seed, m) ^ toeplitz_hash(y, seed, m))
    for j in (0, 1, n // 2, n - 1):
        e = np.zeros(n, dtype=np.uint8)
        e[j] = 1
        # The image of a unit vector is column j of T: seed[(i − j) mod L].
        col = seed[(np.arange(m) - j) % (n + m - 1)]
        np.testing.assert_array_equal(toeplitz_hash(e, seed, m), col)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1_000_000, 10_000_000])
def test_exact_at_full_size_by_direct_rows(n: int) -> None:
    """At 10⁶ and 10⁷ bits, sampled output bits equal their row's direct parity."""
    rng = np.random.default_rng(n)
    m = n // 5
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    out = toeplitz_hash(x, seed, m)
    e = np.roll(seed, -m)
    rows = np.concatenate([[0, 1, m - 1], rng.integers(0, m, 29)])
    for i in rows:
        # Row i: T[i, j] = e[i − j + n − 1], j = 0 … n − 1, i.e. e[i : i + n] reversed.
        row = e[i:i + n][::-1]
        assert out[i] == int(np.dot(row.astype(np.int64), x)) & 1
    # And the whole output equals the blocked computation (different FFT sizes).
    np.testing.assert_array_equal(out, toeplitz_hash(x, seed, m, block_bits=n // 3 + 1))


def test_seed_length_and_bad_input_are_refused() -> None:
    assert toeplitz_seed_bits(1000, 300) == 1299
    assert toeplitz_seed_bits(1000, 0) == 0
    x = np.ones(10, dtype=np.uint8)
    with pytest.raises(ValueError, match="n \\+ out_len − 1 = 14"):
        toeplitz_hash(x, np.ones(13, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="between 0 and the input length"):
        toeplitz_hash(x, np.ones(20, dtype=np.uint8), 11)
    with pytest.raises(ValueError, match="only 0 and 1"):
        toeplitz_hash(np.full(10, 2, dtype=np.uint8), np.ones(14, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="1-D"):
        toeplitz_hash(np.ones((2, 5), dtype=np.uint8), np.ones(14, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="dtype"):
        toeplitz_hash(np.ones(10), np.ones(14, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="at least one bit"):
        toeplitz_hash(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.uint8), 0)
    assert toeplitz_hash(x, np.zeros(0, dtype=np.uint8), 0).size == 0
    assert toeplitz_hash(x.astype(bool), np.ones(14, dtype=bool), 5).dtype == np.uint8
