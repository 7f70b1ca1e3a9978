"""postprocessing.bits: packing in big-endian bit order, strict unpacking."""

from __future__ import annotations

import numpy as np
import pytest

from postprocessing.bits import as_bits, bits_to_int, int_to_bits, pack_bits, unpack_bits


def test_pack_is_big_endian_and_round_trips() -> None:
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=np.uint8)) == b"\x80\x80"
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 9, 1000, 1001):
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        data = pack_bits(bits)
        assert len(data) == (n + 7) // 8
        np.testing.assert_array_equal(unpack_bits(data, n), bits)


def test_unpack_refuses_wrong_length_and_dirty_padding() -> None:
    with pytest.raises(ValueError, match="pack into 2 bytes"):
        unpack_bits(b"\x00", 9)
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(b"\x81", 7)
    with pytest.raises(ValueError, match=">= 0"):
        unpack_bits(b"", -1)


def test_int_conversions() -> None:
    assert bits_to_int(np.array([1, 0, 1], dtype=np.uint8)) == 5
    np.testing.assert_array_equal(int_to_bits(5, 3), [1, 0, 1])
    assert bits_to_int(int_to_bits(2**100 + 3, 101)) == 2**100 + 3
    with pytest.raises(ValueError, match="does not fit"):
        int_to_bits(8, 3)


def test_as_bits_refuses_non_bits() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        as_bits(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="dtype"):
        as_bits(np.array([0.0, 1.0]))
    assert as_bits(np.array([True, False])).dtype == np.uint8
