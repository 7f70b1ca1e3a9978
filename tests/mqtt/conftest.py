"""Fixtures of the MQTT tests (helpers live in tests/mqtt/helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from station.clock import SimClock
from tests.conftest import Broker
from tests.mqtt.helpers import START, CommandedStation
from tests.mqtt.secure import Pki, start_secure_broker


@pytest.fixture
def clock() -> SimClock:
    """A manually stepped clock: command rate limits and telemetry pacing move only on advance()."""
    return SimClock(START, manual=True)


@pytest.fixture
async def station(clock: SimClock, tmp_path_factory: pytest.TempPathFactory,
                  ) -> AsyncIterator[CommandedStation]:
    """The real station's operator commands (built from config/sim.toml), mount connected."""
    st = CommandedStation(clock, tmp_path_factory.mktemp("commanded") / "state")
    await st.start()
    yield st
    await st.close()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Pki]]:
    """Mosquitto with the shipped config/mosquitto/ files (TLS, passwords, ACL), one per module."""
    broker, pki = start_secure_broker(tmp_path_factory.mktemp("secure-mqtt"))
    yield broker, pki
    broker.stop()
