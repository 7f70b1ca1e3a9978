"""What the simulated satellite sent, recomputable per pulse: the simulator's ground truth.

The sent state of pulse ``n`` is a pure function of ``(seed, n)`` — a counter-based
generator — so the simulated satellite (``postprocessing.satellite``) knows what it sent
without a record of the whole pulse train, and the simulator never loops over pulses.

Pulse timing (the convention the sim backend follows)
-----------------------------------------------------
The satellite's source is disciplined to GPS: pulse ``n`` leaves the satellite at UTC
``n × period_ps`` picoseconds after the Unix epoch (``period_ps = 1e12 / rep_rate_hz``,
an integer). Every ``pulses_per_sync``-th pulse (``n % pulses_per_sync == 0``) also fires
the sync laser, seen on the SYNC channel with the same time of flight. Recovering the
pulse of a detection from the sync train is post-processing's job
(``postprocessing.pulses``), which never sees the seed; sifting against what was sent is
the satellite's (``postprocessing.satellite.truth``).
"""

from __future__ import annotations

import functools
from enum import IntEnum

import numpy as np

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


class Basis(IntEnum):
    """Z (rectilinear: H=0, V=1) and X (diagonal: D=0, A=1)."""

    Z = 0
    X = 1


class Intensity(IntEnum):
    """Decoy-state intensity classes (index into ``mu``)."""

    SIGNAL = 0
    DECOY = 1
    VACUUM = 2


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014), vectorised on uint64 (wrapping)."""
    z = np.asarray(x, dtype=_U64) + _GOLDEN
    z = (z ^ (z >> _U64(30))) * _M1
    z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


def _seed_key(seed: int) -> np.uint64:
    return splitmix64(np.array([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=_U64))[0]


@functools.lru_cache(maxsize=16)
def class_thresholds(intensity_probs: tuple[float, ...]) -> np.ndarray:
    """Upper 32-bit thresholds of each intensity class for the given probabilities."""
    p = np.asarray(intensity_probs, dtype=float)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"intensity probabilities must be >= 0 and sum to 1, got {intensity_probs}")
    cum = np.cumsum(p)
    cum[-1] = 1.0
    return np.minimum(np.round(cum * 2**32), 2**32).astype(np.uint64)


def sent_pulses(
    seed: int,
    pulse_index: np.ndarray,
    intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(basis, bit, intensity_class)`` the satellite sent for each pulse index.

    Each is a uint8 array shaped like ``pulse_index`` (non-negative int64): basis per
    :class:`Basis`, bit 0/1, intensity class per :class:`Intensity` drawn with
    ``intensity_probs``. Pure: the same ``(seed, index)`` always gives the same answer,
    in any order or chunking. The hash is SplitMix64 of ``key(seed) XOR index``; the top
    two bits give basis and bit, the low 32 bits the intensity class.
    """
    h = pulse_hash(seed, pulse_index)
    return hash_basis_bit(h) + (hash_intensity(h, intensity_probs),)


def pulse_hash(seed: int, pulse_index: np.ndarray) -> np.ndarray:
    """The 64-bit hash :func:`sent_pulses` derives everything from (uint64 array)."""
    idx = np.asarray(pulse_index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"pulse_index must be an integer array, got dtype {idx.dtype}")
    return splitmix64(idx.astype(_U64) ^ _seed_key(seed))


def hash_basis_bit(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Basis (top bit) and bit (next bit) of :func:`pulse_hash` values."""
    return (h >> _U64(63)).astype(np.uint8), ((h >> _U64(62)) & _U64(1)).astype(np.uint8)


def hash_intensity(h: np.ndarray, intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25)) -> np.ndarray:
    """Intensity class (low 32 bits against the class thresholds) of :func:`pulse_hash` values."""
    low = h & _U64(0xFFFF_FFFF)
    # Counting thresholds passed is a searchsorted that is several times faster for 3 classes.
    intensity = np.zeros(low.shape, dtype=np.uint8)
    for threshold in class_thresholds(tuple(intensity_probs))[:-1]:
        intensity += low >= threshold
    return intensity


def period_ps_of(rep_rate_hz: float) -> int:
    """The pulse period in whole picoseconds; the rate must divide 1 THz evenly."""
    period = 1e12 / rep_rate_hz
    if rep_rate_hz <= 0 or abs(period - round(period)) > 1e-6:
        raise ValueError(
            f"repetition rate {rep_rate_hz} Hz does not give a whole-picosecond period "
            f"({period} ps); choose a rate that divides 1e12"
        )
    return int(round(period))


__all__ = [
    "Basis",
    "Intensity",
    "class_thresholds",
    "hash_basis_bit",
    "hash_intensity",
    "period_ps_of",
    "pulse_hash",
    "sent_pulses",
    "splitmix64",
]
