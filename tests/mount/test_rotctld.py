"""RotctldMount: byte-exact protocol tests against a scripted peer, then the real rotctld."""

from __future__ import annotations

import asyncio

import pytest

from drivers.mount.base import (
    MountCommandRejected,
    MountConnectionLost,
    MountLimitError,
    MountNotConnected,
)
from drivers.mount.rotctld import LinkState, RotctldMount
from station.clock import RealClock, SimClock
from tests.conftest import free_port
from tests.mount.scripted_server import CLOSE, SILENT, ScriptedServer

CAPS = (b"Caps dump for model:\t1\nModel name:\t\tDummy\nRot type:\t\tAz-El\n"
        b"Min Azimuth:\t\t-180.00\nMax Azimuth:\t\t450.00\n"
        b"Min Elevation:\t\t0.00\nMax Elevation:\t\t90.00\nCan Park:\t\tY\n\n"
        b"Overall backend warnings: 0\nRPRT 0\n")
HELLO = [(b"_\n", b"Dummy rotator\n"), (b"\\dump_caps\n", CAPS)]


def mount_for(port: int, **opts: object) -> RotctldMount:
    options = RotctldMount.Options(port=port, **opts)
    return RotctldMount(options, clock=SimClock(1.5e9, manual=True), name="rot")


async def test_connect_reads_model_and_limits_then_slews_and_reads_back() -> None:
    async with ScriptedServer(HELLO + [
        (b"P 10.0000 20.5000\n", b"RPRT 0\n"),
        (b"p\n", b"10.00\n20.50\n"),
        (b"S\n", b"RPRT 0\n"),
        (b"K\n", b"RPRT 0\n"),
    ]) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        assert mount.model_info == "Dummy rotator"
        caps = mount.capabilities
        assert (caps.az.min_deg, caps.az.max_deg) == (-180.0, 450.0)
        assert (caps.el.min_deg, caps.el.max_deg) == (0.0, 90.0)
        assert not caps.el_over_zenith and not caps.program_track
        await mount.slew_to(10.0, 20.5)
        pos = await mount.position()
        assert (pos.az_deg, pos.el_deg, pos.time_s) == (10.0, 20.5, 1.5e9)
        await mount.stop()
        await mount.park()
        await mount.close()
    srv.check()


async def test_status_reports_arrival_and_park() -> None:
    async with ScriptedServer(HELLO + [
        (b"P 30.0000 10.0000\n", b"RPRT 0\n"),
        (b"p\n", b"12.00\n4.00\n"),
        (b"p\n", b"30.00\n10.00\n"),
        (b"K\n", b"RPRT 0\n"),
        (b"p\n", b"6.00\n2.00\n"),
        (b"p\n", b"0.00\n0.00\n"),
    ]) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        await mount.slew_to(30.0, 10.0)
        assert (await mount.status()).moving
        status = await mount.status()
        assert status.connected and not status.moving and not status.parked
        await mount.park()
        assert not (await mount.status()).parked
        assert (await mount.status()).parked
        await mount.close()
    srv.check()


@pytest.mark.parametrize("reply", [b"RPRT -1\n", b"RPRT -21\n"])
async def test_device_limit_refusal_is_a_limit_error_with_the_device_words(reply: bytes) -> None:
    async with ScriptedServer(HELLO + [(b"P 440.0000 45.0000\n", reply)]) as srv:
        # The limits given in options are wider than the device's own, so the command
        # reaches the device and the device refuses it.
        mount = mount_for(srv.port, az_max_deg=460.0)
        await mount.connect()
        with pytest.raises(MountLimitError) as info:
            await mount.slew_to(440.0, 45.0)
        assert info.value.device_message == reply.decode().strip()
        assert "Invalid parameter" in str(info.value) or "Limit exceeded" in str(info.value)
        await mount.close()
    srv.check()


async def test_targets_outside_known_limits_are_refused_before_sending() -> None:
    async with ScriptedServer(HELLO) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        for az, el in ((451.0, 10.0), (-181.0, 10.0), (10.0, -1.0), (10.0, 91.0)):
            with pytest.raises(MountLimitError):
                await mount.slew_to(az, el)
        await mount.close()
    srv.check()  # nothing beyond the hello reached the wire


async def test_other_rprt_codes_map_to_typed_errors() -> None:
    async with ScriptedServer(HELLO + [
        (b"K\n", b"RPRT -4\n"),
        (b"p\n", b"RPRT -6\n"),
        (b"P 1.0000 2.0000\n", b"RPRT -9\n"),
        (b"p\n", b"1.00\n2.00\n"),
    ]) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        with pytest.raises(MountCommandRejected, match="Feature not implemented") as info:
            await mount.park()
        assert not isinstance(info.value, MountLimitError)
        assert info.value.device_message == "RPRT -4"
        # rotctld is up but cannot reach the rotator: a lost link, the TCP link stays.
        with pytest.raises(MountConnectionLost, match="IO error"):
            await mount.position()
        with pytest.raises(MountCommandRejected, match="rejected by the rig"):
            await mount.slew_to(1.0, 2.0)
        assert (await mount.position()).az_deg == 1.0
        assert mount.state is LinkState.CONNECTED
        await mount.close()
    srv.check()


async def test_garbled_position_is_rejected_with_the_device_text() -> None:
    async with ScriptedServer(HELLO + [(b"p\n", b"abc\n2.00\n")]) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        with pytest.raises(MountCommandRejected, match="two numbers") as info:
            await mount.position()
        assert info.value.device_message == "abc\n2.00"
        await mount.close()
    srv.check()


