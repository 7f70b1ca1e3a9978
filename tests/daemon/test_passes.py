"""The Micius pass end to end, and each fault, on the simulated clock with real peers."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from station.daemon.modes import Mode, Outcome, Phase
from station.events import read_pass_file
from station.events.client import StreamClient
from station.mqtt.commands import CommandRefused
from tests.conftest import Broker
from tests.daemon.station import MICIUS, backend_of, running_station, sim_config

PHASES = [Phase.PREPARE.value, Phase.TRACK.value, Phase.FINALIZE.value, Phase.PARK.value,
          Phase.IDLE.value]


def phases_seen(transitions: list[dict]) -> list[str]:
    """The phases the Micius pass went through, from the ``transitions`` topic."""
    return [t["to_phase"] for t in transitions if t["pass_id"] == MICIUS]


async def inject_in_track(st, inject, *, acquiring: bool = False) -> None:
    """Call ``inject()`` once the pass is tracking (and, if asked, acquiring)."""
    clock = st.ctx.clock
    while st.supervisor.phase != Phase.TRACK or (
            acquiring and not (st.supervisor.slot.runner and st.supervisor.slot.runner.acquiring)):
        await clock.sleep(1.0)
    inject()


def assert_transitions_say_why(transitions: list[dict]) -> None:
    """Each of the pass's transitions has kind 'phase' and a reason in words."""
    mine = [t for t in transitions if t["pass_id"] == MICIUS]
    assert mine and all(t["kind"] == "phase" for t in mine)
    why = {t["to_phase"]: t["reason"] for t in mine}
    assert re.fullmatch(r"QKD window opens in \d+ s: readiness checks, then slewing to the "
                        r"start of the track", why["prepare"]), why
    assert why["track"].startswith("on the track: following"), why
    assert why["finalize"] == "LOS", why
    assert why["park"] == "pass completed: parking the mount", why
    assert why["idle"] == "pass completed", why


def assert_slew_published(transitions: list[dict], mount: list[dict]) -> None:
    """During prepare the mount topic shows the slew from park (the zenith) down to where
    tracking then starts: not tracking, no target, moving."""
    at = {t["to_phase"]: datetime.fromisoformat(t["time"]) for t in transitions
          if t["pass_id"] == MICIUS}
    when = [(datetime.fromisoformat(m["time"]), m) for m in mount]
    slew = [m for t, m in when if at["prepare"] <= t < at["track"]]
    tracked = [m for t, m in when if t >= at["track"] and m["tracking"]]
    assert len(slew) >= 3, slew
    assert all(m["moving"] and not m["tracking"] and m["target_az_deg"] is None
               and m["tracking_error_arcsec"] is None for m in slew)
    first, last = slew[0], slew[-1]
    assert first["actual_el_deg"] > 70.0, first  # it left park
    assert last["actual_el_deg"] < first["actual_el_deg"] - 30.0, (first, last)
    start = tracked[0]
    assert abs(last["actual_el_deg"] - start["actual_el_deg"]) < 2.0, (last, start)
    d_az = (last["actual_az_deg"] - start["actual_az_deg"] + 180.0) % 360.0 - 180.0
    assert abs(d_az) < 2.0, (last, start)


