"""The records a pass leaves are true after a restart, a late resume or a full disk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from station.daemon.modes import Outcome
from station.daemon.statefile import PassState, StateFile, StationState
from station.events import passfile, read_pass_file
from station.events.inspection import inspect_pass_file
from station.mqtt.messages import AlarmState
from tests.conftest import Broker, small_tmpfs
from tests.daemon.station import MICIUS, running_station, sim_config

# The Micius pass as config/sim.toml plans it (UTC).
AOS, LOS = "2016-12-19T16:48:43.744Z", "2016-12-19T16:55:40.892Z"
QKD_START, QKD_END = "2016-12-19T16:49:57.511Z", "2016-12-19T16:54:30.049Z"


async def wait_reports(st, n: int, wall_timeout_s: float = 240.0) -> list:
    """Wait (wall time) until ``n`` passes have ended; their reports."""
    async with asyncio.timeout(wall_timeout_s):
        while len(st.supervisor.reports) < n:
            await asyncio.sleep(0.05)
    return st.supervisor.reports


async def test_a_rerun_names_one_segment_in_every_transition(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, operations={"readiness": {"stream_consumer": "off"}})
    # The simulated night was run before: its file is there, so this is segment 2.
    passes = tmp_path / "state" / "passes"
    passes.mkdir(parents=True)
    (passes / f"{MICIUS}.arrows").write_bytes(b"")
    async with running_station(cfg) as st:
        report = await st.next_pass()
        await st.mqtt_log.wait_json("transitions", lambda t: t["to_phase"] == "idle")
    assert report.segment == 2 and report.pass_file.endswith(f"{MICIUS}-s2.arrows")
    segments = [t["segment"] for t in st.mqtt_log.json_on("transitions") if t["pass_id"] == MICIUS]
    assert segments and set(segments) == {2}, segments


def _state_in_track(tmp_path: Path, updated: str) -> None:
    """A state file as a daemon killed during the Micius track leaves it (no file yet)."""
    StateFile(tmp_path / "state").save(StationState.model_validate({
        "mode": "auto", "phase": "track", "updated": updated, "current_pass": PassState.model_validate({
            "pass_id": MICIUS, "norad_id": 41731, "segment": 1, "aos": AOS, "los": LOS,
            "qkd_start": QKD_START, "qkd_end": QKD_END,
            "phase_times": {"prepare": "2016-12-19T16:46:43Z", "track": "2016-12-19T16:48:43Z"}})}))


async def test_resume_with_too_little_window_left_is_not_a_completed_pass(
        mosquitto: Broker, tmp_path: Path) -> None:
    # 14 s of window left at the restart: enough for the supervisor's first look, not once
    # the mount has slewed from the park position to the track.
    _state_in_track(tmp_path, "2016-12-19T16:50:00Z")
    cfg = sim_config(tmp_path, mosquitto.port, clock={"start": "2016-12-19T16:54:16Z"},
                     operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st:
        reports = await wait_reports(st, 1)
        whole = await st.mqtt_log.wait_json(f"passes/{MICIUS}/summary",
                                            lambda m: len(m["segments"]) == 2)
        seg2 = await st.mqtt_log.wait_json(f"passes/{MICIUS}-s2/summary", lambda m: True)
    report = reports[0]
    assert report.segment == 2 and report.outcome == Outcome.SKIPPED, report.reason
    assert "too little QKD window left" in report.reason
    assert report.pass_file is None
    assert not (tmp_path / "state" / "passes" / f"{MICIUS}-s2.arrows").exists()  # no empty file
    assert seg2["outcome"] == "skipped" and seg2["segment"] == 2
    assert whole["outcome"] == "interrupted" and whole["segment"] is None
    assert whole["window_lost_fraction"] == 1.0
    assert whole["satellite"] == "MICIUS"


# -- a full disk ------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs as the state directory (a Micius pass file is ~50 MB)."""
    with small_tmpfs(tmp_path / "state", "size=16m,mode=0755") as mount_point:
        yield mount_point


