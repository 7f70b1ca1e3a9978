"""Fixtures of the MQTT tests (helpers live in tests/mqtt/helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from station.clock import SimClock
from tests.mqtt.helpers import START, LabStation


@pytest.fixture
def clock() -> SimClock:
    """A manually stepped clock: command rate limits and telemetry pacing move only on advance()."""
    return SimClock(START, manual=True)


@pytest.fixture
async def station(clock: SimClock) -> AsyncIterator[LabStation]:
    """A small station over a real SimMount, connected."""
    st = LabStation(clock)
    await st.mount.connect()
    yield st
    await st.mount.close()
