"""Yaesu GS-232B az/el rotator controller over a serial line (pyserial-asyncio-fast).

Protocol subset (ASCII, every command ends with CR)::

    C2\\r          ->  AZ=aaa  EL=eee\\r\\n   position, whole degrees, zero-padded
    Waaa eee\\r    ->  (ack)               go to azimuth aaa, elevation eee (whole degrees)
    S\\r           ->  (ack)               stop both axes
    A\\r / E\\r     ->  (ack)               stop azimuth / elevation only
    anything bad  ->  ?>\\r\\n              the controller's "invalid command" prompt

Units differ on the acknowledgement of set commands: the GS-232B and most emulations
(k3ng) answer CR LF, Hamlib's driver assumes no answer. With ``ack_set_commands`` (the
default) the driver reads one reply line after ``W``/``S``/``A``/``E`` and so detects a
``?>`` refusal; without it, it does not wait, and skips blank lines before a ``C2`` reply.

Azimuth is the controller's own 0..450° frame (its 450° mode, "P45"): the wrap-aware
azimuth the station uses is that frame, with no negative values. Positions are whole degrees, so this backend is
for coarse pointing (``encoder_resolution_deg`` = 1). The GS-232B has no park command:
``park()`` is a ``W`` to the configured park position.

Link handling: every exchange runs under ``io_timeout_s``; a timeout or I/O error closes
the port, the call raises :class:`MountConnectionLost`, and the next call reopens it no
sooner than a capped exponential backoff allows (I/O pacing on the event loop's
monotonic clock).
"""

from __future__ import annotations

import asyncio
import logging
import re

import serial
import serial_asyncio_fast
from pydantic import Field

from drivers.clock import Clock
from drivers.mount._common import AxisOptions, check_target
from drivers.mount._link import LinkState, StreamLink
from drivers.mount.base import (
    Mount,
    MountCapabilities,
    MountCommandRejected,
    MountPosition,
)

log = logging.getLogger(__name__)

_POSITION = re.compile(r"AZ=\s*(-?\d+)\s+EL=\s*(-?\d+)")