@pytest.mark.slow
async def test_disk_full_pass_is_finished_alarmed_and_its_loss_is_in_the_file(
        mosquitto: Broker, tmp_path: Path, small_disk: Path) -> None:
    ops = {"readiness": {"stream_consumer": "off", "free_disk": "off"},
           "faults": {"min_free_disk_mb": 0}}
    cfg = sim_config(tmp_path, mosquitto.port, operations=ops)
    async with running_station(cfg) as st:
        report = await st.next_pass()
        summary = await st.mqtt_log.wait_json(f"passes/{MICIUS}/summary", lambda m: True)
        alarm = await st.mqtt_log.wait_json(
            "alarms", lambda a: a["key"] == "disk.write" and a["state"] == "raised")
    assert report.events_lost > 0
    # Raised when the disk refused, during the track, not at the end of the pass.
    raised = [a for a in st.ctx.alarms.history
              if a.key == "disk.write" and a.state == AlarmState.RAISED]
    assert raised and raised[0].time < report.phase_times["finalize"]
    assert "ENOSPC" in alarm["message"] and alarm["pass_id"] == MICIUS
    assert report.outcome == Outcome.DEGRADED, report.reason
    assert "not recorded (ENOSPC" in report.reason
    assert summary["outcome"] == "degraded" and summary["events_lost"] == report.events_lost

    # The loss is in the file itself, and inspect says so.
    path = Path(report.pass_file)
    record = passfile.read_loss_record(path)
    assert record is not None and record.events == report.events_lost and record.ranges
    assert all("ENOSPC" in r.reason for r in record.ranges)
    _, batches, stop = read_pass_file(path)
    assert stop.complete
    assert sum(len(b.events) for b in batches) == report.events_recorded
    info = inspect_pass_file(path)
    assert info["events_lost"] == report.events_lost and info["events"] == report.events_recorded
    assert not info["integrity"]["ok"] and any("not recorded" in p for p in info["integrity"]["problems"])

    # The state files were finished although the disk is full.
    assert json.loads(passfile.sidecar_path(path).read_text())["state"] == "closed"
    state = json.loads((small_disk / "state.json").read_text())
    assert state["phase"] == "idle" and state["current_pass"] is None

    # The next start sees a finished pass, not an interrupted one.
    later = sim_config(tmp_path, mosquitto.port, operations=ops,
                       clock={"start": "2016-12-19T17:10:00Z"})
    async with running_station(later) as st2:
        pass
    assert not any(a.key == "pass.interrupted" for a in st2.ctx.alarms.history)
    assert not [m for m in st2.mqtt_log.json_on(f"passes/{MICIUS}/summary")
                if m["outcome"] == "interrupted"]


# -- a clock faster than the host ----------------------------------------------------------
async def test_rehearsal_on_a_clock_the_host_cannot_follow_is_invalid(
        mosquitto: Broker, tmp_path: Path) -> None:
    from station.cli.rehearse import _summary, rehearse

    # ×1000 asks for 20,000 tracking ticks per wall second: no host follows that.
    cfg = sim_config(tmp_path, mosquitto.port, operations={"readiness": {"stream_consumer": "off"}})
    report = await rehearse(cfg, pass_id=MICIUS, speed=1000.0)
    assert report is not None
    late = report.clock_lateness
    assert late is not None and not late.valid and late.speed == 1000.0
    assert "faster than this host can follow" in late.reason
    assert report.outcome == Outcome.ABORTED and "invalid run" in report.reason
    assert "INVALID" in _summary(report)


