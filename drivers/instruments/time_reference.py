"""The time reference: a GPS-disciplined oscillator (GPSDO) spoken to in SCPI over VISA.

It feeds the time tagger its 10 MHz and 1 PPS; detection timestamps are only worth as much
as its lock. The driver reads, never commands: lock state, how long it has been coasting in
holdover, satellites tracked, 1 PPS offset and frequency error.

SCPI subset (the SYNChronization/GPS subsystems of Jackson Labs and Symmetricom/Microsemi
GPSDOs)::

    *IDN?                identity
    SYNC:LOCK?           1 when the oscillator is locked to GPS
    SYNC:HOLD:DUR?       "<seconds>,<0|1>": present (or last) holdover duration, in holdover?
    GPS:SAT:TRA:COUN?    satellites tracked
    SYNC:TINT?           1 PPS offset from GPS, seconds (9.91E37 when there is none)
    SYNC:FEE?            fractional frequency error estimate (9.91E37 when unknown)
    SYST:ERR?            error queue

The lock state is ``LOCKED`` when SYNC:LOCK? says so, else ``HOLDOVER`` when
SYNC:HOLD:DUR? says the oscillator is in holdover, else ``UNLOCKED``.

Backend ``sim`` opens ``time_reference.yaml`` (next to this module) with pyvisa-sim;
backend ``visa`` opens ``resource_name`` with the configured VISA library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field

from drivers.clock import Clock
from drivers.instruments.base import (
    InstrumentError,
    InstrumentOptions,
    Readiness,
    ScpiInstrument,
    parse_bool,
    parse_float,
    sim_library,
)

log = logging.getLogger(__name__)

SIM_YAML = "time_reference.yaml"
SIM_RESOURCE = "ASRL10::INSTR"
SIM_RESOURCE_HOLDOVER = "ASRL11::INSTR"
SIM_RESOURCE_UNLOCKED = "ASRL12::INSTR"


class LockState(StrEnum):
    """Discipline state of the oscillator."""

    LOCKED = "LOCKED"
    HOLDOVER = "HOLDOVER"
    UNLOCKED = "UNLOCKED"


@dataclass(frozen=True, slots=True)
class TimeReferenceStatus:
    """A snapshot for readiness checks and the status publisher.

    Fields the instrument could not be asked (or had no value for) are ``None``; ``error``
    says why when it is an error.
    """

    name: str
    #: Clock time of the snapshot (seconds since the Unix epoch, UTC).
    time_s: float
    connected: bool
    identity: str | None
    #: ``True`` only in ``LOCKED`` (holdover is not locked).
    locked: bool
    state: LockState | None
    #: Present holdover duration when in holdover, else the last one (0 if never).
    holdover_s: float | None
    satellites_tracked: int | None
    pps_offset_ns: float | None
    frequency_error_ppb: float | None
    error: str | None = None


class TimeReference(ScpiInstrument):
    """One GPSDO. See the module docstring."""

    class Options(InstrumentOptions):
        """Options of backends ``visa`` and ``sim``."""

        max_holdover_s: float = Field(
            0.0, ge=0,
            description="ready() also accepts HOLDOVER lasting at most this long; 0 means "
            "only LOCKED is ready.",
        )
        min_satellites: int = Field(
            0, ge=0, description="ready() needs at least this many satellites tracked."
        )

    LOCK_QUERY = "SYNC:LOCK?"
    HOLDOVER_QUERY = "SYNC:HOLD:DUR?"
    SATELLITES_QUERY = "GPS:SAT:TRA:COUN?"
    PPS_OFFSET_QUERY = "SYNC:TINT?"
    FREQUENCY_ERROR_QUERY = "SYNC:FEE?"

    @classmethod
    def default_options_for(cls, backend: str) -> dict[str, Any]:
        """Defaults merged under the config's options: ``sim`` means the shipped YAML."""
        if backend == "sim":
            return {"resource_name": SIM_RESOURCE, "visa_library": sim_library(SIM_YAML)}
        return {}

    def __init__(self, options: Options, *, clock: Clock, name: str = "time_reference"):
        super().__init__(options, clock=clock, name=name)
        self._last_state: LockState | None = None

    async def lock_state(self) -> LockState:
        """LOCKED, HOLDOVER or UNLOCKED (raises on instrument trouble)."""
        state, _ = await self._lock_and_holdover()
        return state

    async def status(self) -> TimeReferenceStatus:
        """A snapshot; never raises for instrument trouble (it lands in ``error``)."""
        state: LockState | None = None
        holdover_s: float | None = None
        satellites: int | None = None
        pps_offset_ns: float | None = None
        frequency_error_ppb: float | None = None
        error: str | None = None
        if self.connected:
            try:
                state, holdover_s = await self._lock_and_holdover()
                satellites = int(self._number(await self._session.query(self.SATELLITES_QUERY),
                                              self.SATELLITES_QUERY) or 0)
                offset_s = self._number(await self._session.query(self.PPS_OFFSET_QUERY),
                                        self.PPS_OFFSET_QUERY)
                pps_offset_ns = None if offset_s is None else offset_s * 1e9
                fee = self._number(await self._session.query(self.FREQUENCY_ERROR_QUERY),
                                   self.FREQUENCY_ERROR_QUERY)
                frequency_error_ppb = None if fee is None else fee * 1e9
            except InstrumentError as exc:
                error = str(exc)
        else:
            error = "not connected"
        if state is not None and state != self._last_state:
            # A lock change matters to the timestamps: say so once, where it happened.
            level = logging.INFO if state is LockState.LOCKED else logging.WARNING
            log.log(level, "%s: lock state %s -> %s (holdover %s s, %s satellites)", self.name,
                    self._last_state, state, holdover_s, satellites)
            self._last_state = state
        return TimeReferenceStatus(
            name=self.name,
            time_s=self._clock.now_s(),
            connected=self.connected,
            identity=self.identity,
            locked=state is LockState.LOCKED,
            state=state,
            holdover_s=holdover_s,
            satellites_tracked=satellites,
            pps_offset_ns=pps_offset_ns,
            frequency_error_ppb=frequency_error_ppb,
            error=error,
        )

    async def ready(self) -> Readiness:
        """Ready for a pass: LOCKED (or a holdover within ``max_holdover_s``), enough
        satellites tracked."""
        st = await self.status()
        if not st.connected:
            return Readiness(False, f"{self.name}: not connected")
        if st.error:
            return Readiness(False, f"{self.name}: {st.error}")
        opts = self.options
        if st.state is LockState.HOLDOVER:
            if st.holdover_s is None or st.holdover_s > opts.max_holdover_s:
                return Readiness(
                    False,
                    f"{self.name}: in holdover for {st.holdover_s:g} s "
                    f"(max_holdover_s={opts.max_holdover_s:g})",
                )
        elif st.state is not LockState.LOCKED:
            return Readiness(
                False, f"{self.name}: {st.state} ({st.satellites_tracked} satellites tracked)"
            )
        if (st.satellites_tracked or 0) < opts.min_satellites:
            return Readiness(
                False,
                f"{self.name}: {st.satellites_tracked} satellites tracked "
                f"(min_satellites={opts.min_satellites})",
            )
        detail = (f"holdover {st.holdover_s:g} s" if st.state is LockState.HOLDOVER
                  else f"{st.satellites_tracked} satellites")
        return Readiness(True, f"{self.name}: {st.state} ({detail})")

    # ------------------------------------------------------------------------------------

    async def _lock_and_holdover(self) -> tuple[LockState, float]:
        reply = await self._session.query(self.LOCK_QUERY)
        try:
            locked = parse_bool(reply)
        except ValueError:
            raise self._unexpected(reply, self.LOCK_QUERY) from None
        reply = await self._session.query(self.HOLDOVER_QUERY)
        try:
            duration_text, _, flag_text = reply.partition(",")
            holdover_s = float(duration_text)
            in_holdover = parse_bool(flag_text) if flag_text else False
        except ValueError:
            raise self._unexpected(reply, self.HOLDOVER_QUERY) from None
        if locked:
            return LockState.LOCKED, holdover_s
        return (LockState.HOLDOVER if in_holdover else LockState.UNLOCKED), holdover_s

    def _number(self, reply: str, command: str) -> float | None:
        try:
            return parse_float(reply)
        except ValueError:
            raise self._unexpected(reply, command) from None

    def _unexpected(self, reply: str, command: str) -> InstrumentError:
        return InstrumentError(f"unexpected answer {reply!r} to {command!r}", device=self.name)


__all__ = [
    "SIM_RESOURCE", "SIM_RESOURCE_HOLDOVER", "SIM_RESOURCE_UNLOCKED", "SIM_YAML",
    "LockState", "TimeReference", "TimeReferenceStatus",
]
