"""The sim time tagger through the TimeTagger interface, on the simulated clock."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.timetagger.base import Channel, ChannelConfig, TimeTaggerError, TimeTaggerNotConnected
from drivers.timetagger.link import StaticLinkGeometry
from drivers.timetagger.sim import C_M_S, SimOptions, SimTimeTagger
from station.clock import SimClock
from station.config.timetagger import TimeTaggerConfig

START_S = 1_482_166_198.0  # 2016-12-19 16:49:58 UTC
PS = 10**12
DETECTORS = [int(c) for c in (Channel.H, Channel.V, Channel.D, Channel.A)]


class LinearRange:
    """A satellite receding (v > 0) or approaching at constant speed, fixed elevation."""

    def __init__(self, range_km: float, v_km_s: float, el_deg: float = 45.0) -> None:
        self.range_km, self.v_km_s, self.el_deg = range_km, v_km_s, el_deg

    def range_el_at(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(time_s, dtype=float)
        return self.range_km + self.v_km_s * (t - START_S), np.full(t.shape, self.el_deg)


async def run(tagger: SimTimeTagger, seconds: float) -> list[Any]:
    """Collect batches until ``seconds`` of tagger time have been delivered."""
    out = []
    async for batch in tagger.batches():
        out.append(batch)
        if batch.info.end_ps >= round(seconds * PS):
            await tagger.stop()
    return out


async def started(clock: SimClock, link: Any = None, **options: Any) -> SimTimeTagger:
    tagger = SimTimeTagger(SimOptions(**options), clock=clock)
    await tagger.connect()
    tagger.set_link(link)
    await tagger.start()
    return tagger


def events_of(batches: list[Any]) -> np.ndarray:
    return np.concatenate([b.events for b in batches])


# -- options and registry ------------------------------------------------------------------
def test_presets_fill_unset_options_and_explicit_values_win() -> None:
    micius = SimOptions()
    assert (micius.rep_rate_hz, micius.rx_aperture_m, micius.polarization_contrast) == (100e6, 1.0, 280.0)
    jinan = SimOptions(preset="jinan1", background_hz=10.0)
    assert (jinan.rep_rate_hz, jinan.rx_aperture_m, jinan.background_hz) == (625e6, 0.28, 10.0)
    assert micius.polarization_error == pytest.approx(1 / 281 + math.sin(math.radians(3)) ** 2)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"preset": "hubble"}, "preset"),
        ({"rep_rate_hz": 3e8}, "whole-picosecond"),
        ({"sync_rate_hz": 3e3}, "must divide"),
        ({"mu_probs": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"detector_efficiency": 1.5}, "detector_efficiency"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        SimOptions(**options)


async def test_only_the_sim_backend_offers_the_simulated_downlink(tmp_path) -> None:
    clock = SimClock(START_S, manual=True)
    sim = registry.create("timetagger", "sim", {"preset": "lab"}, clock=clock)
    link = sim.simulated_downlink()
    assert link is sim
    link.set_link(StaticLinkGeometry(range_km=800.0, el_deg=45.0))
    with pytest.raises(ValueError, match="pointing error"):
        link.set_pointing_error_urad(-1.0)
    with pytest.raises(TimeTaggerError, match="not been started"):
        _ = link.tagger_epoch_utc_ps
    recording = tmp_path / "r.ptu"
    recording.write_bytes(b"")
    replay = registry.create("timetagger", "replay", {"path": str(recording)}, clock=clock)
    assert replay.simulated_downlink() is None


def test_registry_and_station_config_build_the_sim_backend() -> None:
    clock = SimClock(START_S, manual=True)
    tagger = registry.create("timetagger", "sim", {"preset": "lab", "seed": 3}, clock=clock)
    assert isinstance(tagger, SimTimeTagger)
    assert tagger.options.seed == 3 and tagger.options.detector_efficiency == 0.8
    config = TimeTaggerConfig(backend="sim", options={"preset": "jinan1"})
    assert config.validated_options().rep_rate_hz == 625e6
    with pytest.raises(ValidationError, match="batch_s"):
        TimeTaggerConfig(backend="sim", options={"batch_s": -1})


# -- streaming on the clock ----------------------------------------------------------------
async def test_batches_tile_clock_time_and_wait_for_it() -> None:
    clock = SimClock(START_S, manual=True)
    tagger = await started(clock, StaticLinkGeometry(800.0, 40.0), batch_s=0.25)
    it = tagger.batches().__aiter__()
    # Nothing comes before a batch's interval has passed on the clock.
    await clock.advance(0.2)
    pending = __import__("asyncio").ensure_future(it.__anext__())
    await clock.advance(0.0)
    assert not pending.done()
    await clock.advance(0.05)
    first = await pending
    assert (first.info.seq, first.info.start_ps, first.info.end_ps) == (0, 0, PS // 4)
    assert first.info.start_time_s == pytest.approx(START_S)
    batches = [first]
    for _ in range(3):
        nxt = __import__("asyncio").ensure_future(it.__anext__())
        await clock.advance(0.25)
        batches.append(await nxt)
    await tagger.close()
    async for _ in it:  # stop() ends the iterator
        pass
    assert [b.info.seq for b in batches] == [0, 1, 2, 3]
    assert all(a.info.end_ps == b.info.start_ps for a, b in zip(batches, batches[1:], strict=False))
    ts = events_of(batches)["timestamp_ps"]
    assert np.all(np.diff(ts) >= 0)
    assert ts.min() >= 0 and ts.max() < PS


async def test_without_a_link_only_noise_and_pps() -> None:
    clock = SimClock(START_S + 0.25, speed=math.inf)
    tagger = await started(clock, None, dark_count_hz=25.0, background_hz=75.0, seed=4)
    batches = await run(tagger, 20.0)
    await tagger.close()
    ev = events_of(batches)
    assert set(np.unique(ev["channel"]).tolist()) == {*DETECTORS, int(Channel.PPS)}
    # PPS exactly at whole UTC seconds on the tagger's time base (started 0.25 s past one).
    pps = ev["timestamp_ps"][ev["channel"] == Channel.PPS]
    assert pps.size == 20
    assert np.all((tagger.tagger_epoch_utc_ps % PS + pps) % PS == 0)
    for ch in DETECTORS:
        n = int(np.sum(ev["channel"] == ch))
        assert n == pytest.approx(100 * 20, abs=5 * math.sqrt(2000))
    rates = tagger.count_rates_hz()
    assert rates[int(Channel.SYNC)] == 0.0
    assert rates[int(Channel.PPS)] == pytest.approx(1.0, abs=0.01)


async def test_local_sync_runs_without_a_link() -> None:
    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, None, sync_source="local", sync_jitter_ps=0.0)
    batches = await run(tagger, 1.0)
    await tagger.close()
    ev = events_of(batches)
    sync = ev["timestamp_ps"][ev["channel"] == Channel.SYNC]
    assert sync.size == 10_000
    assert np.all(np.diff(sync) == 100_000_000)


async def test_same_seed_same_events_other_seed_other_events() -> None:
    results = []
    for seed in (11, 11, 12):
        clock = SimClock(START_S, speed=math.inf)
        tagger = await started(clock, StaticLinkGeometry(700.0, 45.0), seed=seed)
        results.append(events_of(await run(tagger, 1.0)))
        await tagger.close()
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


async def test_detection_rate_matches_the_link_budget() -> None:
    clock = SimClock(START_S, speed=math.inf)
    link = StaticLinkGeometry(700.0, 45.0)
    tagger = await started(clock, link, background_hz=0.0, dark_count_hz=0.0, dead_time_ns=0.0)
    ev = events_of(await run(tagger, 5.0))
    await tagger.close()
    opt = tagger.options
    eta = float(opt.link_budget().detection_efficiency(700.0, 45.0))
    expected_hz = opt.rep_rate_hz * sum(
        p * -math.expm1(-mu * eta) for mu, p in zip(opt.mu, opt.mu_probs, strict=True))
    detections = int(np.isin(ev["channel"], DETECTORS).sum())
    assert detections / 5.0 == pytest.approx(expected_hz, rel=4 / math.sqrt(expected_hz * 5))
    # Passive basis choice and balanced bits: the four detectors share the counts.
    counts = np.bincount(ev["channel"], minlength=5)[1:5]
    assert counts / counts.sum() == pytest.approx([0.25] * 4, abs=0.01)


async def test_tracking_error_lowers_the_rate() -> None:
    rates = []
    for error in (None, lambda t: 50.0):  # 50 µrad = half the field of view: exp(-2)
        clock = SimClock(START_S, speed=math.inf)
        tagger = await started(clock, StaticLinkGeometry(600.0, 60.0), background_hz=0.0,
                               dark_count_hz=0.0)
        tagger.set_pointing_error_urad(error)
        ev = events_of(await run(tagger, 3.0))
        await tagger.close()
        rates.append(np.isin(ev["channel"], DETECTORS).sum() / 3.0)
    assert rates[1] / rates[0] == pytest.approx(math.exp(-2), rel=0.05)
    with pytest.raises(ValueError, match="pointing error"):
        tagger.set_pointing_error_urad(-1.0)


async def test_timestamps_follow_the_changing_time_of_flight() -> None:
    """Sync arrivals are compressed by the Doppler factor; detections sit on the pulse grid."""
    clock = SimClock(START_S, speed=math.inf)
    v_km_s = -7.0
    tagger = await started(clock, LinearRange(1000.0, v_km_s), sync_jitter_ps=0.0, jitter_fwhm_ps=0.0,
                           background_hz=0.0, dark_count_hz=0.0)
    ev = events_of(await run(tagger, 2.0))
    await tagger.close()
    sync = ev["timestamp_ps"][ev["channel"] == Channel.SYNC]
    spacing = np.diff(sync)
    assert spacing.mean() == pytest.approx(100e6 * (1 + v_km_s * 1e3 / C_M_S), abs=1.0)
    # First sync: emitted at a whole sync period of UTC, arriving one time of flight later.
    tof_ps = (tagger.tagger_epoch_utc_ps % 10**8 + int(sync[0])) % 10**8
    assert tof_ps == pytest.approx((1000e3 / C_M_S * 1e12) % 1e8, abs=1e6)
    det = ev["timestamp_ps"][np.isin(ev["channel"], DETECTORS)]
    _, offset = tagger.pulse_index_at(det)
    assert np.max(np.abs(offset)) <= 2.0  # ps: no jitter, so exactly on the grid


async def test_dead_time_holds_across_batches() -> None:
    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, StaticLinkGeometry(0.001, 90.0), preset="lab", batch_s=0.01,
                           dead_time_ns=100.0)
    ev = events_of(await run(tagger, 0.05))
    await tagger.close()
    for ch in DETECTORS:
        t = ev["timestamp_ps"][ev["channel"] == ch]
        assert t.size > 50_000
        assert np.diff(t).min() >= 100_000


async def test_input_delay_shifts_a_channel() -> None:
    clock = SimClock(START_S + 0.5, speed=math.inf)
    tagger = SimTimeTagger(SimOptions(), clock=clock)
    with pytest.raises(TimeTaggerNotConnected):
        await tagger.start()
    await tagger.connect()
    await tagger.configure([ChannelConfig(channel=int(Channel.PPS), delay_ps=1234)])
    await tagger.start()
    ev = events_of(await run(tagger, 3.0))
    await tagger.close()
    pps = ev["timestamp_ps"][ev["channel"] == Channel.PPS]
    assert pps.size == 3 and np.all((tagger.tagger_epoch_utc_ps % PS + pps) % PS == 1234)


async def test_too_bright_input_overflows_honestly() -> None:
    """Beyond the tagger's throughput events are lost, flagged and counted."""
    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, StaticLinkGeometry(0.001, 90.0), preset="lab", batch_s=0.01,
                           max_rate_hz=5e6, buffer_events=20_000)
    batches = []
    async for batch in tagger.batches():
        batches.append(batch)
        if batch.info.seq == 4:
            tagger.set_link(None)  # the light goes away: the buffer drains
        if batch.info.seq == 6:
            await tagger.stop()
    await tagger.close()
    info = [b.info for b in batches]
    assert info[0].overflow_begin and info[0].missed_events > 0
    assert all(i.in_overflow and len(b) == 0 for i, b in zip(info[1:5], batches[1:5], strict=True))
    assert info[5].overflow_end and not info[5].in_overflow and len(batches[5]) > 0
    assert not info[6].lossy
    # Nothing vanishes unaccounted: delivered + missed is what reached the tagger.
    assert tagger.totals["missed_events"] == sum(i.missed_events for i in info)
    delivered = sum(len(b) for b in batches[:5])
    assert delivered + sum(i.missed_events for i in info[:5]) > 5 * 0.01 * 10e6
    # Right up to the overflow the tagger kept up: the kept events fill its buffer + drain.
    assert len(batches[0]) == pytest.approx(20_000 + 5e6 * batches[0].events["timestamp_ps"][-1] / PS, abs=2)


