"""An alt-az telescope through an INDI server, with the pure-Python ``indipyclient``.

INDI telescope drivers (``indi_simulator_telescope`` and most real ones) take targets as
``EQUATORIAL_EOD_COORD`` (RA/Dec of date, "JNow"), not horizontal coordinates, so this
backend converts az/el <-> RA/Dec with the site's latitude/longitude and the local
apparent sidereal time at the Clock's time (:mod:`drivers.mount._sky`).

Properties used (standard INDI telescope interface):

``CONNECTION``              CONNECT on connect() when the device is not yet connected
``GEOGRAPHIC_COORD``        LAT/LONG/ELEV set from options on connect (``set_site``)
``ON_COORD_SET``            SLEW or TRACK (the simulator resumes sidereal tracking after
                            either, so a fixed az/el target drifts by up to 15"/s until the
                            next command; streamed tracking re-commands many times a second)
``EQUATORIAL_EOD_COORD``    target (new) and current position (set, polled by the driver)
``TELESCOPE_PARK``          PARK / UNPARK (a parked mount is unparked before a slew)
``TELESCOPE_ABORT_MOTION``  ABORT for stop()
``TELESCOPE_TRACK_STATE``   read for ``status().tracking``

Time: the device computes its own sidereal time from *its* system clock, so the station
Clock must agree with it (a real clock in operation; in tests, ``RealClock``). On a
simulated clock the conversions are self-consistent but do not match the device's sky.

Link: ``indipyclient`` runs its own receive task and reconnects by itself every 5 s;
while it is down every call raises :class:`MountConnectionLost`. Each command waits, up
to ``io_timeout_s``, for the device's answer; an ``Alert`` answer raises
:class:`MountCommandRejected` with the device's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Literal

import indipyclient
from pydantic import Field

from drivers.clock import Clock
from drivers.mount._common import AxisOptions, check_target
from drivers.mount._sky import (
    equatorial_to_horizontal,
    horizontal_to_equatorial,
    local_sidereal_time_h,
)
from drivers.mount.base import (
    Mount,
    MountCapabilities,
    MountCommandRejected,
    MountConnectionLost,
    MountNotConnected,
    MountPosition,
    MountStatus,
)

log = logging.getLogger(__name__)


class _Client(indipyclient.IPyClient):
    """Counts answers per vector and keeps the device's last message."""

    def __init__(self, host: str, port: int, device: str):
        super().__init__(indihost=host, indiport=port)
        self.device = device
        self.answers: Counter[str] = Counter()
        self.last_message: str | None = None
        self.links_made = 0
        self.links_lost = 0
        self.changed = asyncio.Event()

    async def rxevent(self, event: Any) -> None:
        if isinstance(event, indipyclient.ConnectionMade):
            self.links_made += 1
        elif isinstance(event, indipyclient.ConnectionLost):
            self.links_lost += 1
        elif getattr(event, "devicename", None) == self.device:
            name = getattr(event, "vectorname", None)
            if name:
                self.answers[name] += 1
            message = getattr(event, "message", None)
            if message:
                self.last_message = str(message)
        self.changed.set()