async def test_micius_pass_end_to_end(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port)
    received: list = []

    def consume() -> None:
        with StreamClient(cfg.events.stream_endpoint, tmp_path / "consumer", timeout_s=120) as c:
            received.extend(c.follow(max_passes=1))

    # Its own thread, not the loop's executor: an autojump clock waits for executor work.
    consumer = threading.Thread(target=consume, name="test-consumer", daemon=True)
    consumer.start()
    async with running_station(cfg) as st:
        report = await st.next_pass()
        await asyncio.to_thread(consumer.join, 120)
        st_log = st.mqtt_log
        await st_log.wait_json(f"passes/{MICIUS}/summary", lambda m: True)
        await st_log.wait_json("transitions", lambda t: t["to_phase"] == "idle")

    assert report.pass_id == MICIUS and report.outcome == Outcome.COMPLETED, report.reason
    assert list(report.phase_times)[:4] == PHASES[:4]
    assert [c.name for c in report.readiness if not c.ok and c.policy == "blocking"] == []
    # Tracking after acquisition: the sim mount (10°/s, 10°/s²) holds well under 30".
    assert report.tracking is not None and report.tracking.rms_sky_error_arcsec < 30
    assert report.mount_parked
    # The published Micius window gives ~3.55 M detections; the simulator is within 25 %.
    detections = sum(report.counts_by_channel[c] for c in "HVDA")
    assert abs(detections - 3_551_136) / 3_551_136 < 0.25
    assert report.events_lost == 0
    # The whole 273 s window was recorded: one PPS pulse a second.
    assert abs(report.counts_by_channel["PPS"] - 273) <= 1

    # MQTT: every phase in order, and a summary that agrees with the file and the stream.
    assert phases_seen(st_log.json_on("transitions")) == PHASES
    states = st_log.json_on("state")
    assert any((s.get("current_pass") or {}).get("pass_id") == MICIUS for s in states)
    assert states[-1]["phase"] == "idle"
    summary = json.loads(st_log.on(f"passes/{MICIUS}/summary")[-1])
    assert summary["outcome"] == "completed"
    assert summary["events_recorded"] == report.events_recorded
    assert summary["counts_by_channel"] == report.counts_by_channel
    assert summary["tracking_error"]["rms_arcsec"] < 30
    header, batches, stop = read_pass_file(report.pass_file)
    assert stop.complete, stop
    events = np.concatenate([b.events for b in batches])
    assert events.size == report.events_recorded
    assert np.all(np.diff(events["timestamp_ps"]) >= 0)
    got = received[0]
    assert got.ok, got.problems
    assert got.events == report.events_recorded
    _, rx_batches, _ = read_pass_file(got.path)
    rx = np.concatenate([b.events for b in rx_batches])
    assert np.array_equal(rx, events)
    # The simulator's seed is the simulated satellite's secret: in neither the pass file's
    # header nor the stream's (the consumer's copy holds the header it was sent).
    rx_header, _, _ = read_pass_file(got.path)
    for hd in (header, rx_header):
        assert "simulator_seed" not in hd
        assert "simulator_seed" not in json.loads(hd["qkd.header"])
        assert not [v for v in hd.values() if "seed" in v.lower()], hd  # e.g. tagger_model
    health = st_log.json_on("health")
    assert health and health[-1]["time_reference_locked"] is True and health[-1]["ok"]
    progress = st_log.json_on("pass")
    assert progress and progress[-1]["events_recorded"] > 0
    assert any(m["tracking"] for m in st_log.json_on("mount"))
    assert_transitions_say_why(st_log.json_on("transitions"))
    rates = st_log.json_on("timetagger")
    assert any(m["acquiring"] and m["rates_hz"].get("H", 0) > 1000 for m in rates)
    assert backend_of(st.ctx).true_position().el_deg > 89.9  # parked at the zenith


