"""SIGKILL in the middle of the track phase, then a restart: the daemon recovers."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from station.events import read_pass_file
from tests.conftest import Broker
from tests.daemon.conftest import copy_sim_config, sub_once

MICIUS = "41731-20161219T164844Z"
SPEED = 20.0


def wait_for_file(path: Path, predicate, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
            if predicate(data):
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never matched; last: {path.read_text() if path.exists() else None}")


def test_sigkill_mid_track_then_restart_recovers_and_resumes(
        mosquitto: Broker, start_daemon, tmp_path: Path) -> None:
    config = copy_sim_config(tmp_path)
    state_file = tmp_path / "state" / "state.json"
    station = f"kill{abs(hash(str(tmp_path))) % 10**8}"  # its own retained topics
    env = {"QKD_STATION__OPERATIONS__READINESS__STREAM_CONSUMER": "off",
           "QKD_STATION__STATION_ID": station}
    d = start_daemon(mqtt_port=mosquitto.port, config=config, clock_start="2016-12-19T16:46:20Z",
                     speed=SPEED, env=env)
    # Into the QKD window (16:49:57), with some seconds of events flushed (flush ≤ 1 s wall).
    d.wait_log("acquisition started", timeout_s=60)
    state = wait_for_file(state_file, lambda s: s["phase"] == "track")
    first_file = Path(state["current_pass"]["pass_file"])
    time.sleep(2.5)  # wall time for the writer to flush a few batches; the bound is 1 s
    d.signal(signal.SIGKILL)
    d.wait(10)
    killed_state = json.loads(state_file.read_text())
    assert killed_state["phase"] == "track" and not killed_state["clean_shutdown"]
    _, before, stop = read_pass_file(first_file)
    assert before, "nothing was flushed before the kill"
    flushed_end_s = max(b.info.start_time_s + (b.info.end_ps - b.info.start_ps) / 1e12
                        for b in before)

    # Restart a little later in the same night: the QKD window (to 16:54:30) is still open.
    restart_at = "2016-12-19T16:51:30Z"
    d2 = start_daemon(mqtt_port=mosquitto.port, config=config, clock_start=restart_at,
                      speed=SPEED, env=env)
    d2.wait_log("resuming in segment 2", timeout_s=60)
    d2.wait_log(f"pass {MICIUS}: phase idle", timeout_s=120)
    d2.signal(signal.SIGTERM)
    assert d2.wait(20) == 0
    log = d2.log()
    assert f"the daemon stopped during track of pass {MICIUS}" in log

    # The interrupted file keeps every complete batch and is marked interrupted.
    _, after, stop_after = read_pass_file(first_file)
    assert [b.info.seq for b in after] == [b.info.seq for b in before]
    assert stop_after.complete  # recovery closed it properly
    sidecar = json.loads(first_file.with_suffix(".json").read_text())
    assert sidecar["state"] == "interrupted"
    # The part of the QKD window (from 16:49:57) recorded before the kill is in the file.
    assert flushed_end_s > 1482166197.0

    # Segment 2 recorded the rest of the window in a file of its own.
    second = first_file.with_name(f"{MICIUS}-s2.arrows")
    header, seg2, stop2 = read_pass_file(second)
    assert stop2.complete and seg2
    assert json.loads(header["qkd.header"])["segment"] == 2
    assert min(b.info.start_time_s for b in seg2) >= flushed_end_s
    final = json.loads(state_file.read_text())
    assert final["phase"] == "idle" and final["clean_shutdown"]

    # -- what is retained on MQTT is what happened ----------------------------------------
    def retained(suffix: str) -> dict:
        return json.loads(sub_once(mosquitto.port, f"qkd/{station}/passes/{suffix}/summary"))

    seg1_events = sum(len(b.events) for b in after)
    seg2_events = sum(len(b.events) for b in seg2)
    s1 = retained(f"{MICIUS}-s1")
    assert s1["segment"] == 1 and s1["outcome"] == "interrupted"
    # Derived from the recovered file, not from the state file.
    assert s1["satellite"] == "MICIUS"
    assert s1["events_recorded"] == seg1_events
    assert sum(s1["counts_by_channel"].values()) == seg1_events and "PPS" in s1["counts_by_channel"]
    ended_s = _epoch(s1["ended_at"])
    assert abs(ended_s - flushed_end_s) < 0.01, (s1["ended_at"], flushed_end_s)
    assert s1["max_el_deg"] is not None and 10 < s1["max_el_deg"] <= 47.9

    s2 = retained(f"{MICIUS}-s2")
    assert s2["segment"] == 2 and s2["events_recorded"] == seg2_events
    # Rejoined as soon as the mount could be on the track: the old rule waited a full
    # slew estimate plus a 30 s margin.
    first2_s = min(b.info.start_time_s for b in seg2)
    assert first2_s - _epoch(s2["started_at"]) < 25.0, (s2["started_at"], first2_s)

    whole = retained(MICIUS)
    assert whole["segment"] is None
    assert whole["outcome"] == "degraded", whole  # never "completed, 0 lost"
    assert "interrupted" in whole["reason"]
    assert [s["segment"] for s in whole["segments"]] == [1, 2]
    assert [s["outcome"] for s in whole["segments"]][0] == "interrupted"
    assert whole["events_recorded"] == seg1_events + seg2_events
    # The gap between the segments covers at least the time the daemon was down.
    down_s = first2_s - flushed_end_s
    assert whole["window_lost_s"] >= down_s - 0.5
    assert whole["window_lost_fraction"] > 0.05
    assert any("daemon stopped" in g["cause"] for g in whole["gaps"]), whole["gaps"]
    assert whole["events_lost_in_gaps_estimate"] > 0


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_sigstop_then_sigcont_is_not_a_success(mosquitto: Broker, start_daemon, tmp_path: Path) -> None:
    """A hang mid-track (the process stopped for 20 s wall, 400 s of the ×20 clock): the
    pass ends at its window, the tracking alarm is raised and the pass is degraded."""
    config = copy_sim_config(tmp_path)
    station = f"stop{abs(hash(str(tmp_path))) % 10**8}"
    env = {"QKD_STATION__OPERATIONS__READINESS__STREAM_CONSUMER": "off",
           "QKD_STATION__STATION_ID": station}
    d = start_daemon(mqtt_port=mosquitto.port, config=config, clock_start="2016-12-19T16:46:20Z",
                     speed=SPEED, env=env)
    d.wait_log("acquisition started", timeout_s=60)
    time.sleep(2.0)
    d.signal(signal.SIGSTOP)
    try:
        time.sleep(20.0)  # the hang itself: wall time is the point here
    finally:
        d.signal(signal.SIGCONT)
    d.wait_log(f"pass {MICIUS}: phase idle", timeout_s=120)
    summary = json.loads(sub_once(mosquitto.port, f"qkd/{station}/passes/{MICIUS}/summary"))
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
    log = d.log()
    assert "alarm tracking.error raised" in log and "the station stalled" in log
    assert "alarm clock.lateness raised" in log  # the stall itself, said when it ended
    assert summary["outcome"] == "degraded", summary
    assert summary["window_lost_fraction"] > 0.3
    assert any("stalled" in g["cause"] for g in summary["gaps"]), summary["gaps"]
    # The gaps are estimated at the rate of the usable part, not of what trickled in while
    # the pointing was off: less than a whole pass (~6 M events) for most of a window.
    assert 0 < summary["events_lost_in_gaps_estimate"] < 6_000_000
    # Acquisition stopped at the end of the QKD window (16:54:30.05), whatever happened.
    _, batches, stop = read_pass_file(Path(summary["file_path"]))
    assert stop.complete and batches
    assert max(b.info.start_time_s for b in batches) < 1482166470.05
