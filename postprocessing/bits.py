"""Bit-array helpers shared by the stages.

Stage APIs carry bits as numpy ``uint8`` arrays of 0/1, one bit per element; storage and
the wire carry them packed, big-endian bit order (the first bit is the most significant
bit of the first byte, as ``np.packbits`` does), with the bit count sent alongside.
"""

from __future__ import annotations

import numpy as np


def as_bits(bits: object, *, name: str = "bits") -> np.ndarray:
    """``bits`` as a 1-D uint8 array of 0/1, or a ValueError naming ``name`` and the reason."""
    arr = np.asarray(bits)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of bits, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer or bool array of 0/1, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 1):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.uint8, copy=False)


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack 0/1 bits into bytes, big-endian bit order; the last byte is zero-padded."""
    return np.packbits(as_bits(bits)).tobytes()


def unpack_bits(data: bytes, n_bits: int) -> np.ndarray:
    """The first ``n_bits`` bits of ``data`` (big-endian bit order) as a uint8 0/1 array.

    Refuses a ``data`` of the wrong length for ``n_bits``, or non-zero padding bits, so a
    malformed packed field is caught where it is decoded.
    """
    if n_bits < 0:
        raise ValueError(f"n_bits must be >= 0, got {n_bits}")
    expected = (n_bits + 7) // 8
    if len(data) != expected:
        raise ValueError(f"{n_bits} bits pack into {expected} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[n_bits:].any():
        raise ValueError("the padding bits after the last bit are not zero")
    return bits[:n_bits].copy()


def bits_to_int(bits: np.ndarray) -> int:
    """The big-endian integer the bits spell (first bit most significant)."""
    b = as_bits(bits)
    if b.size == 0:
        return 0
    return int.from_bytes(pack_bits(b), "big") >> ((-b.size) % 8)


def int_to_bits(value: int, n_bits: int) -> np.ndarray:
    """``value`` as ``n_bits`` big-endian bits; refuses a value that does not fit."""
    if value < 0 or value >> n_bits:
        raise ValueError(f"{value} does not fit in {n_bits} unsigned bits")
    n_bytes = (n_bits + 7) // 8
    raw = np.unpackbits(np.frombuffer((value << ((-n_bits) % 8)).to_bytes(n_bytes, "big"), dtype=np.uint8))
    return raw[:n_bits].copy()


__all__ = ["as_bits", "bits_to_int", "int_to_bits", "pack_bits", "unpack_bits"]
