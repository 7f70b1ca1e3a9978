"""What the simulated satellite sent, recomputable per pulse, and how to find the pulse.

The sent state of pulse ``n`` is a pure function of ``(seed, n)`` — a counter-based
generator — so a post-processing core can sift any detection without a record of the
whole pulse train, and the simulator never loops over pulses to know what it sent.

Pulse timing (the convention the sim backend follows)
-----------------------------------------------------
The satellite's source is disciplined to GPS: pulse ``n`` leaves the satellite at UTC
``n × period_ps`` picoseconds after the Unix epoch (``period_ps = 1e12 / rep_rate_hz``,
an integer). Every ``pulses_per_sync``-th pulse (``n % pulses_per_sync == 0``) also fires
the sync laser, seen on the SYNC channel with the same time of flight. A detection at
tagger time ``t`` therefore belongs to the pulse found by interpolating between the two
sync arrivals around it (:func:`pulse_index_from_sync`); which pulse the first sync was
follows from the tagger's UTC time base (PPS) and a predicted time of flight good to a
fraction of the sync period (:func:`anchor_sync_index`).
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


def anchor_sync_index(
    sync_timestamp_ps: int,
    *,
    tagger_epoch_utc_ps: int,
    predicted_tof_ps: float,
    period_ps: int,
    pulses_per_sync: int,
) -> int:
    """Pulse index of the sync pulse seen at tagger time ``sync_timestamp_ps``.

    ``tagger_epoch_utc_ps`` is the UTC (ps since the Unix epoch) of tagger time 0 — from
    PPS in a real station; ``predicted_tof_ps`` the time of flight predicted from the orbit,
    which needs to be right only to well within a sync period (100 µs at 10 kHz).
    """
    emitted_utc_ps = tagger_epoch_utc_ps + int(sync_timestamp_ps) - round(predicted_tof_ps)
    sync_period_ps = period_ps * pulses_per_sync
    return int(round(emitted_utc_ps / sync_period_ps)) * pulses_per_sync


def pulse_index_from_sync(
    timestamps_ps: np.ndarray,
    sync_timestamps_ps: np.ndarray,
    *,
    first_sync_pulse_index: int,
    period_ps: int,
    pulses_per_sync: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Map detection timestamps to ``(pulse_index int64, offset_ps float64)``.

    Sync arrivals are numbered incrementally (a missed sync shows as a gap of about two
    sync periods, so gaps are tolerated); between two syncs the pulse grid is interpolated
    linearly, which follows the changing time of flight (Doppler ~1e-5) to a few ps.
    ``offset_ps`` is the detection's time minus its pulse's expected arrival: a gate such
    as ``|offset_ps| < 1000`` keeps the detections that really came from a pulse.
    Detections outside the sync span are extrapolated from the nearest pair.
    """
    t = np.asarray(timestamps_ps, dtype=np.int64)
    s = np.asarray(sync_timestamps_ps, dtype=np.int64)
    if s.size < 2:
        raise ValueError(f"need at least two sync events to map pulses, got {s.size}")
    sync_period_ps = period_ps * pulses_per_sync
    steps = np.rint(np.diff(s) / sync_period_ps).astype(np.int64)
    if np.any(steps <= 0):
        raise ValueError("sync timestamps must be increasing and at least half a sync period apart")
    k = np.concatenate(([0], np.cumsum(steps)))  # sync number relative to the first
    j = np.clip(np.searchsorted(s, t, side="right") - 1, 0, s.size - 2)
    span_ps = (s[j + 1] - s[j]).astype(np.float64)
    pulses_in_span = ((k[j + 1] - k[j]) * pulses_per_sync).astype(np.float64)
    local_period_ps = span_ps / pulses_in_span
    pulses_after = (t - s[j]).astype(np.float64) / local_period_ps
    nearest = np.rint(pulses_after)
    offset_ps = (pulses_after - nearest) * local_period_ps
    index = first_sync_pulse_index + k[j] * pulses_per_sync + nearest.astype(np.int64)
    return index, offset_ps


