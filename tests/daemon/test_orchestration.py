"""Small rules of the orchestration layer, without a running station: the publisher
Protocol is whole, restart-needed config sections come from the model, and a lost link is
the only thing reported as one (issue 15 §3, §5)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from drivers.errors import ConnectionLost
from station.clock import SimClock
from station.config import load_config
from station.config.root import StationConfig, live_sections, restart_sections
from station.daemon.alarms import AlarmBook
from station.daemon.context import StationContext
from station.daemon.parking import park_idle
from station.daemon.publisher import NullPublisher, Publisher
from station.daemon.supervisor import Supervisor
from station.mqtt.service import MqttService
from tests.conftest import REPO

SIM = REPO / "config" / "sim.toml"


def _methods(cls: type) -> set[str]:
    return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if n.startswith("publish_")}


def test_the_publisher_protocol_is_whole() -> None:
    wanted = _methods(Publisher)
    assert len(wanted) == 9
    assert _methods(NullPublisher) == wanted
    # The MQTT service has every method the daemon calls (it has more of its own).
    assert wanted <= _methods(MqttService)
    for name in wanted:
        proto = inspect.signature(getattr(Publisher, name))
        assert list(inspect.signature(getattr(NullPublisher, name)).parameters) == list(proto.parameters)


def _cfg(tmp_path: Path, **overrides: object) -> StationConfig:
    return load_config(SIM, overrides={"state_dir": str(tmp_path / "state"), **overrides})


def test_restart_sections_come_from_the_model(tmp_path: Path) -> None:
    assert set(live_sections()) == {"log_level", "orbit", "schedule", "tracking", "operations"}
    old = _cfg(tmp_path)
    assert restart_sections(old, _cfg(tmp_path, log_level="DEBUG",
                                      operations={"plan_hours": 3.0})) == []
    assert restart_sections(old, _cfg(tmp_path, mqtt={"port": 1})) == ["mqtt"]
    assert restart_sections(old, _cfg(tmp_path, station_id="other", safety={"min_el_deg": 7})) == [
        "station_id", "safety"]


async def test_only_a_link_failure_is_reported_as_a_lost_link(tmp_path: Path) -> None:
    clock = SimClock(0.0, manual=True)
    ctx = StationContext.build(_cfg(tmp_path), clock, AlarmBook(clock.now))
    sup = Supervisor(ctx)
    ctx.links["mount"].connected = True  # as if connected: park is the subject here

    async def link_drops() -> bool:
        raise ConnectionLost("serial cable out")

    ctx.tracker.park = link_drops  # type: ignore[method-assign]
    assert await park_idle(sup.ctx, "test") is False
    assert not ctx.links["mount"].connected and "serial cable out" in ctx.links["mount"].detail

    async def bug() -> bool:
        raise KeyError("a bug, not a link")

    ctx.links["mount"].connected = True
    ctx.tracker.park = bug  # type: ignore[method-assign]
    with pytest.raises(KeyError, match="a bug"):
        await park_idle(sup.ctx, "test")  # reaches the loop's unexpected-exception path as is
    assert ctx.links["mount"].connected