async def test_dropped_link_reconnects_after_backoff() -> None:
    async with ScriptedServer(
        HELLO + [(b"p\n", CLOSE)],
        [(b"p\n", b"5.00\n6.00\n")],
    ) as srv:
        mount = mount_for(srv.port, reconnect_initial_s=0.05, reconnect_max_s=0.2)
        await mount.connect()
        with pytest.raises(MountConnectionLost, match="'p'"):
            await mount.position()
        assert mount.state is LinkState.LOST and mount.links_lost == 1
        # Inside the backoff: refused at once, without touching the network.
        with pytest.raises(MountConnectionLost, match="next reconnect in"):
            await mount.position()
        assert srv.connections == 1
        assert not (await mount.status()).connected
        await asyncio.sleep(0.1)  # I/O pacing: let the (wall-clock) backoff pass
        pos = await mount.position()
        assert (pos.az_deg, pos.el_deg) == (5.0, 6.0)
        assert mount.reconnects == 1 and mount.state is LinkState.CONNECTED
        await mount.close()
    srv.check()


async def test_silent_peer_times_out_naming_the_request_and_deadline() -> None:
    async with ScriptedServer(HELLO + [(b"p\n", SILENT)]) as srv:
        mount = mount_for(srv.port, io_timeout_s=0.2)
        await mount.connect()
        with pytest.raises(MountConnectionLost, match=r"'p' within 0.2 s"):
            await mount.position()
        await mount.close()
    srv.check()


async def test_unreachable_server_and_use_before_connect() -> None:
    mount = mount_for(free_port(), connect_timeout_s=1.0)
    with pytest.raises(MountNotConnected):
        await mount.position()
    with pytest.raises(MountConnectionLost, match="cannot connect to rotctld"):
        await mount.connect()
    assert not (await mount.status()).connected
    await mount.close()
    await mount.close()


def test_options_have_descriptions_and_reject_unknown_keys() -> None:
    for name, field in RotctldMount.Options.model_fields.items():
        assert field.description, name
    with pytest.raises(ValueError, match="extra"):
        RotctldMount.Options(hostname="x")


# -- the real rotctld (Hamlib dummy rotator, 6°/s) -------------------------------------

async def wait_arrived(mount: RotctldMount, az: float, el: float, *, within_s: float = 30.0) -> None:
    """Poll until the rotator reports (az, el); the deadline only guards against a hang."""
    async with asyncio.timeout(within_s):
        while True:
            pos = await mount.position()
            if abs(pos.az_deg - az) < 0.05 and abs(pos.el_deg - el) < 0.05:
                return
            await asyncio.sleep(0.1)


async def test_real_rotctld_connect_slew_read_back_park_and_limits(rotctld) -> None:
    mount = RotctldMount(RotctldMount.Options(port=rotctld.port), clock=RealClock())
    await mount.connect()
    try:
        assert mount.model_info == "Dummy rotator"
        caps = mount.capabilities
        assert (caps.az.min_deg, caps.az.max_deg, caps.el.min_deg, caps.el.max_deg) == (
            -180.0, 450.0, 0.0, 90.0)
        await mount.slew_to(9.0, 6.0)
        assert (await mount.status()).moving
        await wait_arrived(mount, 9.0, 6.0)
        assert not (await mount.status()).moving
        # Past the device's limits: our check refuses it before it is sent...
        with pytest.raises(MountLimitError):
            await mount.slew_to(451.0, 10.0)
        # ...and with limits widened in options, the device itself refuses it.
        wide = RotctldMount(RotctldMount.Options(port=rotctld.port, az_max_deg=500.0),
                            clock=RealClock())
        await wide.connect()
        try:
            with pytest.raises(MountLimitError) as info:
                await wide.slew_to(480.0, 10.0)
            assert info.value.device_message in ("RPRT -1", "RPRT -21")
        finally:
            await wide.close()
        await mount.park()
        await wait_arrived(mount, 0.0, 0.0)
        assert (await mount.status()).parked
        await mount.slew_to(3.0, 3.0)
        await mount.stop()
        assert not (await mount.status()).parked
    finally:
        await mount.close()


async def test_real_rotctld_restart_is_survived_by_reconnecting(rotctld) -> None:
    mount = RotctldMount(RotctldMount.Options(port=rotctld.port, reconnect_initial_s=0.05,
                                              reconnect_max_s=0.2), clock=RealClock())
    await mount.connect()
    try:
        await mount.position()
        rotctld.stop()
        with pytest.raises(MountConnectionLost):
            await mount.position()
        assert not (await mount.status()).connected
        rotctld.restart()
        async with asyncio.timeout(10.0):  # guards against a hang only
            while True:
                try:
                    pos = await mount.position()
                    break
                except MountConnectionLost:
                    await asyncio.sleep(0.05)
        assert (pos.az_deg, pos.el_deg) == (0.0, 0.0)  # a fresh dummy rotator
        assert mount.links_lost >= 1 and mount.reconnects == 1
    finally:
        await mount.close()


async def test_cancelled_exchange_does_not_desynchronise_the_next_one() -> None:
    async with ScriptedServer(
        HELLO + [(b"p\n", SILENT)],
        [(b"p\n", b"1.00\n2.00\n")],
    ) as srv:
        mount = mount_for(srv.port)
        await mount.connect()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # the caller's own deadline
                await mount.position()
        pos = await mount.position()  # a fresh connection, its own answer
        assert (pos.az_deg, pos.el_deg) == (1.0, 2.0)
        assert mount.links_lost == 0
        await mount.close()
    srv.check()
