"""Fixtures for the VISA instrument tests: drivers opened on the shipped pyvisa-sim YAML."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from drivers import registry
from drivers.instruments.beacon_laser import BeaconLaser
from drivers.instruments.time_reference import TimeReference
from station.clock import SimClock

START = datetime(2016, 12, 19, 16, 40, tzinfo=UTC)


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START, manual=True)


@pytest.fixture
async def make_laser(clock: SimClock) -> AsyncIterator[Callable[..., Awaitable[BeaconLaser]]]:
    """``await make_laser(resource_name=..., connect=True, **options)``; closed afterwards."""
    made: list[BeaconLaser] = []

    async def make(*, connect: bool = True, name: str = "beacon_laser", **options: Any) -> BeaconLaser:
        opts = registry.validate_options("beacon_laser", "sim", options)
        laser = BeaconLaser(opts, clock=clock, name=name)
        made.append(laser)
        if connect:
            await laser.connect()
        return laser

    try:
        yield make
    finally:
        for laser in made:
            await laser.close()


@pytest.fixture
async def make_reference(clock: SimClock) -> AsyncIterator[Callable[..., Awaitable[TimeReference]]]:
    """``await make_reference(resource_name=..., **options)``, connected; closed afterwards."""
    made: list[TimeReference] = []

    async def make(**options: Any) -> TimeReference:
        opts = registry.validate_options("time_reference", "sim", options)
        ref = TimeReference(opts, clock=clock)
        made.append(ref)
        await ref.connect()
        return ref

    try:
        yield make
    finally:
        for ref in made:
            await ref.close()
