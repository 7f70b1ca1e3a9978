"""Key confirmation: the tag sized to ε_cor catches every corrupted key and leaks only t bits."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from postprocessing.estimation import (
    BasisCounts,
    ClassCounts,
    SecurityParameters,
    SiftedCounts,
    secret_key_length,
)
from postprocessing.verification import (
    VerificationSeed,
    collision_probability,
    new_verification_seed,
    tags_match,
    verification_tag,
    verification_tag_bits,
)


def test_tag_length_follows_epsilon_cor() -> None:
    assert verification_tag_bits(1e-15) == 51
    assert verification_tag_bits(1e-10) == 35
    assert verification_tag_bits(2.0**-50) == 51
    assert verification_tag_bits(0.5) == 2
    for eps in (1e-6, 1e-12, 1e-20, 1e-30):
        t = verification_tag_bits(eps)
        assert 2.0**-t <= eps / 2 < 2.0 ** -(t - 1)
    with pytest.raises(ValueError, match="epsilon_cor"):
        verification_tag_bits(0.0)
    with pytest.raises(ValueError, match="epsilon_cor"):
        verification_tag_bits(1e-40)


def test_collision_bound_is_within_epsilon_cor_for_a_pass() -> None:
    assert collision_probability(1_600_000, 51) <= 1e-15
    assert collision_probability(10**9, 51) <= 1e-15


def test_equal_keys_give_equal_tags() -> None:
    rng = np.random.default_rng(1)
    key = rng.integers(0, 2, 100_000, dtype=np.uint8)
    seed = new_verification_seed(1e-15)
    tag = verification_tag(key, seed)
    assert len(tag) == 7  # 51 bits
    assert tags_match(tag, verification_tag(key.copy(), seed))
    assert VerificationSeed.from_bytes(seed.to_bytes(), seed.tag_bits) == seed


def test_a_single_flipped_bit_is_always_caught() -> None:
    rng = np.random.default_rng(2)
    for trial in range(3000):
        n = int(rng.integers(1, 4000))
        key = rng.integers(0, 2, n, dtype=np.uint8)
        wrong = key.copy()
        wrong[int(rng.integers(0, n))] ^= 1
        seed = new_verification_seed(1e-15)
        assert not tags_match(verification_tag(key, seed), verification_tag(wrong, seed)), trial


def test_bursts_truncation_and_extension_are_caught() -> None:
    rng = np.random.default_rng(3)
    key = rng.integers(0, 2, 10_000, dtype=np.uint8)
    for _ in range(200):
        seed = new_verification_seed(1e-15)
        tag = verification_tag(key, seed)
        burst = key.copy()
        lo = int(rng.integers(0, 9_900))
        burst[lo:lo + int(rng.integers(2, 100))] ^= 1
        assert not tags_match(tag, verification_tag(burst, seed))
        assert not tags_match(tag, verification_tag(key[:-1], seed))
        assert not tags_match(tag, verification_tag(np.append(key, 0).astype(np.uint8), seed))


def test_tag_is_uniform_whatever_the_key() -> None:
    """Over fresh seeds the tag's bits are fair coins for any key: they say nothing about
    the key until the seed is fixed, and then at most t bits (counted as leakage)."""
    rng = np.random.default_rng(4)
    keys = [np.zeros(4096, dtype=np.uint8), np.ones(4096, dtype=np.uint8),
            rng.integers(0, 2, 4096, dtype=np.uint8)]
    trials = 4000
    for key in keys:
        ones = np.zeros(51)
        for _ in range(trials):
            tag = verification_tag(key, new_verification_seed(1e-15))
            ones += np.unpackbits(np.frombuffer(tag, dtype=np.uint8))[:51]
        # Each bit's frequency within 5 standard deviations of 1/2.
        assert np.all(np.abs(ones / trials - 0.5) < 5 * 0.5 / np.sqrt(trials))


def test_tag_bits_are_counted_in_the_key_length() -> None:
    params = SecurityParameters(epsilon_cor=1e-12)
    b = BasisCounts(signal=ClassCounts(sifted_bits=726_939, errors=7_633),
                    decoy=ClassCounts(sifted_bits=48_034, errors=1_777),
                    vacuum=ClassCounts(sifted_bits=2_972, errors=1_486))
    result = secret_key_length(SiftedCounts(Z=b, X=b), 0, params)
    assert result.correctness_penalty_bits == verification_tag_bits(1e-12) == 41
    assert new_verification_seed(1e-12).tag_bits == 41


def test_malformed_seeds_are_refused() -> None:
    seed = new_verification_seed(1e-15)
    with pytest.raises(ValidationError):
        VerificationSeed.from_bytes(seed.to_bytes()[:-1], seed.tag_bits)
    with pytest.raises(ValidationError):
        VerificationSeed(tag_bits=51, poly_key=b"\x00" * 15, toeplitz_seed=seed.toeplitz_seed)
    with pytest.raises(ValidationError, match="padding"):
        VerificationSeed(tag_bits=51, poly_key=seed.poly_key, toeplitz_seed=seed.toeplitz_seed[:-1] + b"\xff")
    with pytest.raises(ValueError, match="only 0 and 1"):
        verification_tag(np.array([0, 2], dtype=np.uint8), seed)