class Gs232Mount(StreamLink, Mount):
    """A GS-232B controller on a serial port; see the module docstring."""

    class Options(AxisOptions):
        """Options of the GS-232B backend (``[mount] backend = "gs232"``)."""

        port: str = Field(
            "/dev/ttyUSB0", description="Serial device path or pyserial URL (e.g. rfc2217://host:port).")
        baudrate: int = Field(9600, description="Serial baud rate (GS-232B: 1200..9600), bit/s.")
        io_timeout_s: float = Field(
            1.0, gt=0, description="Deadline for one command and its reply, seconds.")
        ack_set_commands: bool = Field(
            True, description="The controller answers W/S/A/E with a line (GS-232B, k3ng); "
            "false for units that stay silent.")
        reconnect_initial_s: float = Field(
            0.5, gt=0, description="First reopen backoff after a failed port, seconds.")
        reconnect_max_s: float = Field(30.0, gt=0, description="Reopen backoff cap, seconds.")
        az_min_deg: float = Field(
            0.0, ge=0, le=450, description="Azimuth travel minimum, degrees (the controller "
            "counts 0..450, so wrap-aware azimuths are given in that frame).")
        az_max_deg: float = Field(
            450.0, ge=0, le=450, description="Azimuth travel maximum, degrees (450° mode).")
        el_min_deg: float = Field(0.0, ge=0, le=180, description="Elevation travel minimum, degrees.")
        el_max_deg: float = Field(
            90.0, ge=0, le=180,
            description="Elevation travel maximum, degrees (180 on G-5500 class rotators).")
        az_max_rate_deg_s: float = Field(
            6.0, gt=0, description="Azimuth rate, deg/s (G-5500: about 6).")
        el_max_rate_deg_s: float = Field(
            2.5, gt=0, description="Elevation rate, deg/s (G-5500: about 2.5).")
        az_max_accel_deg_s2: float = Field(
            20.0, gt=0, description="Azimuth acceleration, deg/s² (rotators: near-instant).")
        el_max_accel_deg_s2: float = Field(
            20.0, gt=0, description="Elevation acceleration, deg/s² (rotators: near-instant).")
        park_az_deg: float = Field(0.0, description="Park azimuth (sent as a W command), degrees.")
        park_el_deg: float = Field(90.0, description="Park elevation (sent as a W command), degrees.")
        arrived_tolerance_deg: float = Field(
            1.0, gt=0, description="Within this of the target the rotator counts as arrived, degrees.")

    def __init__(self, options: Gs232Mount.Options, *, clock: Clock, name: str = "mount"):
        self.options = options
        self.clock = clock
        self.name = name
        self._init_link()
        self._target: tuple[int, int] | None = None
        self._parking = False
        self._last_pos: MountPosition | None = None

    @property
    def capabilities(self) -> MountCapabilities:
        # GS-232 reports whole degrees.
        return self.options.capabilities(encoder_resolution_deg=1.0)

    # -- Mount interface -------------------------------------------------------------------
    async def connect(self) -> None:
        async with self._lock:
            await self._drop()
            await self._open()
            # A first position read proves something GS-232-shaped is on the line.
            await self._read_position()

    async def close(self) -> None:
        self.state = LinkState.CLOSED
        await self._drop()

    async def position(self) -> MountPosition:
        async with self._lock:
            await self._ensure_link()
            return await self._read_position()

    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        check_target(self.capabilities, az_deg, el_deg, device=self.name)
        az_cmd = round(az_deg)
        el_cmd = round(el_deg)
        async with self._lock:
            await self._ensure_link()
            await self._set(f"W{az_cmd:03d} {el_cmd:03d}")
        self._target, self._parking = (az_cmd, el_cmd), False

    async def stop(self) -> None:
        async with self._lock:
            await self._ensure_link()
            await self._set("S")
        self._target, self._parking = None, False

    async def park(self) -> None:
        o = self.options
        await self.slew_to(o.park_az_deg, o.park_el_deg)
        self._parking = True

    # -- protocol --------------------------------------------------------------------------------
    async def _read_position(self) -> MountPosition:
        line = await self._exchange("C2", want_position=True)
        match = _POSITION.search(line)
        if match is None:
            raise MountCommandRejected(f"GS-232 answered {line!r} to 'C2', expected 'AZ=aaa  EL=eee'",
                                       device=self.name, device_message=line)
        pos = MountPosition(float(match.group(1)), float(match.group(2)), self.clock.now_s())
        self._last_pos = pos
        return pos

    async def _set(self, command: str) -> None:
        await self._exchange(command, want_position=False)

    async def _exchange(self, command: str, *, want_position: bool) -> str:
        """Send ``command`` + CR; return the reply line (blank if none is expected)."""
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        try:
            async with asyncio.timeout(self.options.io_timeout_s):
                writer.write(command.encode("ascii") + b"\r")
                await writer.drain()
                if not want_position and not self.options.ack_set_commands:
                    return ""
                while True:
                    raw = await reader.readuntil(b"\n")
                    line = raw.decode("ascii", errors="replace").strip()
                    if line.startswith("?>"):
                        raise MountCommandRejected(
                            f"GS-232 refused {command!r}: {line!r} (invalid command)",
                            device=self.name, device_message=line)
                    if want_position and not line:
                        continue  # a stray acknowledgement of an earlier set command
                    return line
        except asyncio.CancelledError:
            # The caller gave up mid-exchange: a late reply would be taken for the answer
            # to the next command. Reopen the port on the next call.
            self._abandon()
            raise
        except TimeoutError:
            raise await self._lose(
                f"no reply to {command!r} within {self.options.io_timeout_s} s") from None
        except (OSError, serial.SerialException, asyncio.IncompleteReadError) as exc:
            raise await self._lose(f"serial link failed during {command!r}: {exc}") from None

    # -- link (see drivers.mount._link) ------------------------------------------------------
    _open_errors = (OSError, serial.SerialException, ValueError)
    _drop_errors = (OSError, serial.SerialException, TimeoutError)
    _retry_word = "reopen"

    @property
    def _open_timeout_s(self) -> float:
        return self.options.io_timeout_s * 2

    async def _open_streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        o = self.options
        return await serial_asyncio_fast.open_serial_connection(
            url=o.port, baudrate=o.baudrate, bytesize=8, parity="N", stopbits=1)

    def _open_failure(self, exc: BaseException) -> str:
        return f"cannot open serial port {self.options.port!r}: {exc or 'timed out'}"

    def _reopened(self) -> None:
        log.warning("%s: serial port %s reopened", self.name, self.options.port)
