"""The beacon laser driver against pyvisa-sim devices (drivers/instruments/beacon_laser.yaml)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from drivers import registry
from drivers.errors import CommandRejected, DriverError, LimitError
from drivers.instruments.base import (
    Exchange,
    InstrumentConnectionLost,
    InstrumentIdentityMismatch,
    InstrumentNotConnected,
    Readiness,
    ScpiDataOutOfRange,
    ScpiDeviceError,
    ScpiSession,
    ScpiSettingsConflict,
)
from drivers.instruments.beacon_laser import (
    SIM_RESOURCE,
    SIM_RESOURCE_INTERLOCK_OPEN,
    SIM_RESOURCE_TEC_FAULT,
    BeaconCurrentLimit,
    BeaconInterlockOpen,
)

OK = b'+0,"No error"\n'


async def test_connect_identifies_and_reports_ready(make_laser, clock) -> None:
    laser = await make_laser()
    assert laser.connected
    assert laser.identity == "QKD-STATION-SIM,BEACON-LDC,SIM00001,1.0"
    st = await laser.status()
    assert st.connected and st.error is None
    assert st.output_on is False
    assert st.interlock_ok is True
    assert st.device_limit_mA == pytest.approx(200.0)
    assert st.current_setpoint_mA == 80.0
    assert st.time_s == clock.now_s()
    ready = await laser.ready()
    assert ready.ok, ready.reason
    assert "interlock closed" in ready.reason


async def test_output_on_and_off_exact_bytes(make_laser) -> None:
    laser = await make_laser()
    laser.transcript.clear()
    await laser.output_on(reason="pass MICIUS 2016-12-19")
    assert list(laser.transcript) == [
        Exchange(b"OUTP:PROT:INTL:TRIP?\n", b"0\n"),
        Exchange(b"SOUR:CURR 0.080000\n", None),
        Exchange(b"SYST:ERR?\n", OK),
        Exchange(b"OUTP ON\n", None),
        Exchange(b"SYST:ERR?\n", OK),
        Exchange(b"OUTP?\n", b"ON\n"),
    ]
    assert await laser.get_current_mA() == pytest.approx(80.0)
    laser.transcript.clear()
    await laser.output_off(reason="pass ended")
    assert list(laser.transcript) == [
        Exchange(b"OUTP OFF\n", None),
        Exchange(b"SYST:ERR?\n", OK),
        Exchange(b"OUTP?\n", b"OFF\n"),
    ]
    assert laser.switch_on_count == 1


async def test_every_switch_is_logged_with_its_reason(make_laser, caplog) -> None:
    laser = await make_laser()
    with caplog.at_level(logging.INFO, logger="drivers.instruments.beacon_laser"):
        await laser.output_on(reason="pass MICIUS", current_mA=95.5)
        await laser.output_off(reason="pass ended")
    messages = [r.getMessage() for r in caplog.records]
    assert "beacon_laser: beacon output ON at 95.5 mA (pass MICIUS)" in messages
    assert "beacon_laser: beacon output OFF (pass ended)" in messages
    assert await laser.get_current_mA() == pytest.approx(95.5)


async def test_current_above_safe_max_is_refused_before_sending(make_laser) -> None:
    laser = await make_laser(max_current_mA=120.0, current_setpoint_mA=100.0)
    laser.transcript.clear()
    with pytest.raises(BeaconCurrentLimit, match="max_current_mA=120") as info:
        await laser.output_on(reason="test", current_mA=130.0)
    assert isinstance(info.value, LimitError)
    with pytest.raises(BeaconCurrentLimit):
        await laser.set_current_mA(-1.0)
    assert list(laser.transcript) == []
    assert await laser.output_is_on() is False


async def test_controller_rejects_out_of_range_current_in_its_own_words(make_laser) -> None:
    # A safe maximum set above the controller's 200 mA limit lets the device itself refuse.
    laser = await make_laser(max_current_mA=500.0)
    await laser.set_current_mA(120.0)
    with pytest.raises(ScpiDataOutOfRange) as info:
        await laser.set_current_mA(300.0)
    err = info.value
    assert err.code == -222
    assert err.device_message == "Data out of range"
    assert err.command == "SOUR:CURR 0.300000"
    assert isinstance(err, LimitError) and isinstance(err, CommandRejected)
    assert "beacon_laser" in str(err)
    assert await laser.get_current_mA() == pytest.approx(120.0)
    # The refusal was drained from the queue: the next command is not blamed for it.
    await laser.set_current_mA(100.0)
    assert await laser.get_current_mA() == pytest.approx(100.0)


async def test_interlock_open_refuses_on_and_is_not_ready(make_laser) -> None:
    laser = await make_laser(resource_name=SIM_RESOURCE_INTERLOCK_OPEN)
    ready = await laser.ready()
    assert not ready.ok
    assert ready.reason == "beacon_laser: interlock open"
    laser.transcript.clear()
    with pytest.raises(BeaconInterlockOpen):
        await laser.output_on(reason="pass")
    sent = [e.sent for e in laser.transcript]
    assert sent == [b"OUTP:PROT:INTL:TRIP?\n"]  # nothing else reached the controller
    assert (await laser.status()).output_on is False


async def test_interlocked_controller_itself_refuses_output_on() -> None:
    # The simulated controller enforces its interlock too (a race with a door opening).
    opts = registry.validate_options(
        "beacon_laser", "sim", {"resource_name": SIM_RESOURCE_INTERLOCK_OPEN}
    )
    session = ScpiSession(opts, device="raw")
    await session.open()
    try:
        with pytest.raises(ScpiSettingsConflict) as info:
            await session.write("OUTP ON")
        assert info.value.code == -221
        assert info.value.device_message == "Settings conflict; interlock open"
        assert await session.query("OUTP?") == "OFF"
    finally:
        await session.close()


async def test_controller_answering_with_an_error_raises_it_by_name(make_laser) -> None:
    laser = await make_laser(resource_name=SIM_RESOURCE_TEC_FAULT)
    assert (await laser.ready()).ok  # nothing shows until it is asked to lase
    with pytest.raises(ScpiDeviceError) as info:
        await laser.output_on(reason="pass")
    err = info.value
    assert err.code == -300
    assert err.device_message == "Device-specific error; TEC temperature out of window"
    assert err.command == "OUTP ON"
    assert isinstance(err, DriverError)
    assert await laser.output_is_on() is False
    assert laser.switch_on_count == 0


async def test_output_found_on_at_connect_is_switched_off(make_laser) -> None:
    # Two drivers on one simulated controller stand in for a daemon restarted after a crash
    # that left the beacon on.
    crashed = await make_laser(name="before_crash")
    await crashed.output_on(reason="pass")
    restarted = await make_laser(name="after_restart")
    assert await restarted.output_is_on() is False
    assert await crashed.output_is_on() is False


async def test_output_left_on_at_connect_when_asked(make_laser) -> None:
    first = await make_laser(name="first")
    await first.output_on(reason="pass")
    second = await make_laser(name="second", off_on_connect=False, off_on_close=False)
    assert await second.output_is_on() is True


async def test_close_switches_output_off(make_laser) -> None:
    observer = await make_laser(name="observer", off_on_close=False)
    laser = await make_laser(name="beacon")
    await laser.output_on(reason="pass")
    assert await observer.output_is_on() is True
    await laser.close()
    assert not laser.connected
    assert await observer.output_is_on() is False
    await laser.close()  # idempotent


async def test_unknown_resource_fails_to_connect_naming_it(make_laser) -> None:
    with pytest.raises(InstrumentConnectionLost) as info:
        await make_laser(resource_name="USB0::0x1313::0x804A::NOSUCH::INSTR")
    text = str(info.value)
    assert "NOSUCH" in text
    assert "SIM00001" in text  # the simulated library lists what it does have


async def test_missing_visa_library_fails_to_connect(make_laser, tmp_path) -> None:
    with pytest.raises(InstrumentConnectionLost, match="cannot load VISA library"):
        await make_laser(visa_library=f"{tmp_path / 'absent.yaml'}@sim")


async def test_wrong_instrument_at_the_address(make_laser) -> None:
    wrong = await make_laser(expected_idn="GPSDO", connect=False)
    with pytest.raises(InstrumentIdentityMismatch, match="GPSDO"):
        await wrong.connect()
    assert not wrong.connected  # the half-open link was closed again
    ok = await make_laser(expected_idn="beacon-ldc")
    assert ok.connected


async def test_not_connected(make_laser) -> None:
    laser = await make_laser(connect=False)
    with pytest.raises(InstrumentNotConnected):
        await laser.output_on(reason="pass")
    st = await laser.status()
    assert not st.connected and st.error == "not connected"
    assert await laser.ready() == Readiness(False, "beacon_laser: not connected")


async def test_concurrent_callers_do_not_interleave(make_laser) -> None:
    laser = await make_laser()
    await laser.output_on(reason="pass")
    statuses = await asyncio.gather(*(laser.status() for _ in range(8)))
    assert all(s.output_on and s.interlock_ok and s.error is None for s in statuses)
    assert all(s.current_mA == pytest.approx(80.0) for s in statuses)
    # Each reply came right after its own command.
    for exchange in list(laser.transcript)[-24:]:
        expected = {
            b"OUTP?\n": b"ON\n",
            b"SOUR:CURR?\n": b"8.000000E-02\n",
            b"OUTP:PROT:INTL:TRIP?\n": b"0\n",
        }[exchange.sent]
        assert exchange.received == expected


def test_options_defaults_and_validation() -> None:
    sim = registry.validate_options("beacon_laser", "sim", {})
    assert sim.resource_name == SIM_RESOURCE
    assert sim.visa_library.endswith("drivers/instruments/beacon_laser.yaml@sim")
    override = registry.validate_options(
        "beacon_laser", "sim", {"resource_name": SIM_RESOURCE_TEC_FAULT}
    )
    assert override.resource_name == SIM_RESOURCE_TEC_FAULT
    with pytest.raises(registry.ValidationError, match="resource_name"):
        registry.validate_options("beacon_laser", "visa", {})
    with pytest.raises(registry.ValidationError, match="above max_current_mA"):
        registry.validate_options(
            "beacon_laser", "sim", {"current_setpoint_mA": 200, "max_current_mA": 150}
        )
    with pytest.raises(registry.ValidationError, match="current_mA"):
        registry.validate_options("beacon_laser", "sim", {"current_mA": 80})
    real = registry.validate_options(
        "beacon_laser", "visa",
        {"resource_name": "TCPIP0::192.168.1.20::inst0::INSTR", "visa_library": "@py"},
    )
    assert real.timeout_s == 2.0 and real.visa_library == "@py"
