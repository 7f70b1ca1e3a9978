"""The beacon laser: a laser diode controller spoken to in SCPI over VISA.

The satellite's fine-pointing camera locks on this beacon, so it shines only while a pass
is tracked. When it is switched is the station's policy; this driver makes every switch
explicit (``output_on(reason=...)`` / ``output_off(reason=...)``), logged at INFO with the
reason and the current, checked against the interlock and the configured safe maximum
current before anything is sent, verified by reading the output state back, and by
default leaves the output OFF when it connects and when it closes.

SCPI subset (laser diode controllers such as the Thorlabs ITC4000 series)::

    *IDN?                   identity
    OUTP ON | OUTP OFF      laser output; OUTP? answers 1/0 (or ON/OFF)
    SOUR:CURR <A>           diode current setpoint in amperes; SOUR:CURR? reads it back
    SOUR:CURR:LIM?          the controller's own current limit in amperes
    OUTP:PROT:INTL:TRIP?    1 when the interlock loop is open
    SYST:ERR?               error queue, read after every command

Backend ``sim`` opens ``beacon_laser.yaml`` (next to this module) with pyvisa-sim; backend
``visa`` opens ``resource_name`` with the configured VISA library. Same code either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from pydantic import Field, model_validator

from drivers.clock import Clock
from drivers.errors import CommandRejected, LimitError
from drivers.instruments.base import (
    InstrumentError,
    InstrumentOptions,
    Readiness,
    ScpiError,
    ScpiInstrument,
    parse_bool,
    parse_float,
    sim_library,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The pyvisa-sim file of backend "sim", and its devices' addresses.
SIM_YAML = "beacon_laser.yaml"
SIM_RESOURCE = "USB0::0x1313::0x804A::SIM00001::INSTR"
SIM_RESOURCE_INTERLOCK_OPEN = "USB0::0x1313::0x804A::SIM00002::INSTR"
SIM_RESOURCE_TEC_FAULT = "USB0::0x1313::0x804A::SIM00003::INSTR"


class BeaconInterlockOpen(InstrumentError, CommandRejected):
    """Refused before sending anything: the controller reports its interlock loop open."""


class BeaconCurrentLimit(InstrumentError, LimitError):
    """Refused before sending anything: a current above ``max_current_mA`` or below zero."""


@dataclass(frozen=True, slots=True)
class BeaconLaserStatus:
    """A snapshot for readiness checks and the status publisher.

    Fields the instrument could not be asked are ``None``; ``error`` says why.
    """

    name: str
    #: Clock time of the snapshot (seconds since the Unix epoch, UTC).
    time_s: float
    connected: bool
    identity: str | None
    output_on: bool | None
    current_mA: float | None
    current_setpoint_mA: float
    #: ``True`` when the interlock loop is closed (lasing allowed).
    interlock_ok: bool | None
    device_limit_mA: float | None
    error: str | None = None


class BeaconLaser(ScpiInstrument):
    """One laser diode controller driving the beacon. See the module docstring."""

    class Options(InstrumentOptions):
        """Options of backends ``visa`` and ``sim``."""

        current_setpoint_mA: float = Field(
            80.0, ge=0, description="Diode current output_on() applies unless told otherwise."
        )
        max_current_mA: float = Field(
            150.0, gt=0,
            description="Safe maximum for this diode; higher setpoints are refused before "
            "anything is sent. Keep it at or below the controller's own limit.",
        )
        off_on_connect: bool = Field(
            True, description="Switch the output OFF if it is found ON at connect (e.g. after "
            "a crash), so the beacon never shines outside a pass.",
        )
        off_on_close: bool = Field(True, description="Switch the output OFF in close().")

        @model_validator(mode="after")
        def _setpoint_within_max(self) -> Self:
            if self.current_setpoint_mA > self.max_current_mA:
                raise ValueError(
                    f"current_setpoint_mA={self.current_setpoint_mA:g} is above "
                    f"max_current_mA={self.max_current_mA:g}"
                )
            return self

    #: The commands, in one place so the docs and tests can name them.
    OUTPUT_QUERY: ClassVar[str] = "OUTP?"
    CURRENT_QUERY: ClassVar[str] = "SOUR:CURR?"
    CURRENT_LIMIT_QUERY: ClassVar[str] = "SOUR:CURR:LIM?"
    INTERLOCK_QUERY: ClassVar[str] = "OUTP:PROT:INTL:TRIP?"

    @classmethod
    def default_options_for(cls, backend: str) -> dict[str, Any]:
        """Defaults merged under the config's options: ``sim`` means the shipped YAML."""
        if backend == "sim":
            return {"resource_name": SIM_RESOURCE, "visa_library": sim_library(SIM_YAML)}
        return {}

    def __init__(self, options: Options, *, clock: Clock, name: str = "beacon_laser"):
        super().__init__(options, clock=clock, name=name)
        self.options: BeaconLaser.Options = options
        self.device_limit_mA: float | None = None
        #: Clock time of the last switch, and how many times it was switched on.
        self.last_switch_s: float | None = None
        self.switch_on_count = 0

    async def _after_connect(self) -> None:
        """Read the controller's current limit, and make sure the output is OFF: a beacon
        found ON (e.g. after a crash) must not shine outside a pass."""
        self.device_limit_mA = await self._device_limit_mA()
        if self.device_limit_mA is not None and self.options.max_current_mA > self.device_limit_mA:
            log.warning(
                "%s: max_current_mA=%g is above the controller's own limit %g mA; the "
                "controller will refuse setpoints above its limit",
                self.name, self.options.max_current_mA, self.device_limit_mA,
            )
        if await self.output_is_on():
            if self.options.off_on_connect:
                await self.output_off(reason="found ON at connect (off_on_connect)")
            else:
                log.warning("%s: output found ON at connect; left ON (off_on_connect "
                            "is false)", self.name)

    async def _before_close(self) -> None:
        """Switch the output OFF unless ``off_on_close`` is false."""
        if self.options.off_on_close:
            await self.output_off(reason="driver closing (off_on_close)")

    async def output_on(self, *, reason: str, current_mA: float | None = None) -> None:
        """Switch the beacon ON at ``current_mA`` (default ``current_setpoint_mA``).

        Checks the safe maximum and the interlock first (nothing sent if either refuses:
        :class:`BeaconCurrentLimit`, :class:`BeaconInterlockOpen`), sets the current, sends
        ``OUTP ON``, and reads the state back. The instrument's own refusal is raised as the
        named :class:`ScpiError` with its words. ``reason`` goes into the log.
        """
        target_mA = self.options.current_setpoint_mA if current_mA is None else current_mA
        self._check_current(target_mA)
        if not await self.interlock_ok():
            log.warning("%s: output ON refused: interlock open (%s)", self.name, reason)
            raise BeaconInterlockOpen(
                "interlock loop open: the beacon cannot be switched on until it is closed",
                device=self.name,
            )
        await self.set_current_mA(target_mA)
        try:
            await self._session.write("OUTP ON")
        except ScpiError as exc:
            log.error("%s: output ON refused by the controller: %s (%s)", self.name, exc, reason)
            raise
        if not await self.output_is_on():
            raise InstrumentError(
                "sent OUTP ON without error, but OUTP? still reports the output OFF",
                device=self.name,
            )
        self.last_switch_s = self._clock.now_s()
        self.switch_on_count += 1
        log.info("%s: beacon output ON at %.1f mA (%s)", self.name, target_mA, reason)

    async def output_off(self, *, reason: str) -> None:
        """Switch the beacon OFF and read the state back. ``reason`` goes into the log."""
        await self._session.write("OUTP OFF")
        if await self.output_is_on():
            raise InstrumentError(
                "sent OUTP OFF without error, but OUTP? still reports the output ON",
                device=self.name,
            )
        self.last_switch_s = self._clock.now_s()
        log.info("%s: beacon output OFF (%s)", self.name, reason)

    async def output_is_on(self) -> bool:
        """Whether the laser output is on, as the controller reports it."""
        return self._parse(parse_bool, await self._session.query(self.OUTPUT_QUERY),
                           self.OUTPUT_QUERY)

    async def set_current_mA(self, current_mA: float) -> None:
        """Set the diode current; refused locally above ``max_current_mA`` or below 0."""
        self._check_current(current_mA)
        await self._session.write(f"SOUR:CURR {current_mA / 1000.0:.6f}")
        log.debug("%s: current setpoint %.3f mA", self.name, current_mA)

    async def get_current_mA(self) -> float:
        """The diode current setpoint the controller holds, in mA."""
        value = self._parse(parse_float, await self._session.query(self.CURRENT_QUERY),
                            self.CURRENT_QUERY)
        if value is None:
            raise InstrumentError(f"{self.CURRENT_QUERY} answered not-a-number", device=self.name)
        return value * 1000.0

    async def interlock_ok(self) -> bool:
        """``True`` when the interlock loop is closed (``OUTP:PROT:INTL:TRIP?`` is 0)."""
        tripped = self._parse(parse_bool, await self._session.query(self.INTERLOCK_QUERY),
                              self.INTERLOCK_QUERY)
        return not tripped

    async def status(self) -> BeaconLaserStatus:
        """A snapshot; never raises for instrument trouble (it lands in ``error``)."""
        output_on: bool | None = None
        current_mA: float | None = None
        interlock: bool | None = None
        error: str | None = None
        if self.connected:
            try:
                output_on = await self.output_is_on()
                current_mA = await self.get_current_mA()
                interlock = await self.interlock_ok()
            except InstrumentError as exc:
                error = str(exc)
        else:
            error = "not connected"
        return BeaconLaserStatus(
            name=self.name,
            time_s=self._clock.now_s(),
            connected=self.connected,
            identity=self.identity,
            output_on=output_on,
            current_mA=current_mA,
            current_setpoint_mA=self.options.current_setpoint_mA,
            interlock_ok=interlock,
            device_limit_mA=self.device_limit_mA,
            error=error,
        )

    async def ready(self) -> Readiness:
        """Ready for a pass: connected, answering, interlock closed, setpoint within limits.

        The output state is not part of readiness (the station switches it); it is in
        :meth:`status`.
        """
        st = await self.status()
        if not st.connected:
            return Readiness(False, f"{self.name}: not connected")
        if st.error:
            return Readiness(False, f"{self.name}: {st.error}")
        if not st.interlock_ok:
            return Readiness(False, f"{self.name}: interlock open")
        limit = st.device_limit_mA
        if limit is not None and st.current_setpoint_mA > limit:
            return Readiness(
                False,
                f"{self.name}: current_setpoint_mA={st.current_setpoint_mA:g} is above the "
                f"controller's limit {limit:g} mA",
            )
        state = "ON" if st.output_on else "OFF"
        return Readiness(
            True,
            f"{self.name}: ready (interlock closed, output {state}, setpoint "
            f"{st.current_setpoint_mA:g} mA)",
        )

    # ------------------------------------------------------------------------------------

    def _check_current(self, current_mA: float) -> None:
        if not 0.0 <= current_mA <= self.options.max_current_mA:
            raise BeaconCurrentLimit(
                f"current {current_mA:g} mA refused: outside 0..max_current_mA="
                f"{self.options.max_current_mA:g} mA",
                device=self.name,
            )

    async def _device_limit_mA(self) -> float | None:
        try:
            reply = await self._session.query(self.CURRENT_LIMIT_QUERY)
        except ScpiError as exc:
            # Optional: not every controller has it; the safe maximum still applies.
            log.info("%s: controller has no %s (%s)", self.name, self.CURRENT_LIMIT_QUERY, exc)
            return None
        value = self._parse(parse_float, reply, self.CURRENT_LIMIT_QUERY)
        return None if value is None else value * 1000.0

    def _parse(self, parser: Callable[[str], T], reply: str, command: str) -> T:
        try:
            return parser(reply)
        except ValueError:
            raise InstrumentError(
                f"unexpected answer {reply!r} to {command!r}", device=self.name
            ) from None


__all__ = [
    "SIM_RESOURCE", "SIM_RESOURCE_INTERLOCK_OPEN", "SIM_RESOURCE_TEC_FAULT", "SIM_YAML",
    "BeaconCurrentLimit", "BeaconInterlockOpen", "BeaconLaser", "BeaconLaserStatus",
]
