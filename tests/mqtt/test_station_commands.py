"""Every MQTT verb, in every mode, on the station that ``run`` assembles from
config/sim.toml, over a real Mosquitto: the operator sends ``cmd/<verb>`` and reads
``reply/<request_id>``; each reply is checked against its models (``CommandReply`` and the
verb's result model) and against what the station really did."""

from __future__ import annotations

import asyncio
import json
from itertools import count
from pathlib import Path
from typing import Any

from station.daemon.modes import Mode, Outcome, Phase
from station.mqtt.messages import RESULTS, CommandReply, CommandResult
from tests.conftest import Broker
from tests.daemon.station import MICIUS, Running, backend_of, running_station, sim_config
from tests.mqtt.helpers import Collector, collector

_ids = count()
#: Commands are not the subject here: no rate limit gets in the way.
FAST = {"mqtt": {"command_burst": 1000, "command_rate_per_s": 100.0}}


async def command(op: Collector, st: Running, verb: str, **args: Any) -> CommandReply:
    """Send one command to the running station and wait (wall time) for its reply."""
    rid = f"st{next(_ids)}"
    prefix = st.ctx.cfg.topic_prefix
    await op.client.publish(f"{prefix}/cmd/{verb}",
                            json.dumps({"request_id": rid, **args}).encode(), qos=1)
    topic = f"{prefix}/reply/{rid}"
    await op.wait_for(lambda: op.payloads(topic), timeout_s=60.0)
    (raw,) = op.json(topic)
    reply = CommandReply.model_validate(raw)  # the reply's own model
    assert reply.request_id == rid and reply.verb == verb
    assert (reply.error is None) == reply.ok and (reply.result is None) != reply.ok
    return reply


def result(reply: CommandReply) -> CommandResult:
    """The reply's result, validated against its verb's model."""
    assert reply.ok, reply.error
    assert reply.result is not None
    return RESULTS[reply.verb].model_validate(reply.result)


def refused(reply: CommandReply, *words: str) -> None:
    assert not reply.ok and reply.error is not None and reply.error.code == "refused", reply
    for w in words:
        assert w in reply.error.message, reply.error.message


async def test_every_verb_in_every_mode_between_passes(mosquitto: Broker, tmp_path: Path) -> None:
    # Noon: the next pass is hours of (10× simulated) time away, so none starts meanwhile.
    cfg = sim_config(tmp_path, mosquitto.port, **FAST,
                     clock={"start": "2016-12-19T12:00:00Z", "speed": 10.0},
                     operations={"start_mode": "manual"})
    async with running_station(cfg) as st, \
            collector(mosquitto.host, mosquitto.port, f"{cfg.topic_prefix}/reply/#") as op:
        mount = backend_of(st.ctx)
        sched = st.supervisor.schedule
        assert sched is not None
        planned = [p.pass_id for p in sched.scheduled()]
        assert MICIUS in planned
        for mode in (Mode.MANUAL, Mode.MAINTENANCE, Mode.AUTO, Mode.SAFE):
            previous = st.supervisor.mode
            r = result(await command(op, st, "set_mode", mode=mode.value))
            assert (r.mode, r.previous) == (mode, previous)  # type: ignore[attr-defined]
            assert st.supervisor.mode == mode

            reply = await command(op, st, "goto", az_deg=120.0, el_deg=40.0)
            if mode in (Mode.MANUAL, Mode.MAINTENANCE):
                g = result(reply)
                assert g.accepted and (g.az_deg, g.el_deg) == (120.0, 40.0)  # type: ignore[attr-defined]
                assert (mount.commands[-1].kind, mount.commands[-1].az_deg) == ("slew", 120.0)
                # Below the gate's elevation limit (5° in sim.toml): refused, nothing moves.
                n = len(mount.commands)
                refused(await command(op, st, "goto", az_deg=120.0, el_deg=2.0), "safety gate")
                assert len(mount.commands) == n
            else:
                refused(reply, f"{mode.value} mode", "set_mode manual")

            s = result(await command(op, st, "stop"))
            assert s.stopped and not s.pass_aborted  # type: ignore[attr-defined]
            assert mount.commands[-1].kind == "stop"
            p = result(await command(op, st, "park"))
            assert p.parked and not p.pass_aborted  # type: ignore[attr-defined]
            assert mount.commands[-1].kind == "park"

            refused(await command(op, st, "abort_pass", reason="clouds"), "no pass is in progress")
            refused(await command(op, st, "skip_pass", pass_id="41731-20161219T1655Z"),
                    "unknown pass id")

            k = result(await command(op, st, "skip_pass", pass_id=MICIUS))
            assert k.pass_id == MICIUS and k.excluded  # type: ignore[attr-defined]
            assert MICIUS in st.supervisor.book.exclude
            i = result(await command(op, st, "include_pass", pass_id=MICIUS))
            assert i.pass_id == MICIUS and i.status == "scheduled"  # type: ignore[attr-defined]
            assert MICIUS not in st.supervisor.book.exclude and MICIUS in st.supervisor.book.include

            e = result(await command(op, st, "reload_elements"))
            assert e.satellites == len(st.ctx.catalog) >= 2 and e.problems == []  # type: ignore[attr-defined]
            rs = result(await command(op, st, "reschedule"))
            assert MICIUS in rs.scheduled and rs.rejected >= 0  # type: ignore[attr-defined]
            assert rs.scheduled == [p.pass_id for p in st.supervisor.schedule.scheduled()]  # type: ignore[attr-defined, union-attr]
        # Safe mode is left only by an operator; the alarm goes with it.
        assert st.ctx.alarms.is_active("station.safe")
        r = result(await command(op, st, "set_mode", mode="manual"))
        assert r.previous == Mode.SAFE  # type: ignore[attr-defined]
        assert not st.ctx.alarms.is_active("station.safe")


