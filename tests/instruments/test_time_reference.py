"""The GPSDO driver against pyvisa-sim devices (drivers/instruments/time_reference.yaml)."""

from __future__ import annotations

import logging

import pytest

from drivers import registry
from drivers.instruments.base import Exchange, ScpiCommandError, ScpiSession
from drivers.instruments.time_reference import (
    SIM_RESOURCE,
    SIM_RESOURCE_HOLDOVER,
    SIM_RESOURCE_UNLOCKED,
    LockState,
)


async def test_locked_status_and_exact_bytes(make_reference, clock) -> None:
    ref = await make_reference()
    assert ref.identity == "QKD-STATION-SIM,GPSDO-10MHZ,SIM00101,1.0"
    ref.transcript.clear()
    st = await ref.status()
    # The simulated GPSDO ends replies with CR LF, as serial GPSDOs do.
    assert list(ref.transcript) == [
        Exchange(b"SYNC:LOCK?\n", b"1\r\n"),
        Exchange(b"SYNC:HOLD:DUR?\n", b"0,0\r\n"),
        Exchange(b"GPS:SAT:TRA:COUN?\n", b"9\r\n"),
        Exchange(b"SYNC:TINT?\n", b"+2.1E-09\r\n"),
        Exchange(b"SYNC:FEE?\n", b"+3.0E-12\r\n"),
    ]
    assert st.connected and st.error is None
    assert st.locked is True and st.state is LockState.LOCKED
    assert st.holdover_s == 0.0
    assert st.satellites_tracked == 9
    assert st.pps_offset_ns == pytest.approx(2.1)
    assert st.frequency_error_ppb == pytest.approx(0.003)
    assert st.time_s == clock.now_s()
    assert await ref.lock_state() is LockState.LOCKED
    ready = await ref.ready()
    assert ready.ok and ready.reason == "time_reference: LOCKED (9 satellites)"


async def test_holdover_is_not_locked_and_ready_only_within_limit(make_reference) -> None:
    ref = await make_reference(resource_name=SIM_RESOURCE_HOLDOVER)
    st = await ref.status()
    assert st.state is LockState.HOLDOVER and st.locked is False
    assert st.holdover_s == 1800.0
    assert st.satellites_tracked == 0
    assert st.pps_offset_ns is None  # 9.91E37: nothing to measure against
    assert st.frequency_error_ppb == pytest.approx(0.12)
    ready = await ref.ready()
    assert not ready.ok
    assert ready.reason == "time_reference: in holdover for 1800 s (max_holdover_s=0)"
    lenient = await make_reference(resource_name=SIM_RESOURCE_HOLDOVER, max_holdover_s=3600)
    assert (await lenient.ready()).ok


async def test_unlocked_is_not_ready(make_reference) -> None:
    ref = await make_reference(resource_name=SIM_RESOURCE_UNLOCKED)
    st = await ref.status()
    assert st.state is LockState.UNLOCKED and not st.locked
    assert st.satellites_tracked == 2
    assert st.pps_offset_ns is None and st.frequency_error_ppb is None
    ready = await ref.ready()
    assert not ready.ok
    assert ready.reason == "time_reference: UNLOCKED (2 satellites tracked)"


async def test_too_few_satellites_is_not_ready(make_reference) -> None:
    ref = await make_reference(min_satellites=12)
    ready = await ref.ready()
    assert not ready.ok and "min_satellites=12" in ready.reason


async def test_lock_changes_are_logged_once(make_reference, caplog) -> None:
    ref = await make_reference(resource_name=SIM_RESOURCE_HOLDOVER)
    with caplog.at_level(logging.INFO, logger="drivers.instruments.time_reference"):
        await ref.status()
        await ref.status()
    changes = [r for r in caplog.records if "lock state" in r.getMessage()]
    assert len(changes) == 1
    assert changes[0].levelno == logging.WARNING
    assert "-> HOLDOVER" in changes[0].getMessage()


async def test_status_after_close_reports_not_connected(make_reference) -> None:
    ref = await make_reference()
    await ref.close()
    st = await ref.status()
    assert not st.connected and st.error == "not connected" and st.state is None
    assert not (await ref.ready()).ok


async def test_unanswered_query_is_explained_by_the_error_queue() -> None:
    # A query the instrument does not know gets no answer; the error queue says why.
    opts = registry.validate_options("time_reference", "sim", {"timeout_s": 0.2})
    session = ScpiSession(opts, device="gpsdo")
    await session.open()
    try:
        with pytest.raises(ScpiCommandError) as info:
            await session.query("SYNC:BOGUS?")
        assert info.value.code == -113
        assert info.value.device_message == "Undefined header"
        assert info.value.command == "SYNC:BOGUS?"
        assert list(session.transcript)[-3:] == [
            Exchange(b"SYNC:BOGUS?\n", None),
            Exchange(b"SYST:ERR?\n", b'-113,"Undefined header"\r\n'),
            Exchange(b"SYST:ERR?\n", b'+0,"No error"\r\n'),
        ]
        assert await session.query("SYNC:LOCK?") == "1"  # the link is fine afterwards
    finally:
        await session.close()


def test_sim_defaults() -> None:
    opts = registry.validate_options("time_reference", "sim", {})
    assert opts.resource_name == SIM_RESOURCE
    assert opts.visa_library.endswith("drivers/instruments/time_reference.yaml@sim")
    with pytest.raises(registry.ValidationError, match="resource_name"):
        registry.validate_options("time_reference", "visa", {"visa_library": "@py"})