async def test_the_slew_to_the_track_is_on_the_mount_topic(mosquitto: Broker, tmp_path: Path) -> None:
    # A clock 20 times real time, not max speed: on max speed the clock jumps while a
    # message waits for the socket, and the newest-wins telemetry keeps only the last.
    cfg = sim_config(tmp_path, mosquitto.port,
                     clock={"mode": "simulated", "start": "2016-12-19T16:46:35Z", "speed": 20.0},
                     operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        log = st.mqtt_log
        await log.wait_json("mount", lambda m: m["tracking"], timeout_s=120.0)
        st.supervisor.request_abort("test over")
        report = await st.next_pass()
        await log.wait_json("transitions", lambda t: t["to_phase"] == "idle")
    assert report.outcome == Outcome.ABORTED and report.reason == "test over"
    assert_slew_published(log.json_on("transitions"), log.json_on("mount"))
    fin = next(t for t in log.json_on("transitions") if t["to_phase"] == "finalize")
    assert fin["reason"] == "aborted: test over", fin


async def test_mount_link_lost_without_return_aborts_to_safe(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port,
                     operations={"faults": {"mount_reconnect_grace_s": 5.0},
                                 "readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        # The link drops a minute into tracking and stays down.
        injector = asyncio.create_task(inject_in_track(
            st, lambda: backend_of(st.ctx).inject_disconnect(at_s=st.ctx.clock.now_s() + 60)))
        report = await st.next_pass()
        await injector
        assert report.outcome == Outcome.ABORTED
        assert "mount link lost and not back within 5 s" in report.reason
        assert st.supervisor.mode == Mode.SAFE
        assert st.ctx.alarms.is_active("station.safe")
        assert any(a.key == "mount.link" for a in st.ctx.alarms.history)
        # The events recorded before the fault are kept and the file is closed.
        _, batches, stop = read_pass_file(report.pass_file)
        assert stop.complete and sum(len(b.events) for b in batches) == report.events_recorded
        await st.mqtt_log.wait_json(
            "alarms", lambda a: a["key"] == "station.safe" and a["state"] == "raised")
        # The transitions say why the pass ended early.
        fin = await st.mqtt_log.wait_json("transitions", lambda t: t["to_phase"] == "finalize")
        assert fin["reason"].startswith("aborted: mount link lost and not back within 5 s"), fin
        idle = await st.mqtt_log.wait_json("transitions", lambda t: t["to_phase"] == "idle")
        assert idle["reason"].startswith("pass aborted: mount link lost"), idle


async def test_mount_link_back_within_grace_completes_the_pass(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port,
                     operations={"faults": {"mount_reconnect_grace_s": 30.0},
                                 "readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        mount = backend_of(st.ctx)
        clock = st.ctx.clock

        async def drop_then_heal() -> None:
            # A minute into tracking the link drops; once the station has noticed, it
            # comes back three seconds later (well within the 30 s grace).
            while st.supervisor.phase != Phase.TRACK:
                await clock.sleep(1.0)
            mount.inject_disconnect(at_s=clock.now_s() + 60)
            while st.ctx.links["mount"].connected:
                await clock.sleep(0.5)
            await clock.sleep(3.0)
            mount.clear_fault()

        healer = asyncio.create_task(drop_then_heal())
        report = await st.next_pass()
        await healer
        assert report.outcome == Outcome.COMPLETED, report.reason
        assert st.supervisor.mode == Mode.AUTO
        assert any(a.key == "mount.link" and a.state.value == "cleared" for a in st.ctx.alarms.history)


async def test_stuck_axis_raises_the_tracking_alarm(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port,
                     operations={"faults": {"tracking_error_limit_arcsec": 60,
                                            "tracking_error_duration_s": 2,
                                            "abort_on_tracking_error": True},
                                 "readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        # Stuck half a minute into the QKD window: some events are recorded first.
        injector = asyncio.create_task(inject_in_track(
            st, lambda: backend_of(st.ctx).inject_stuck_axis(
                "az", at_s=st.ctx.clock.now_s() + 30, reported=False), acquiring=True))
        report = await st.next_pass()
        await injector
    assert report.outcome == Outcome.ABORTED
    assert any(a.key == "tracking.error" for a in st.ctx.alarms.history)
    assert report.events_recorded > 0


async def test_tagger_overflow_is_alarmed_and_recorded(mosquitto: Broker, tmp_path: Path) -> None:
    # A tagger that can only take 20 k events/s overflows on the Micius sync channel.
    cfg = sim_config(tmp_path, mosquitto.port,
                     timetagger={"backend": "sim", "options": {"preset": "micius", "seed": 7,
                                                               "max_rate_hz": 20000.0,
                                                               "buffer_events": 2000}},
                     operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        report = await st.next_pass()
    assert report.overflow_batches > 0 and report.events_lost > 0
    assert any(a.key == "timetagger.overflow" for a in st.ctx.alarms.history)
    _, batches, _ = read_pass_file(report.pass_file)
    assert any(b.info.lossy for b in batches)
    assert sum(b.info.missed_events for b in batches) == report.events_lost


async def test_disk_nearly_full_refuses_new_passes(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port,
                     operations={"faults": {"min_free_disk_mb": 1e12}})
    async with running_station(cfg) as st:
        report = await st.next_pass()
        assert report.pass_id == MICIUS and report.outcome == Outcome.SKIPPED
        assert "disk nearly full" in report.reason
        assert report.phase_times == {} and report.pass_file is None  # nothing moved
        assert st.ctx.alarms.is_active("disk.full")
        summary = await st.mqtt_log.wait_json(f"passes/{MICIUS}/summary", lambda m: True)
        assert summary["outcome"] == "skipped" and "disk nearly full" in summary["reason"]


async def test_blocking_readiness_failure_skips_the_pass(mosquitto: Broker, tmp_path: Path) -> None:
    # The simulated GPSDO at ASRL12 is unlocked.
    cfg = sim_config(tmp_path, mosquitto.port, instruments={
        "time_reference": {"backend": "sim", "options": {"resource_name": "ASRL12::INSTR"}}})
    async with running_station(cfg) as st:
        report = await st.next_pass()
    assert report.outcome == Outcome.SKIPPED
    assert "time_reference_locked" in report.reason
    assert report.pass_file is None and report.tracking is None
    assert st.ctx.alarms.is_active("readiness.time_reference_locked")
    assert st.ctx.alarms.is_active("time_reference.lock")
    assert st.supervisor.reporter.health().time_reference_locked is False


async def test_unexpected_exception_parks_goes_safe_and_stays_up(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        async def broken_configure(channels: list) -> None:
            raise RuntimeError("tagger firmware crashed")

        st.ctx.tagger.configure = broken_configure  # fault injection into the driver
        report = await st.next_pass()
        assert report.outcome == Outcome.ABORTED and "tagger firmware crashed" in report.reason
        assert st.supervisor.mode == Mode.SAFE
        assert report.mount_parked
        # The daemon is still up and answers commands; motion is refused in safe mode.
        result = await st.supervisor.control.set_mode(Mode.MANUAL)
        assert result.previous == Mode.SAFE
        assert not st.ctx.alarms.is_active("station.safe")


async def test_operator_goto_then_back_to_auto_parks(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, clock={"start": "2016-12-19T12:00:00Z"})
    async with running_station(cfg) as st:
        sup = st.supervisor
        # The MQTT layer turns CommandRefused into a 'refused' reply.
        with pytest.raises(CommandRefused, match="set_mode manual"):
            await sup.control.goto(120.0, 40.0)
        await sup.control.set_mode(Mode.MANUAL)
        assert (await sup.control.goto(120.0, 40.0)).accepted
        await sup.control.set_mode(Mode.AUTO)
        pos = await st.ctx.mount.position()
        assert st.ctx.mount.is_parked(pos)