def test_lateness_monitor_needs_sustained_lateness_or_one_stall() -> None:
    from station.clock import SimClock
    from station.daemon.lateness import WINDOW, LatenessMonitor

    reasons: list[str] = []
    mon = LatenessMonitor(SimClock(0.0, speed=10.0), limit_s=0.5, on_invalid=reasons.append)
    for late in [0.1] * WINDOW + [0.9] * (WINDOW // 2 - 1) + [0.0]:
        mon.add(late)  # a few late wake-ups: not sustained
    assert mon.stats.valid and not reasons
    for _ in range(WINDOW):
        mon.add(0.9)
    assert not mon.stats.valid and len(reasons) == 1 and "median 0.90 s" in reasons[0]
    stall = LatenessMonitor(SimClock(0.0, speed=10.0), limit_s=0.5)
    stall.add(6.0)
    assert not stall.stats.valid and "at once" in stall.stats.reason
    assert not LatenessMonitor(SimClock(0.0, speed=float("inf")), limit_s=0.5).active


# -- a disk measurement that fails ------------------------------------------------------------
async def test_an_unknown_free_disk_never_clears_the_disk_alarm(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, clock={"start": "2016-12-19T12:00:00Z"},
                     operations={"faults": {"min_free_disk_mb": 1e12}})
    async with running_station(cfg) as st:
        sup, ctx = st.supervisor, st.ctx
        assert sup.reporter.check_health(pass_running=False).disk_free_bytes is not None
        assert ctx.alarms.is_active("disk.full")
        good = ctx.cfg
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        # Measuring free disk now raises OSError (the state dir cannot be made under a file).
        ctx.cfg = good.model_copy(update={"state_dir": blocker / "state"})
        health = sup.reporter.check_health(pass_running=False)
        assert health.disk_free_bytes is None and not health.ok
        assert ctx.alarms.is_active("disk.full")  # kept: unknown is not "enough again"
        assert sup.reporter.disk.full
        assert sup.reporter.health() == health  # the builder alone measures nothing
        ctx.cfg = good.model_copy(update={"operations": good.operations.model_copy(update={
            "faults": good.operations.faults.model_copy(update={"min_free_disk_mb": 0.0})})})
        assert sup.reporter.check_health(pass_running=False).disk_free_bytes is not None
        assert not ctx.alarms.is_active("disk.full")  # a real measurement clears it
        ctx.cfg = good


def test_window_accounting_adds_up_segments_and_gaps() -> None:
    from datetime import UTC, datetime

    from station.daemon.record import Cause, SegmentState, pass_summary, subtract

    assert subtract([(0.0, 10.0)], [(2.0, 3.0), (5.0, 6.0)]) == [(0.0, 2.0), (3.0, 5.0), (6.0, 10.0)]
    t = datetime(2016, 12, 19, 16, 50, tzinfo=UTC).timestamp()
    at = datetime.fromtimestamp
    s1 = SegmentState(segment=1, stream_pass_id="P", outcome=Outcome.INTERRUPTED,
                      started_at=at(t - 100, UTC), ended_at=at(t + 40, UTC), events_recorded=400,
                      counts_by_channel={"H": 400}, good_s=[(t, t + 40)],
                      causes=[Cause(start_s=t + 40, end_s=t + 60, cause="the daemon stopped")])
    s2 = SegmentState(segment=2, stream_pass_id="P-s2", outcome=Outcome.COMPLETED,
                      started_at=at(t + 60, UTC), ended_at=at(t + 100, UTC), events_recorded=300,
                      events_lost=5, counts_by_channel={"H": 300}, good_s=[(t + 70, t + 100)])
    whole = pass_summary("P", "MICIUS", 41731, at(t - 60, UTC), at(t + 200, UTC), (t, t + 100),
                         [s1, s2])
    assert whole.outcome == Outcome.DEGRADED and whole.segment is None
    assert whole.events_recorded == 700 and whole.events_lost == 5
    assert whole.counts_by_channel == {"H": 700}
    assert whole.window_lost_s == 30.0 and whole.window_lost_fraction == 0.3
    assert [(g.duration_s, g.cause) for g in whole.gaps] == [(30.0, "the daemon stopped")]
    assert whole.events_lost_in_gaps_estimate == 300  # 700 events in 70 s, 30 s lost
    assert [s.window_recorded_s for s in whole.segments] == [40.0, 30.0]


def test_a_valid_but_strained_rehearsal_explains_its_tracking_error() -> None:
    from datetime import UTC, datetime

    from station.cli.rehearse import _summary
    from station.daemon.lateness import LatenessStats
    from station.daemon.pass_runner import PassReport
    from station.tracking import TrackingStats

    when = datetime(2016, 12, 19, 16, 48, tzinfo=UTC)
    report = PassReport(
        pass_id=MICIUS, satellite="MICIUS", norad_id=41731, planned_aos=when, planned_los=when,
        tracking=TrackingStats(ticks=4000, skipped_ticks=3000, rms_sky_error_arcsec=93.0,
                               max_error_arcsec=4501.0, max_lateness_s=1.8),
        clock_lateness=LatenessStats(speed=100.0, samples=900, median_s=0.6, p95_s=1.5,
                                     max_s=1.9, limit_s=2.0, valid=True))
    text = _summary(report)
    assert "INVALID" not in text
    assert "3000 of 7000 tracking ticks skipped" in text and "not the mount" in text


async def test_a_second_crash_keeps_the_first_segment_in_the_record(
        mosquitto: Broker, tmp_path: Path) -> None:
    from station.daemon.record import SegmentState

    # The daemon died in segment 2 (before its file opened), segment 1 having been
    # interrupted earlier; the restart comes after the window.
    seg1 = SegmentState(segment=1, stream_pass_id=MICIUS, outcome=Outcome.INTERRUPTED,
                        reason="the daemon stopped during track", started_at="2016-12-19T16:46:43Z",
                        ended_at="2016-12-19T16:50:47Z", events_recorded=754_679,
                        counts_by_channel={"SYNC": 499_010, "PPS": 50},
                        good_s=[(1482166197.5, 1482166247.5)])
    StateFile(tmp_path / "state").save(StationState.model_validate({
        "mode": "auto", "phase": "prepare", "updated": "2016-12-19T16:51:40Z",
        "current_pass": PassState.model_validate({
            "pass_id": MICIUS, "norad_id": 41731, "segment": 2, "aos": AOS, "los": LOS,
            "qkd_start": QKD_START, "qkd_end": QKD_END,
            "phase_times": {"prepare": "2016-12-19T16:51:40Z"},
            "earlier_segments": [seg1.model_dump(mode="json")]})}))
    cfg = sim_config(tmp_path, mosquitto.port, clock={"start": "2016-12-19T17:05:00Z"})
    async with running_station(cfg) as st:
        whole = await st.mqtt_log.wait_json(f"passes/{MICIUS}/summary", lambda m: True)
        seg2 = await st.mqtt_log.wait_json(f"passes/{MICIUS}-s2/summary", lambda m: True)
    assert [s["segment"] for s in whole["segments"]] == [1, 2]
    assert whole["outcome"] == "interrupted" and whole["events_recorded"] == 754_679
    assert whole["satellite"] == "MICIUS"
    assert seg2["outcome"] == "interrupted" and "no pass file was open yet" in seg2["reason"]
    assert 0.8 < whole["window_lost_fraction"] < 0.85  # 50 s of 272.5 s recorded
    assert st.ctx.alarms.is_active("pass.interrupted")
