"""Pulse-index recovery at the ground, batch by batch, against the simulator's ground truth."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from drivers.timetagger.base import Channel
from drivers.timetagger.sim import C_M_S, SimOptions, SimTimeTagger
from postprocessing.pulses import (
    Detectors,
    PassTiming,
    PulseError,
    PulseMapper,
    anchor_sync_index,
    predicted_tof_ps,
    pulse_index_from_sync,
    tagger_epoch_utc_ps_of,
)
from station.clock import SimClock
from tests.conftest import REPO

START_S = datetime(2016, 12, 19, 16, 50, 30, tzinfo=UTC).timestamp()
SITE = {"latitude_deg": 40.39587, "longitude_deg": 117.57746, "height_m": 890.0}


def _elements() -> str:
    return (REPO / "config/elements/micius-2016-12-18.tle").read_text()


async def _simulated_batches(seconds: float = 3.0) -> tuple[SimTimeTagger, list]:
    from skyfield.api import EarthSatellite

    from station.config.site import SiteConfig
    from station.orbit.geometry import SatelliteLinkGeometry, load_timescale

    lines = _elements().strip().splitlines()
    sat = EarthSatellite(lines[-2], lines[-1], "MICIUS", load_timescale())
    site = SiteConfig(name="Xinglong", pressure_mbar=0, **SITE)
    tagger = SimTimeTagger(SimOptions(preset="micius", seed=2016), clock=SimClock(START_S, speed=math.inf))
    await tagger.connect()
    tagger.set_link(SatelliteLinkGeometry(sat, site))
    await tagger.start()
    batches = []
    async for b in tagger.batches():
        batches.append(b)
        if b.info.end_ps >= round(seconds * 1e12):
            await tagger.stop()
    await tagger.close()
    return tagger, batches


async def test_batch_mapping_matches_the_simulators_truth_and_the_whole_array_mapping() -> None:
    tagger, batches = await _simulated_batches()
    timing = PassTiming(elements=_elements(), **SITE)
    first = batches[0]
    timing.tagger_epoch_utc_ps = tagger_epoch_utc_ps_of(first.info.start_ps, first.info.start_time_s)
    assert abs(timing.tagger_epoch_utc_ps - tagger.tagger_epoch_utc_ps) < 1_000_000  # < 1 µs
    mapper = PulseMapper(detectors=Detectors(), period_ps=timing.period_ps,
                         pulses_per_sync=timing.pulses_per_sync, anchor=timing.anchor)
    got = [mapper.map_batch(b.events["timestamp_ps"], b.events["channel"]) for b in batches]
    index = np.concatenate([g.pulse_index for g in got])
    events = np.concatenate([b.events for b in batches])
    det = events[events["channel"] <= Channel.A]
    truth, offset = tagger.pulse_index_at(det["timestamp_ps"])
    in_gate = np.abs(offset) < 1000.0
    # Every gated single-click detection is numbered as the simulator numbered it (the
    # gate edge itself may differ by a ps between the two clocks: allow it 1 in 10^3).
    assert np.isin(index, truth).all()
    assert np.isin(index, truth[in_gate]).mean() > 0.999
    assert index.size >= in_gate.sum() - 2 * mapper.state.multi_clicks - 5
    # Same answer as mapping the whole array at once.
    sync = events["timestamp_ps"][events["channel"] == Channel.SYNC]
    whole, off = pulse_index_from_sync(det["timestamp_ps"], sync,
                                       first_sync_pulse_index=mapper.state.first_sync_pulse_index,
                                       period_ps=timing.period_ps, pulses_per_sync=timing.pulses_per_sync)
    assert np.isin(index, whole[np.abs(off) < 1000]).all()
    assert np.all(np.diff(index) > 0), "pulse indices ascend and repeat nowhere"
    # The bits are the detectors': H/V → Z, D/A → X.
    basis = np.concatenate([g.basis for g in got])
    assert 0.45 < basis.mean() < 0.55


def test_predicted_time_of_flight_is_within_a_small_part_of_the_sync_period() -> None:
    from skyfield.api import EarthSatellite

    from station.config.site import SiteConfig
    from station.orbit.geometry import SatelliteLinkGeometry, load_timescale

    lines = _elements().strip().splitlines()
    geo = SatelliteLinkGeometry(EarthSatellite(lines[-2], lines[-1], "M", load_timescale()),
                                SiteConfig(name="X", pressure_mbar=0, **SITE))
    range_km, _ = geo.range_el_at(np.array([START_S]))
    tof = predicted_tof_ps(_elements(), utc_s=START_S, **SITE)
    assert abs(tof - range_km[0] * 1e3 / C_M_S * 1e12) < 1e6  # < 1 µs of the 50 µs tolerance
    assert anchor_sync_index(0, tagger_epoch_utc_ps=10**20, predicted_tof_ps=tof,
                             period_ps=10_000, pulses_per_sync=10_000) % 10_000 == 0


def test_bad_headers_and_time_bases_are_named_errors() -> None:
    with pytest.raises(PulseError, match="channel_map"):
        Detectors.from_channel_map('{"1": "H"}')
    with pytest.raises(PulseError, match="not a TLE"):
        predicted_tof_ps("garbage", utc_s=START_S, **SITE)
    with pytest.raises(PulseError, match="lacks"):
        PassTiming.from_header({"elements": _elements()})
    with pytest.raises(PulseError, match="UTC epoch"):
        PassTiming(elements=_elements(), **SITE).anchor(0)
    with pytest.raises(PulseError, match="does not divide"):
        _ = PassTiming(elements=_elements(), sync_rate_hz=3e3, **SITE).pulses_per_sync
    assert Detectors.from_channel_map('{"7": "h", "8": "V", "9": "D", "10": "A", "11": "SYNC"}').h == 7


def test_multi_clicks_are_dropped_and_counted() -> None:
    period, per_sync = 10_000, 10_000
    sync = np.arange(0, 5 * period * per_sync, period * per_sync, dtype=np.int64)
    det_t = np.array([3 * period, 3 * period + 10, 7 * period, 9 * period], dtype=np.int64)
    ts = np.concatenate([sync, det_t])
    ch = np.concatenate([np.full(sync.size, 5, np.uint8), np.array([1, 3, 2, 4], np.uint8)])
    order = np.argsort(ts, kind="stable")
    m = PulseMapper(detectors=Detectors(), period_ps=period, pulses_per_sync=per_sync,
                    anchor=lambda _t: 1_000_000)
    out = m.map_batch(ts[order], ch[order])
    assert out.pulse_index.tolist() == [1_000_007, 1_000_009]
    assert m.state.multi_clicks == 2 and "bit" not in repr(out)
