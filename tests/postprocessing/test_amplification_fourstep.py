"""Toeplitz hashing's four-step FFT path and the boundaries it introduces.

The four-step layout is used for transforms of FOUR_STEP_MIN_POINTS points and more; the
tests force it down to 1 point (monkeypatched threshold) so every small shape, and every
edge of its index maps, runs through it and is compared with randextract and with the
direct matrix product.
"""

from __future__ import annotations

import numpy as np
import pytest

from postprocessing import amplification
from postprocessing.amplification import (
    FOUR_STEP_MIN_POINTS,
    MAX_ROUNDING_ERROR,
    PrecisionError,
    _fft_size,
    _parity_checked,
    _split,
    toeplitz_hash,
)
from tests.postprocessing.toeplitz_refs import direct_hash as _direct
from tests.postprocessing.toeplitz_refs import randextract_hash as _reference
from tests.postprocessing.toeplitz_refs import random_bits as _random


@pytest.fixture
def four_step_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amplification, "FOUR_STEP_MIN_POINTS", 1)


@pytest.mark.usefixtures("four_step_everywhere")
@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 1), (2, 2), (3, 3), (5, 4), (20, 8), (64, 64),
                                      (1000, 300), (4097, 4097), (100_000, 20_000), (123_457, 999)])
def test_four_step_equals_randextract(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 13 + m)
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    ours = toeplitz_hash(x, seed, m)
    assert ours.dtype == np.uint8 and ours.shape == (m,)
    np.testing.assert_array_equal(ours, _reference(x, seed, m))


@pytest.mark.usefixtures("four_step_everywhere")
def test_four_step_equals_the_matrix_product_on_random_shapes() -> None:
    """Random n, m hit every way the needed output range can sit in the N1 × N2 grid
    (starting and ending mid-column or on a column edge, one column or many)."""
    rng = np.random.default_rng(21)
    for _ in range(60):
        n = int(rng.integers(1, 1500))
        m = int(rng.integers(1, n + 1))
        x, seed = _random(rng, n), _random(rng, n + m - 1)
        np.testing.assert_array_equal(toeplitz_hash(x, seed, m), _direct(x, seed, m), err_msg=f"{n}x{m}")


@pytest.mark.parametrize(("n", "m"), [(1000, 297), (110_000, 21_073)])
def test_a_seed_that_fills_the_grid_exactly(n: int, m: int) -> None:
    """n + m − 1 = N (1296 = 36 × 36, 131072 = 256 × 512): no zero padding, no partial column."""
    assert _fft_size(n + m - 1) == n + m - 1
    rng = np.random.default_rng(n)
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    ref = _reference(x, seed, m)
    np.testing.assert_array_equal(toeplitz_hash(x, seed, m), ref)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(amplification, "FOUR_STEP_MIN_POINTS", 1)
        np.testing.assert_array_equal(toeplitz_hash(x, seed, m), ref)


@pytest.mark.parametrize("points", [-1, 0, 1])
def test_sizes_around_the_four_step_threshold(points: int) -> None:
    """Transforms just below, at and just above FOUR_STEP_MIN_POINTS (one path each side)."""
    below = FOUR_STEP_MIN_POINTS - 1
    while _fft_size(below) >= FOUR_STEP_MIN_POINTS:
        below -= 1  # the largest transform size under the threshold
    lengths = {-1: below, 0: below + 1, 1: FOUR_STEP_MIN_POINTS + 1}
    length = lengths[points]  # n + m − 1
    n = (length * 5) // 6
    m = length - n + 1
    assert (_fft_size(n + m - 1) >= FOUR_STEP_MIN_POINTS) == (points >= 0)
    rng = np.random.default_rng(length)
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    np.testing.assert_array_equal(toeplitz_hash(x, seed, m), _reference(x, seed, m))


@pytest.mark.parametrize("four_step", [False, True])
def test_block_boundaries(monkeypatch: pytest.MonkeyPatch, four_step: bool) -> None:
    """Inputs just around multiples of block_bits, outputs of 1 bit, longer than a block
    (m > the block's n) and as long as the input; blocked = unblocked = randextract."""
    if four_step:
        monkeypatch.setattr(amplification, "FOUR_STEP_MIN_POINTS", 1)
    rng = np.random.default_rng(31 + four_step)
    block = 97
    for n in (1, block - 1, block, block + 1, 2 * block - 1, 2 * block, 2 * block + 1, 5 * block + 3):
        for m in sorted({1, min(n, block - 1), min(n, block + 1), n}):
            x, seed = _random(rng, n), _random(rng, n + m - 1)
            ref = _reference(x, seed, m)
            np.testing.assert_array_equal(toeplitz_hash(x, seed, m, block_bits=block), ref,
                                          err_msg=f"n={n} m={m}")
            np.testing.assert_array_equal(toeplitz_hash(x, seed, m), ref, err_msg=f"n={n} m={m}")
            np.testing.assert_array_equal(toeplitz_hash(x, seed, m, block_bits=1), ref)


def test_large_blocks_at_the_four_step_sizes() -> None:
    """Blocks that are themselves four-step sized, with a short last block (b = 1 bit)."""
    rng = np.random.default_rng(41)
    block = 150_000
    n, m = 2 * block + 1, 40_000
    x, seed = _random(rng, n), _random(rng, n + m - 1)
    np.testing.assert_array_equal(toeplitz_hash(x, seed, m, block_bits=block), _reference(x, seed, m))


def test_the_split_is_a_factorisation_off_powers_of_two() -> None:
    for size in (1, 2, 6, 1 << 17, 3 << 17, 1_259_712, 11_943_936, 1 << 24):
        rows, cols = _split(size)
        assert rows * cols == size
    rows, _ = _split(11_943_936)
    assert rows & (rows - 1)  # not a power of two (the transposing copy's cache conflicts)
    assert 1000 < rows < 12_000


def test_the_rounding_check_refuses_what_it_cannot_round() -> None:
    np.testing.assert_array_equal(_parity_checked(np.array([0.0, 1.0, 2.2, 6.8]), 8), [0, 1, 0, 1])
    with pytest.raises(PrecisionError, match="rounding error 0.3 too large"):
        _parity_checked(np.array([0.0, 5.3]), 8)
    with pytest.raises(PrecisionError):
        _parity_checked(np.array([1.0, np.nan]), 8)
    edge = np.array([3.0 + MAX_ROUNDING_ERROR])
    assert _parity_checked(edge, 8)[0] == 1
