"""Sent pulses from a counter-based generator, pulse recovery from sync, sifting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.timetagger.bb84 import period_ps_of, sent_pulses
from postprocessing.pulses import PulseError, anchor_sync_index, pulse_index_from_sync
from postprocessing.satellite.truth import sift_qber


def test_sent_pulses_statistics() -> None:
    n = np.arange(10**18, 10**18 + 1_000_000, dtype=np.int64)
    basis, bit, klass = sent_pulses(7, n)
    assert basis.dtype == bit.dtype == klass.dtype == np.uint8
    assert basis.mean() == pytest.approx(0.5, abs=0.003)
    assert bit.mean() == pytest.approx(0.5, abs=0.003)
    shares = np.bincount(klass, minlength=3) / n.size
    assert shares == pytest.approx([0.5, 0.25, 0.25], abs=0.003)
    # Basis, bit and class independent of each other and of the neighbour pulse.
    assert abs(np.corrcoef(basis, bit)[0, 1]) < 0.005
    assert abs(np.corrcoef(basis[1:], basis[:-1])[0, 1]) < 0.005
    assert abs(np.corrcoef(bit, klass == 0)[0, 1]) < 0.005


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), start=st.integers(0, 2**62), cut=st.integers(1, 999))
def test_sent_pulses_depend_only_on_seed_and_index(seed: int, start: int, cut: int) -> None:
    n = np.arange(start, start + 1000, dtype=np.int64)
    whole = sent_pulses(seed, n)
    parts = [sent_pulses(seed, n[:cut]), sent_pulses(seed, n[cut:])]
    shuffled = np.random.default_rng(seed % 2**32).permutation(n.size)
    one_by_one = sent_pulses(seed, n[shuffled])
    for k in range(3):
        assert np.array_equal(whole[k], np.concatenate([parts[0][k], parts[1][k]]))
        assert np.array_equal(whole[k][shuffled], one_by_one[k])


def test_different_seeds_send_different_keys() -> None:
    n = np.arange(100_000, dtype=np.int64)
    a, b = sent_pulses(1, n), sent_pulses(2, n)
    assert np.mean(a[1] == b[1]) == pytest.approx(0.5, abs=0.01)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(TypeError, match="integer"):
        sent_pulses(1, np.array([1.5]))
    with pytest.raises(ValueError, match="sum to 1"):
        sent_pulses(1, np.arange(3), (0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="whole-picosecond"):
        period_ps_of(3e8)
    assert period_ps_of(625e6) == 1600


def _arrivals(n: np.ndarray, period_ps: int, epoch_ps: int, tof_ps0: float, doppler: float) -> np.ndarray:
    """Tagger times of pulses ``n`` for a time of flight changing linearly in time."""
    emit_rel = (n * period_ps - epoch_ps).astype(np.float64)
    return np.rint(emit_rel + tof_ps0 + doppler * emit_rel).astype(np.int64)


def test_pulse_index_from_sync_follows_doppler_and_missed_syncs() -> None:
    period, per_sync = 10_000, 10_000
    epoch = 148_216_619_800 * 10**6  # tagger time 0, UTC ps, a whole µs
    n0 = epoch // period + 123
    tof0, doppler = 2.4e9, -2.3e-5  # 2.4 ms, approaching at 6.9 km/s
    sync_n = np.arange(-(-n0 // per_sync) * per_sync, n0 + 50_000_000, per_sync, dtype=np.int64)
    sync_n = np.delete(sync_n, [3, 4, 100])  # missed syncs
    sync_t = _arrivals(sync_n, period, epoch, tof0, doppler)
    rng = np.random.default_rng(5)
    pulses = np.sort(rng.integers(sync_n[0], sync_n[-1], 20_000))
    det_t = _arrivals(pulses, period, epoch, tof0, doppler) + np.rint(rng.normal(0, 150, pulses.size)).astype(np.int64)
    first = anchor_sync_index(int(sync_t[0]), tagger_epoch_utc_ps=epoch,
                              predicted_tof_ps=tof0 + 30e6,  # 30 µs wrong: still fine
                              period_ps=period, pulses_per_sync=per_sync)
    assert first == sync_n[0]
    index, offset = pulse_index_from_sync(det_t, sync_t, first_sync_pulse_index=first,
                                          period_ps=period, pulses_per_sync=per_sync)
    assert np.array_equal(index, pulses)
    assert np.std(offset) == pytest.approx(150, rel=0.05)
    with pytest.raises(PulseError, match="two sync"):
        pulse_index_from_sync(det_t, sync_t[:1], first_sync_pulse_index=first,
                              period_ps=period, pulses_per_sync=per_sync)


def test_sift_qber_counts_errors_in_matching_bases() -> None:
    n = np.arange(200_000, dtype=np.int64)
    basis, bit, _ = sent_pulses(9, n)
    rx_basis = np.random.default_rng(1).integers(0, 2, n.size).astype(np.uint8)
    rx_bit = np.where(rx_basis == basis, bit, np.random.default_rng(2).integers(0, 2, n.size))
    flip = np.zeros(n.size, dtype=bool)
    flip[::100] = True  # 1 % errors
    rx_bit = rx_bit ^ flip
    channels = (1 + 2 * rx_basis + rx_bit).astype(np.uint8)
    offset = np.zeros(n.size)
    offset[::7] = 5000.0  # outside the gate
    result = sift_qber(channels, n, offset, seed=9, gate_ps=1000.0)
    assert result["gated"] == n.size - n[::7].size
    assert result["sifted"] / result["gated"] == pytest.approx(0.5, abs=0.01)
    assert result["qber"] == pytest.approx(0.01, abs=0.002)