async def test_verbs_during_a_pass(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, **FAST,
                     operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st, \
            collector(mosquitto.host, mosquitto.port, f"{cfg.topic_prefix}/reply/#") as op:
        async with asyncio.timeout(240):
            while st.supervisor.phase != Phase.TRACK:
                await asyncio.sleep(0.01)
        assert st.supervisor.mode == Mode.AUTO and st.supervisor.current_pass_id == MICIUS
        refused(await command(op, st, "goto", az_deg=10.0, el_deg=45.0), "auto mode")
        refused(await command(op, st, "skip_pass", pass_id=MICIUS), "in progress", "abort_pass")
        a = result(await command(op, st, "abort_pass", reason="clouds"))
        assert a.pass_id == MICIUS and a.outcome == Outcome.ABORTED  # type: ignore[attr-defined]
        assert a.events_recorded == st.supervisor.reports[-1].events_recorded  # type: ignore[attr-defined]
        assert "clouds" in st.supervisor.reports[-1].reason
        # Micius is over; in auto mode on a max-speed clock the next pass may already be
        # under way.
        assert st.supervisor.current_pass_id != MICIUS
        assert st.supervisor.book.done[MICIUS] == Outcome.ABORTED


async def test_stop_ends_a_pass_in_progress(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, mosquitto.port, **FAST,
                     operations={"readiness": {"stream_consumer": "off"}})
    async with running_station(cfg) as st, \
            collector(mosquitto.host, mosquitto.port, f"{cfg.topic_prefix}/reply/#") as op:
        async with asyncio.timeout(240):
            while st.supervisor.phase != Phase.TRACK:
                await asyncio.sleep(0.01)
        s = result(await command(op, st, "stop"))
        assert s.stopped and s.pass_aborted  # type: ignore[attr-defined]
        async with asyncio.timeout(120):
            while not st.supervisor.reports:
                await asyncio.sleep(0.01)
        report = st.supervisor.reports[0]
        assert report.pass_id == MICIUS
        assert report.outcome == Outcome.ABORTED and "operator stop" in report.reason
        assert report.mount_parked
        # Stopping is not a fault: the station stays in auto.
        assert st.supervisor.mode == Mode.AUTO
