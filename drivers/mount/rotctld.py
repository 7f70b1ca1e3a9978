"""Hamlib ``rotctld`` over TCP: reaches every rotator and gimbal controller Hamlib supports.

Protocol subset (rotctld's default, non-extended line protocol; one request, one reply)::

    P <az> <el>\\n   ->  RPRT 0\\n            set position
    p\\n             ->  <az>\\n<el>\\n         get position (or RPRT -N\\n)
    S\\n             ->  RPRT 0\\n            stop
    K\\n             ->  RPRT 0\\n            park
    _\\n             ->  <model info>\\n      get info
    \\dump_caps\\n   ->  many lines, RPRT 0\\n  travel limits ("Min Azimuth:" ...)

``RPRT -N`` carries Hamlib's error code; it becomes a typed error whose
``device_message`` holds the code and Hamlib's own words for it. A target outside the
rotator's limits comes back as ``-1`` (invalid parameter; Hamlib <= 4.5) or ``-21``
(limit exceeded; Hamlib >= 4.6): both raise :class:`MountLimitError`.

Link handling: every exchange runs under ``io_timeout_s``; a timeout, reset or EOF drops
the TCP connection, the call raises :class:`MountConnectionLost`, and the next call
reconnects, no sooner than a capped exponential backoff allows (the backoff is I/O
pacing on the event loop's monotonic clock, not domain time). There is no background
task: the station's control loop, polling at its rate, drives reconnection.
"""

from __future__ import annotations

import asyncio
import logging
import math

from pydantic import Field

from drivers.clock import Clock
from drivers.mount._common import AxisOptions, check_target
from drivers.mount._link import LinkState, StreamLink
from drivers.mount.base import (
    Mount,
    MountCapabilities,
    MountCommandRejected,
    MountConnectionLost,
    MountLimitError,
    MountPosition,
)

log = logging.getLogger(__name__)

#: Hamlib's rigerror() table (src/rig.c), code -> words.
HAMLIB_ERRORS: dict[int, str] = {
    0: "Command completed successfully",
    1: "Invalid parameter",
    2: "Invalid configuration",
    3: "Memory shortage",
    4: "Feature not implemented",
    5: "Communication timed out",
    6: "IO error",
    7: "Internal Hamlib error",
    8: "Protocol error",
    9: "Command rejected by the rig",
    10: "Command performed, but arg truncated, result not guaranteed",
    11: "Feature not available",
    12: "Target VFO unaccessible",
    13: "Communication bus error",
    14: "Communication bus collision",
    15: "NULL RIG handle or invalid pointer parameter",
    16: "Invalid VFO",
    17: "Argument out of domain of func",
    18: "Function deprecated",
    19: "Security error password not provided or crypto failure",
    20: "Rig is not powered on",
    21: "Limit exceeded",
    22: "Access denied",
}
#: Codes meaning rotctld cannot reach the rotator itself (its serial line, power).
_LINK_CODES = {5, 6, 13, 14, 20}
#: Codes a set-position returns for a target outside the rotator's limits.
_LIMIT_CODES = {1, 17, 21}