def test_station_config_channel_map_and_inputs() -> None:
    config = TimeTaggerConfig(backend="sim", channels=[{"channel": 5, "delay_ps": -250}])
    assert config.channel_configs() == [ChannelConfig(channel=5, delay_ps=-250)]
    assert config.channel_map.detectors() == {1: "H", 2: "V", 3: "D", 4: "A"}
    with pytest.raises(ValidationError, match="input 2 is given to both h and v"):
        TimeTaggerConfig(channel_map={"h": 2})
    with pytest.raises(ValidationError, match="configured twice"):
        TimeTaggerConfig(channels=[{"channel": 1}, {"channel": 1}])


async def test_stop_delivers_the_partial_last_batch() -> None:
    import asyncio

    clock = SimClock(START_S, manual=True)
    tagger = await started(clock, None, batch_s=0.1, background_hz=1e5)
    batches: list[Any] = []
    arrived = asyncio.Event()

    async def consume() -> None:
        async for batch in tagger.batches():
            batches.append(batch)
            arrived.set()

    task = asyncio.ensure_future(consume())
    await clock.advance(0.15)
    async with asyncio.timeout(30):  # the first batch is generated in a worker thread
        await arrived.wait()
    assert [b.info.end_ps for b in batches] == [PS // 10]
    await tagger.stop()
    await task
    assert [b.info.end_ps for b in batches] == [PS // 10, 15 * PS // 100]
    last = batches[-1].events["timestamp_ps"]
    assert last.size > 0 and last.min() >= PS // 10 and last.max() < 15 * PS // 100
    await tagger.close()


async def test_link_comes_and_goes_between_batches() -> None:
    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, None, background_hz=0.0, dark_count_hz=0.0)
    link = StaticLinkGeometry(650.0, 50.0)
    per_batch = []
    async for batch in tagger.batches():
        ch = batch.events["channel"]
        per_batch.append((int(np.isin(ch, DETECTORS).sum()), int((ch == Channel.SYNC).sum())))
        if batch.info.seq == 2:
            tagger.set_link(link)
        if batch.info.seq == 5:
            tagger.set_link(link)  # the same link again changes nothing
        if batch.info.seq == 8:
            tagger.set_link(None)
        if batch.info.seq == 10:
            await tagger.stop()
    await tagger.close()
    assert per_batch[:3] == [(0, 0)] * 3
    assert all(d > 1000 and s == 1000 for d, s in per_batch[3:9])
    assert per_batch[9:] == [(0, 0)] * 2


async def test_jinan1_preset_at_625_mhz_maps_detections_to_pulses() -> None:
    from postprocessing.pulses import anchor_sync_index, pulse_index_from_sync
    from postprocessing.satellite.truth import sift_qber

    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, LinearRange(600.0, -6.0, 50.0), preset="jinan1", seed=5)
    ev = events_of(await run(tagger, 2.0))
    await tagger.close()
    assert (tagger.period_ps, tagger.pulses_per_sync) == (1600, 62_500)
    det = ev[np.isin(ev["channel"], DETECTORS)]
    sync = ev["timestamp_ps"][ev["channel"] == Channel.SYNC]
    first = anchor_sync_index(int(sync[0]), tagger_epoch_utc_ps=tagger.tagger_epoch_utc_ps,
                              predicted_tof_ps=600e3 / C_M_S * 1e12, period_ps=1600,
                              pulses_per_sync=62_500)
    index, offset = pulse_index_from_sync(det["timestamp_ps"], sync, first_sync_pulse_index=first,
                                          period_ps=1600, pulses_per_sync=62_500)
    truth, _ = tagger.pulse_index_at(det["timestamp_ps"])
    gated = np.abs(offset) < 400  # ±2.8σ of the 100 ps FWHM jitter
    assert np.mean(index[gated] == truth[gated]) > 0.999
    result = sift_qber(det["channel"], index, offset, seed=5, gate_ps=400)
    assert result["qber_signal"] < 0.015


class BrokenGeometry:
    def range_el_at(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(time_s, dtype=float)
        return np.full(t.shape, np.nan), np.full(t.shape, 45.0)


async def test_a_failing_link_geometry_is_a_named_error() -> None:
    from drivers.timetagger.base import TimeTaggerError

    clock = SimClock(START_S, speed=math.inf)
    tagger = await started(clock, BrokenGeometry())
    with pytest.raises(TimeTaggerError, match="non-finite range"):
        async for _ in tagger.batches():
            pass
    await tagger.close()
    # The tagger's own view of what it sent is the module function with its seed.
    n = np.arange(10, dtype=np.int64)
    from drivers.timetagger.bb84 import sent_pulses

    assert all(np.array_equal(a, b) for a, b in zip(tagger.sent_pulses(n), sent_pulses(1, n), strict=True))