def sift_qber(
    channels: np.ndarray,
    pulse_index: np.ndarray,
    offset_ps: np.ndarray,
    *,
    seed: int,
    intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25),
    gate_ps: float = 1000.0,
) -> dict[str, float]:
    """Sift detections against what was sent and measure the QBER.

    ``channels`` are detector channels (H=1, V=2, D=3, A=4); ``pulse_index``/``offset_ps``
    from :func:`pulse_index_from_sync`. Detections with ``|offset_ps| >= gate_ps`` are
    discarded (time gating, e.g. the 2 ns window of Liao 2017). Returns counts and the
    QBER over all intensity classes and per class, in matching bases.
    """
    ch = np.asarray(channels)
    gated = np.abs(np.asarray(offset_ps)) < gate_ps
    ch, n = ch[gated], np.asarray(pulse_index)[gated]
    rx_basis = ((ch - 1) >> 1).astype(np.uint8)
    rx_bit = ((ch - 1) & 1).astype(np.uint8)
    basis, bit, klass = sent_pulses(seed, n, intensity_probs)
    sifted = rx_basis == basis
    errors = sifted & (rx_bit != bit)
    result: dict[str, float] = {
        "detections": float(ch.size + (~gated).sum()),
        "gated": float(ch.size),
        "sifted": float(sifted.sum()),
        "errors": float(errors.sum()),
        "qber": float(errors.sum() / max(1, sifted.sum())),
    }
    for k in Intensity:
        sel = sifted & (klass == k)
        result[f"sifted_{k.name.lower()}"] = float(sel.sum())
        result[f"errors_{k.name.lower()}"] = float((errors & sel).sum())
        result[f"qber_{k.name.lower()}"] = float((errors & sel).sum() / max(1, sel.sum()))
    return result


def qber_from_events(
    events: np.ndarray,
    *,
    seed: int,
    tagger_epoch_utc_ps: int,
    first_sync_tof_ps: float,
    period_ps: int,
    pulses_per_sync: int,
    intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25),
    gate_ps: float = 1000.0,
    sync_channel: int = 5,
    detector_channels: tuple[int, ...] = (1, 2, 3, 4),
    chunk_events: int = 500_000,
) -> dict[str, float]:
    """Sift a recorded pass the way a post-processing core would, and measure its QBER.

    ``events`` is the pass's :data:`~drivers.timetagger.base.EVENT_DTYPE` array in time
    order. The first sync pulse is identified from the tagger's UTC time base and the
    predicted time of flight at that moment (``first_sync_tof_ps``, from the orbit); the
    detections are then numbered from the sync train, gated, and compared with
    :func:`sent_pulses` in matching bases (see :func:`sift_qber`). Detections are sifted
    ``chunk_events`` at a time, so memory stays flat for a pass of millions of events.
    """
    sync = events["timestamp_ps"][events["channel"] == sync_channel]
    detectors = events[np.isin(events["channel"], detector_channels)]
    if sync.size == 0 or detectors.size == 0:
        raise ValueError("the events hold no sync or no detections: no QBER can be measured")
    first = anchor_sync_index(int(sync[0]), tagger_epoch_utc_ps=tagger_epoch_utc_ps,
                              predicted_tof_ps=first_sync_tof_ps, period_ps=period_ps,
                              pulses_per_sync=pulses_per_sync)
    totals: dict[str, float] = {}
    for lo in range(0, detectors.size, chunk_events):
        chunk = detectors[lo:lo + chunk_events]
        index, offset = pulse_index_from_sync(chunk["timestamp_ps"], sync,
                                              first_sync_pulse_index=first, period_ps=period_ps,
                                              pulses_per_sync=pulses_per_sync)
        part = sift_qber(chunk["channel"], index, offset, seed=seed,
                         intensity_probs=intensity_probs, gate_ps=gate_ps)
        for key, value in part.items():
            if not key.startswith("qber"):
                totals[key] = totals.get(key, 0.0) + value
    totals["qber"] = totals["errors"] / max(1.0, totals["sifted"])
    for k in Intensity:
        name = k.name.lower()
        errors = totals.pop(f"errors_{name}", 0.0)
        totals[f"qber_{name}"] = errors / max(1.0, totals[f"sifted_{name}"])
    return totals


__all__ = [
    "Basis",
    "Intensity",
    "anchor_sync_index",
    "class_thresholds",
    "hash_basis_bit",
    "hash_intensity",
    "period_ps_of",
    "pulse_hash",
    "pulse_index_from_sync",
    "qber_from_events",
    "sent_pulses",
    "sift_qber",
    "splitmix64",
]
