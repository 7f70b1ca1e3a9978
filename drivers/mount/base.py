"""The mount interface every backend implements, and its data types.

Angles are degrees, times are clock seconds since the Unix epoch (UTC). Azimuth is
measured from north through east. A backend's azimuth may exceed 0..360 when the mount
has a cable wrap: ``-90`` and ``270`` are the same direction on different wrap turns, and
the backend reports and accepts the *wrap-aware* value.

The station never calls a backend directly: it goes through the safety gate in
``station.tracking``, which holds the only reference to the backend instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from drivers.errors import CommandRejected, ConnectionLost, DriverError, LimitError, NotConnected


class MountError(DriverError):
    """Any mount failure."""


class MountConnectionLost(MountError, ConnectionLost):
    """The link to the mount controller is down."""


class MountCommandRejected(MountError, CommandRejected):
    """The controller refused a command; ``device_message`` has its words."""


class MountLimitError(MountCommandRejected, LimitError):
    """The controller refused a target outside its limits."""


class MountNotConnected(MountError, NotConnected):
    """Used before ``connect()`` or after ``close()``."""


@dataclass(frozen=True, slots=True)
class AxisLimits:
    """One axis: travel range, and the dynamics the controller can do."""

    min_deg: float
    max_deg: float
    max_rate_deg_s: float
    max_accel_deg_s2: float


@dataclass(frozen=True, slots=True)
class MountCapabilities:
    """What the mount can do; the tracking planner and the safety gate read this."""

    az: AxisLimits
    el: AxisLimits
    #: True when elevation may go past 90° (a flip through the zenith).
    el_over_zenith: bool = False
    #: True when the device takes a whole timed trajectory (program track).
    program_track: bool = False
    #: Typical delay between sending a command and the axes acting on it.
    command_latency_s: float = 0.0
    #: Angular resolution of position reports.
    encoder_resolution_deg: float = 0.0
    park_az_deg: float = 0.0
    park_el_deg: float = 90.0


@dataclass(frozen=True, slots=True)
class MountPosition:
    """Where the mount is, at clock time ``time_s``."""

    az_deg: float
    el_deg: float
    time_s: float


@dataclass(frozen=True, slots=True)
class MountStatus:
    connected: bool
    moving: bool
    tracking: bool
    parked: bool
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class TrackPoint:
    """A timed target: be at (az, el) at clock time ``time_s``."""

    time_s: float
    az_deg: float
    el_deg: float


class Mount(ABC):
    """A two-axis (az/el) telescope mount or rotator.

    Backends define a nested pydantic ``Options`` model (validated from config) and take
    ``(options, *, clock, name="mount")`` in their constructor.
    """

    Options: type[BaseModel]

    name: str = "mount"

    @property
    @abstractmethod
    def capabilities(self) -> MountCapabilities: ...

    @abstractmethod
    async def connect(self) -> None:
        """Open the link. Raises :class:`MountConnectionLost` when the device is unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link. Safe to call twice. Does not move the mount."""

    @abstractmethod
    async def position(self) -> MountPosition:
        """Read the actual axis positions."""

    @abstractmethod
    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        """Command a move to (az, el) and return once the controller accepted it.

        Returns before the move completes; poll :meth:`position` / :meth:`status`.
        Calling it again while moving re-targets the move (that is how streamed
        tracking works on controllers without program track).
        """

    async def load_track(self, points: Sequence[TrackPoint]) -> None:
        """Upload a timed trajectory (program track). Only when ``capabilities.program_track``."""
        raise MountCommandRejected("program track is not supported", device=self.name)

    @abstractmethod
    async def stop(self) -> None:
        """Stop both axes where they are."""

    @abstractmethod
    async def park(self) -> None:
        """Command the park position; returns once accepted."""

    @abstractmethod
    async def status(self) -> MountStatus: ...
