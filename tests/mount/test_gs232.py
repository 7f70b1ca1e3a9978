"""Gs232Mount through a pseudo-terminal pair against the GS-232B emulator, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.mount.base import (
    MountCommandRejected,
    MountConnectionLost,
    MountLimitError,
    MountNotConnected,
)
from drivers.mount.gs232 import Gs232Mount, LinkState
from station.clock import SimClock
from tests.mount.gs232_emulator import Gs232Emulator

T0_S = 1_482_166_000.0


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0_S, manual=True)


@pytest.fixture
async def emulator(clock: SimClock) -> AsyncIterator[Gs232Emulator]:
    emu = Gs232Emulator(clock, az_deg=0.0, el_deg=0.0)
    emu.start()
    try:
        yield emu
    finally:
        emu.close()


def mount_for(emu: Gs232Emulator, clock: SimClock, **opts: object) -> Gs232Mount:
    return Gs232Mount(Gs232Mount.Options(port=emu.port, **opts), clock=clock, name="gs232")


async def test_connect_slew_read_back_stop_park_byte_exact(
        emulator: Gs232Emulator, clock: SimClock) -> None:
    mount = mount_for(emulator, clock)
    await mount.connect()
    await mount.slew_to(123.4, 44.6)
    assert (await mount.status()).moving
    await clock.advance(30.0)  # 123° at 6°/s, 45° at 2.5°/s
    pos = await mount.position()
    assert (pos.az_deg, pos.el_deg, pos.time_s) == (123.0, 45.0, T0_S + 30.0)
    assert not (await mount.status()).moving
    await mount.stop()
    await mount.park()
    await clock.advance(60.0)
    assert (await mount.status()).parked
    await mount.close()
    assert emulator.transcript == [
        (b"C2\r", b"AZ=000  EL=000\r\n"),
        (b"W123 045\r", b"\r\n"),
        (b"C2\r", b"AZ=000  EL=000\r\n"),
        (b"C2\r", b"AZ=123  EL=045\r\n"),
        (b"C2\r", b"AZ=123  EL=045\r\n"),
        (b"S\r", b"\r\n"),
        (b"W000 090\r", b"\r\n"),
        (b"C2\r", b"AZ=000  EL=090\r\n"),
    ]


async def test_wrap_frame_and_limits(emulator: Gs232Emulator, clock: SimClock) -> None:
    mount = mount_for(emulator, clock, el_max_deg=180.0)
    await mount.connect()
    assert mount.capabilities.el_over_zenith
    assert (mount.capabilities.az.min_deg, mount.capabilities.az.max_deg) == (0.0, 450.0)
    for az, el in ((451.0, 10.0), (-1.0, 10.0), (10.0, 181.0), (10.0, -0.5)):
        with pytest.raises(MountLimitError):
            await mount.slew_to(az, el)
    await mount.slew_to(405.0, 170.0)  # past north on the overlap, over the zenith
    await mount.close()
    assert emulator.transcript[1:] == [(b"W405 170\r", b"\r\n")]


async def test_controller_refusal_carries_its_prompt(emulator: Gs232Emulator,
                                                     clock: SimClock) -> None:
    emulator._mode_450 = False  # the unit was left in 360° mode ("P36")
    mount = mount_for(emulator, clock)
    await mount.connect()
    with pytest.raises(MountCommandRejected, match="invalid command") as info:
        await mount.slew_to(400.0, 10.0)
    assert info.value.device_message == "?>"
    assert mount.state is LinkState.CONNECTED
    await mount.close()
    assert emulator.transcript[1:] == [(b"W400 010\r", b"?>\r\n")]


async def test_silent_controller_mode(clock: SimClock) -> None:
    emu = Gs232Emulator(clock, az_deg=90.0, el_deg=10.0, ack_set_commands=False)
    emu.start()
    try:
        mount = mount_for(emu, clock, ack_set_commands=False)
        await mount.connect()
        await mount.slew_to(100.0, 10.0)
        await mount.stop()
        pos = await mount.position()
        assert (pos.az_deg, pos.el_deg) == (90.0, 10.0)
        await mount.close()
        assert emu.transcript == [
            (b"C2\r", b"AZ=090  EL=010\r\n"),
            (b"W100 010\r", b""),
            (b"S\r", b""),
            (b"C2\r", b"AZ=090  EL=010\r\n"),
        ]
    finally:
        emu.close()


async def test_hung_controller_times_out_naming_command_and_deadline(
        emulator: Gs232Emulator, clock: SimClock) -> None:
    mount = mount_for(emulator, clock, io_timeout_s=0.2, reconnect_initial_s=0.01)
    await mount.connect()
    emulator.hung = True
    with pytest.raises(MountConnectionLost, match=r"'C2' within 0.2 s"):
        await mount.position()
    assert mount.state is LinkState.LOST and mount.links_lost == 1
    emulator.hung = False
    await mount.close()


async def test_unplugged_port_is_a_lost_link_then_reopen_fails(
        emulator: Gs232Emulator, clock: SimClock) -> None:
    mount = mount_for(emulator, clock, reconnect_initial_s=0.01)
    await mount.connect()
    emulator.close()
    with pytest.raises(MountConnectionLost):
        await mount.position()
    status = await mount.status()
    assert not status.connected and status.fault
    await asyncio.sleep(0.05)  # I/O pacing: past the (wall-clock) reopen backoff
    with pytest.raises(MountConnectionLost, match="cannot open serial port"):
        await mount.position()
    assert mount.reconnects == 0
    await mount.close()
    with pytest.raises(MountNotConnected):
        await mount.position()


async def test_missing_port(clock: SimClock, tmp_path) -> None:
    mount = Gs232Mount(Gs232Mount.Options(port=str(tmp_path / "ttyUSB9")), clock=clock)
    with pytest.raises(MountConnectionLost, match="cannot open serial port"):
        await mount.connect()


def test_options_have_descriptions() -> None:
    for name, field in Gs232Mount.Options.model_fields.items():
        assert field.description, name


async def test_cancelled_exchange_does_not_desynchronise_the_next_one(
        emulator: Gs232Emulator, clock: SimClock) -> None:
    mount = mount_for(emulator, clock)
    await mount.connect()
    emulator.hung = True
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):  # the caller's own deadline
            await mount.position()
    emulator.hung = False
    await mount.slew_to(10.0, 10.0)  # reopened; its ack is its own
    await clock.advance(10.0)
    pos = await mount.position()
    assert (pos.az_deg, pos.el_deg) == (10.0, 10.0)
    await mount.close()
    assert emulator.transcript[1:] == [
        (b"C2\r", b""), (b"W010 010\r", b"\r\n"), (b"C2\r", b"AZ=010  EL=010\r\n")]