class IndiMount(Mount):
    """A telescope behind ``indiserver``; see the module docstring."""

    class Options(AxisOptions):
        """Options of the INDI backend (``[mount] backend = "indi"``)."""

        host: str = Field("127.0.0.1", description="indiserver host name or address.")
        port: int = Field(7624, ge=1, le=65535, description="indiserver TCP port (INDI default 7624).")
        device: str = Field("Telescope Simulator", description="INDI device name of the mount.")
        latitude_deg: float = Field(0.0, ge=-90, le=90, description="Site latitude, degrees north.")
        longitude_deg: float = Field(
            0.0, ge=-180, le=360, description="Site longitude, degrees east.")
        height_m: float = Field(0.0, description="Site height above the ellipsoid, metres.")
        set_site: bool = Field(
            True, description="Write the site to the device's GEOGRAPHIC_COORD on connect.")
        coord_set_mode: Literal["SLEW", "TRACK"] = Field(
            "SLEW", description="ON_COORD_SET switch used for targets (INDI: SLEW = go there; "
            "TRACK = go there and follow the sky).")
        connect_timeout_s: float = Field(
            10.0, gt=0, description="Deadline to reach the server and learn the device, seconds.")
        io_timeout_s: float = Field(
            5.0, gt=0, description="Deadline for the device's answer to one command, seconds.")
        el_max_deg: float = Field(
            90.0, ge=0, le=90, description="Elevation travel maximum, degrees (no flip over the zenith).")
        az_max_rate_deg_s: float = Field(
            3.0, gt=0, description="Azimuth slew rate, deg/s (INDI simulator GOTO: a few deg/s).")
        el_max_rate_deg_s: float = Field(3.0, gt=0, description="Elevation slew rate, deg/s.")
        park_az_deg: float = Field(
            90.0, description="Azimuth of the device's park position, degrees "
            "(INDI simulator: HA -6 h, Dec 0, i.e. due east on the horizon).")
        park_el_deg: float = Field(
            0.0, description="Elevation of the device's park position, degrees.")
        command_latency_s: float = Field(
            0.3, ge=0, description="Typical delay from command to motion, seconds "
            "(simulator polls every 250 ms).")
        position_resolution_deg: float = Field(
            1.0 / 3600.0, ge=0, description="Resolution of reported positions, degrees.")

    def __init__(self, options: IndiMount.Options, *, clock: Clock, name: str = "mount"):
        self.options = options
        self.clock = clock
        self.name = name
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def capabilities(self) -> MountCapabilities:
        return self.options.capabilities(encoder_resolution_deg=self.options.position_resolution_deg)

    # -- Mount interface -------------------------------------------------------------------
    async def connect(self) -> None:
        await self.close()
        o = self.options
        client = _Client(o.host, o.port, o.device)
        self._client = client
        self._task = asyncio.create_task(client.asyncrun(), name=f"{self.name}-indi-client")
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                await self._wait_for(lambda: "CONNECTION" in self._vectors())
                if self._vectors()["CONNECTION"]["CONNECT"] != "On":
                    await client.send_newVector(o.device, "CONNECTION", timestamp=self.clock.now(),
                                                members={"CONNECT": "On", "DISCONNECT": "Off"})
                await self._wait_for(lambda: "EQUATORIAL_EOD_COORD" in self._vectors()
                                     and "TELESCOPE_PARK" in self._vectors())
        except TimeoutError:
            reason = (f"no INDI device {o.device!r} connected at {o.host}:{o.port} "
                      f"within {o.connect_timeout_s} s")
            if not client.links_made:
                reason = f"cannot reach indiserver at {o.host}:{o.port} within {o.connect_timeout_s} s"
            await self.close()
            raise MountConnectionLost(reason, device=self.name) from None
        if o.set_site and "GEOGRAPHIC_COORD" in self._vectors():
            await self._send("GEOGRAPHIC_COORD", {"LAT": o.latitude_deg,
                                                  "LONG": o.longitude_deg % 360.0,
                                                  "ELEV": o.height_m})
        log.info("%s: connected to INDI device %r at %s:%d", self.name, o.device, o.host, o.port)

    async def close(self) -> None:
        client, task = self._client, self._task
        self._client = self._task = None
        if client is None or task is None:
            return
        client.shutdown()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if not done:
            # indipyclient's receive loop only looks at its stop flag when data arrives.
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def position(self) -> MountPosition:
        vectors = await self._live()
        coord = vectors["EQUATORIAL_EOD_COORD"]
        try:
            ra_h = float(coord.getfloatvalue("RA"))
            dec_deg = float(coord.getfloatvalue("DEC"))
        except (KeyError, TypeError, ValueError) as exc:
            raise MountCommandRejected(f"unreadable EQUATORIAL_EOD_COORD: {exc}",
                                       device=self.name) from None
        t = self.clock.now_s()
        az, el = equatorial_to_horizontal(
            ra_h, dec_deg, latitude_deg=self.options.latitude_deg,
            lst_h=local_sidereal_time_h(t, self.options.longitude_deg))
        return MountPosition(az, el, t)

    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        check_target(self.capabilities, az_deg, el_deg, device=self.name)
        vectors = await self._live()
        if vectors["TELESCOPE_PARK"]["PARK"] == "On":
            await self._send("TELESCOPE_PARK", {"PARK": "Off", "UNPARK": "On"})
        mode = self.options.coord_set_mode
        if vectors["ON_COORD_SET"][mode] != "On":
            await self._send("ON_COORD_SET", {m: ("On" if m == mode else "Off")
                                              for m in ("TRACK", "SLEW", "SYNC")})
        t = self.clock.now_s()
        ra_h, dec_deg = horizontal_to_equatorial(
            az_deg % 360.0, el_deg, latitude_deg=self.options.latitude_deg,
            lst_h=local_sidereal_time_h(t, self.options.longitude_deg))
        await self._send("EQUATORIAL_EOD_COORD", {"RA": ra_h, "DEC": dec_deg})

    async def stop(self) -> None:
        await self._live()
        await self._send("TELESCOPE_ABORT_MOTION", {"ABORT": "On"})

    async def park(self) -> None:
        await self._live()
        await self._send("TELESCOPE_PARK", {"PARK": "On", "UNPARK": "Off"})

    async def status(self) -> MountStatus:
        try:
            vectors = await self._live()
        except MountNotConnected:
            return MountStatus(False, False, False, False, None)
        except MountConnectionLost as exc:
            return MountStatus(False, False, False, False, str(exc))
        coord, park = vectors["EQUATORIAL_EOD_COORD"], vectors["TELESCOPE_PARK"]
        track = vectors.get("TELESCOPE_TRACK_STATE")
        moving = coord.state == "Busy" or park.state == "Busy"
        parked = park["PARK"] == "On" and park.state != "Busy"
        tracking = track is not None and track["TRACK_ON"] == "On"
        fault = None
        if coord.state == "Alert" or park.state == "Alert":
            fault = self._device_words(coord if coord.state == "Alert" else park)
        return MountStatus(True, moving, tracking, parked, fault)

    # -- internals -----------------------------------------------------------------------------
    def _vectors(self) -> Any:
        client = self._client
        if client is None:
            return {}
        device = client.get(self.options.device)
        return device if device is not None else {}

    async def _live(self) -> Any:
        """The device's property vectors, when the link and the device are up."""
        client = self._client
        if client is None:
            raise MountNotConnected("not connected; call connect() first", device=self.name)
        reader = getattr(client, "_reader", None)
        if reader is not None and reader.at_eof():
            # indipyclient 0.9.4 keeps polling a socket the server has closed instead of
            # dropping it; drop it on its behalf so its own 5 s reconnect loop starts.
            await client._clear_connection()
        vectors = self._vectors()
        if not client.connected or "EQUATORIAL_EOD_COORD" not in vectors:
            raise MountConnectionLost(
                f"INDI link to {self.options.host}:{self.options.port} is down "
                f"(indipyclient retries every 5 s)", device=self.name)
        return vectors

    async def _wait_for(self, predicate: Any) -> None:
        client = self._client
        assert client is not None
        while not predicate():
            client.changed.clear()
            if predicate():
                return
            await client.changed.wait()

    def _device_words(self, vector: Any) -> str:
        client = self._client
        message = getattr(vector, "message", None) or (client.last_message if client else None)
        return f"{vector.name} is in Alert" + (f": {message}" if message else "")

    async def _send(self, vector_name: str, members: dict[str, Any]) -> None:
        """Send a new value and wait for the device's answer; Alert raises."""
        client = self._client
        assert client is not None
        before = client.answers[vector_name]
        await client.send_newVector(self.options.device, vector_name,
                                    timestamp=self.clock.now(), members=members)
        try:
            async with asyncio.timeout(self.options.io_timeout_s):
                await self._wait_for(lambda: client.answers[vector_name] > before
                                     or not client.connected)
        except TimeoutError:
            raise MountConnectionLost(
                f"no answer to {vector_name} within {self.options.io_timeout_s} s",
                device=self.name) from None
        if not client.connected:
            raise MountConnectionLost(f"INDI link lost while sending {vector_name}",
                                      device=self.name)
        vector = self._vectors().get(vector_name)
        if vector is not None and vector.state == "Alert":
            words = self._device_words(vector)
            raise MountCommandRejected(f"device refused {vector_name}: {words}",
                                       device=self.name, device_message=words)