class RotctldMount(StreamLink, Mount):
    """A rotator behind Hamlib's ``rotctld``; see the module docstring."""

    class Options(AxisOptions):
        """Options of the rotctld backend (``[mount] backend = "rotctld"``)."""

        host: str = Field("127.0.0.1", description="rotctld host name or address.")
        port: int = Field(4533, ge=1, le=65535, description="rotctld TCP port (Hamlib default 4533).")
        connect_timeout_s: float = Field(3.0, gt=0, description="TCP connect timeout, seconds.")
        io_timeout_s: float = Field(
            2.0, gt=0, description="Deadline for one request and its whole reply, seconds."
        )
        reconnect_initial_s: float = Field(
            0.5, gt=0, description="First reconnect backoff after a lost link, seconds."
        )
        reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect backoff cap, seconds.")
        # None: the travel rotctld reports in dump_caps (read on connect).
        az_min_deg: float | None = Field(  # type: ignore[assignment]
            None, description="Azimuth travel minimum, degrees; default: rotctld's dump_caps.")
        az_max_deg: float | None = Field(  # type: ignore[assignment]
            None, description="Azimuth travel maximum, degrees; default: rotctld's dump_caps.")
        el_min_deg: float | None = Field(  # type: ignore[assignment]
            None, description="Elevation travel minimum, degrees; default: rotctld's dump_caps.")
        el_max_deg: float | None = Field(  # type: ignore[assignment]
            None, description="Elevation travel maximum, degrees; default: rotctld's dump_caps.")
        az_max_rate_deg_s: float = Field(
            6.0, gt=0, description="Azimuth slew rate, deg/s (Hamlib's dummy rotator: 6).")
        el_max_rate_deg_s: float = Field(
            6.0, gt=0, description="Elevation slew rate, deg/s (Hamlib's dummy rotator: 6).")
        az_max_accel_deg_s2: float = Field(
            60.0, gt=0, description="Azimuth acceleration, deg/s² (rotators: near-instant).")
        el_max_accel_deg_s2: float = Field(
            60.0, gt=0, description="Elevation acceleration, deg/s² (rotators: near-instant).")
        park_az_deg: float = Field(
            0.0, description="Azimuth the rotator parks at on 'K', degrees (dummy: 0).")
        park_el_deg: float = Field(
            0.0, description="Elevation the rotator parks at on 'K', degrees (dummy: 0).")
        position_resolution_deg: float = Field(
            0.01, ge=0, description="Resolution of reported positions, degrees (rotctld prints 2 decimals).")
        arrived_tolerance_deg: float = Field(
            0.1, gt=0, description="Within this of the target the rotator counts as arrived, degrees.")

    def __init__(self, options: RotctldMount.Options, *, clock: Clock, name: str = "mount"):
        self.options = options
        self.clock = clock
        self.name = name
        self._init_link()
        self.model_info: str | None = None
        self._device_limits: dict[str, float] = {}
        self._target: tuple[float, float] | None = None
        self._parking = False
        self._last_pos: MountPosition | None = None

    # -- capabilities --------------------------------------------------------------------
    @property
    def capabilities(self) -> MountCapabilities:
        """Limits from options, else from rotctld's ``dump_caps`` (read on connect)."""
        o, dev = self.options, self._device_limits

        def pick(opt: float | None, key: str, fallback: float) -> float:
            return opt if opt is not None else dev.get(key, fallback)

        return o.capabilities(
            encoder_resolution_deg=o.position_resolution_deg,
            az_range_deg=(pick(o.az_min_deg, "az_min", 0.0), pick(o.az_max_deg, "az_max", 360.0)),
            el_range_deg=(pick(o.el_min_deg, "el_min", 0.0), pick(o.el_max_deg, "el_max", 90.0)),
        )

    # -- Mount interface -------------------------------------------------------------------
    async def connect(self) -> None:
        async with self._lock:
            await self._drop()
            await self._open()
            self.model_info = (await self._exchange("_", lines=1))[0]
            caps_lines = await self._exchange("\\dump_caps", until_rprt=True)
            self._device_limits = _parse_limits(caps_lines)
        log.info("%s: connected to rotctld %s:%d (%s), limits %s", self.name, self.options.host,
                 self.options.port, self.model_info, self._device_limits)

    async def close(self) -> None:
        self.state = LinkState.CLOSED
        await self._drop()

    async def position(self) -> MountPosition:
        async with self._lock:
            await self._ensure_link()
            lines = await self._exchange("p", lines=2)
        try:
            az, el = float(lines[0]), float(lines[1])
        except ValueError:
            raise MountCommandRejected(
                f"rotctld sent {lines!r} for 'p', expected two numbers", device=self.name,
                device_message="\n".join(lines)) from None
        pos = MountPosition(az, el, self.clock.now_s())
        self._last_pos = pos
        return pos

    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        check_target(self.capabilities, az_deg, el_deg, device=self.name)
        async with self._lock:
            await self._ensure_link()
            await self._command(f"P {az_deg:.4f} {el_deg:.4f}", set_position=True)
        self._target, self._parking = (az_deg, el_deg), False

    async def stop(self) -> None:
        async with self._lock:
            await self._ensure_link()
            await self._command("S")
        self._target, self._parking = None, False

    async def park(self) -> None:
        async with self._lock:
            await self._ensure_link()
            await self._command("K")
        self._target = (self.options.park_az_deg, self.options.park_el_deg)
        self._parking = True

    # -- link (see drivers.mount._link) ------------------------------------------------------
    @property
    def _open_timeout_s(self) -> float:
        return self.options.connect_timeout_s

    async def _open_streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.options.host, self.options.port)

    def _open_failure(self, exc: BaseException) -> str:
        o = self.options
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return f"cannot connect to rotctld at {o.host}:{o.port}: {what}"

    def _reopened(self) -> None:
        log.info("%s: reconnected to rotctld (%d lost link(s) so far)", self.name, self.links_lost)

    async def _exchange(self, request: str, *, lines: int = 0,
                        until_rprt: bool = False) -> list[str]:
        """Send one request; read ``lines`` reply lines, or up to an ``RPRT`` line.

        A reply starting with ``RPRT -N`` where data was expected raises the typed error.
        """
        assert self._reader is not None and self._writer is not None
        reply: list[str] = []
        try:
            async with asyncio.timeout(self.options.io_timeout_s):
                self._writer.write(request.encode("ascii") + b"\n")
                await self._writer.drain()
                while True:
                    raw = await self._reader.readline()
                    if not raw.endswith(b"\n"):
                        raise EOFError
                    line = raw.decode("ascii", errors="replace").rstrip("\r\n")
                    if line.startswith("RPRT "):
                        code = _rprt_code(line)
                        if code != 0:
                            raise _rprt_error(code, request, line, self.name)
                        if until_rprt or lines == 0:
                            return reply
                        raise MountCommandRejected(
                            f"rotctld answered {line!r} to {request!r} where data was expected",
                            device=self.name, device_message=line)
                    reply.append(line)
                    if not until_rprt and lines and len(reply) == lines:
                        return reply
        except asyncio.CancelledError:
            # The caller gave up mid-exchange: the reply may still arrive and would be
            # read as the answer to the next request. Start over on a fresh connection.
            self._abandon()
            raise
        except TimeoutError:
            raise await self._lose(
                f"no complete reply to {request!r} within {self.options.io_timeout_s} s") from None
        except (OSError, EOFError) as exc:
            raise await self._lose(
                f"rotctld link failed during {request!r}: {exc or 'connection closed'}") from None

    async def _command(self, request: str, *, set_position: bool = False) -> None:
        try:
            await self._exchange(request)
        except MountLimitError:
            raise
        except MountCommandRejected as exc:
            if set_position and exc.device_message and _rprt_code(exc.device_message) in _LIMIT_CODES:
                raise MountLimitError(str(exc).removeprefix(f"{self.name}: "), device=self.name,
                                      device_message=exc.device_message) from None
            raise


def _rprt_code(line: str) -> int:
    try:
        return abs(int(line.split()[1]))
    except (IndexError, ValueError):
        return -1


def _rprt_error(code: int, request: str, line: str, device: str) -> Exception:
    words = HAMLIB_ERRORS.get(code, "unknown Hamlib error")
    message = f"rotctld refused {request!r}: {line} ({words})"
    if code in _LINK_CODES:
        return MountConnectionLost(f"rotctld cannot reach the rotator: {line} ({words})",
                                   device=device, device_message=line)
    if code == 21:
        return MountLimitError(message, device=device, device_message=line)
    return MountCommandRejected(message, device=device, device_message=line)


def _parse_limits(lines: list[str]) -> dict[str, float]:
    """Travel limits from ``dump_caps`` ("Min Azimuth:\\t\\t-180.00" ...)."""
    keys = {"Min Azimuth": "az_min", "Max Azimuth": "az_max",
            "Min Elevation": "el_min", "Max Elevation": "el_max"}
    out: dict[str, float] = {}
    for line in lines:
        label, sep, value = line.partition(":")
        if sep and label.strip() in keys:
            try:
                number = float(value.strip())
            except ValueError:
                continue
            if math.isfinite(number):
                out[keys[label.strip()]] = number
    return out
