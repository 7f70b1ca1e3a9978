"""Pieces the mount backends share: strict options, the axis-limits options and the
capabilities built from them, limit checks, backoff."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from drivers.mount.base import AxisLimits, MountCapabilities, MountLimitError


class MountOptions(BaseModel):
    """Base of every backend's ``Options``: unknown keys are errors, defaults validated.

    (``drivers/`` may not import ``station.config.base.Strict``; this is its twin.)
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class AxisOptions(MountOptions):
    """The options every mount has: each axis's travel, rate and acceleration, the park
    position and the command latency.

    A backend's ``Options`` subclasses this and redeclares only the fields whose default
    (or whose description, e.g. the value of the device it is tested against) is its
    own; :meth:`capabilities` turns them into :class:`MountCapabilities`.
    """

    az_min_deg: float = Field(0.0, description="Azimuth travel minimum, degrees.")
    az_max_deg: float = Field(360.0, description="Azimuth travel maximum, degrees.")
    el_min_deg: float = Field(0.0, ge=-90, le=90, description="Elevation travel minimum, degrees.")
    el_max_deg: float = Field(
        90.0, ge=0, le=180,
        description="Elevation travel maximum, degrees; above 90 allows a flip over the zenith.",
    )
    az_max_rate_deg_s: float = Field(6.0, gt=0, description="Azimuth maximum rate, deg/s.")
    el_max_rate_deg_s: float = Field(6.0, gt=0, description="Elevation maximum rate, deg/s.")
    az_max_accel_deg_s2: float = Field(10.0, gt=0, description="Azimuth maximum acceleration, deg/s².")
    el_max_accel_deg_s2: float = Field(10.0, gt=0, description="Elevation maximum acceleration, deg/s².")
    park_az_deg: float = Field(0.0, description="Park position azimuth, degrees.")
    park_el_deg: float = Field(90.0, description="Park position elevation, degrees.")
    command_latency_s: float = Field(
        0.1, ge=0, description="Typical delay from command to motion, seconds.")

    def capabilities(
        self, *, encoder_resolution_deg: float, program_track: bool = False,
        az_range_deg: tuple[float, float] | None = None,
        el_range_deg: tuple[float, float] | None = None,
    ) -> MountCapabilities:
        """What a mount with these options can do. ``az_range_deg``/``el_range_deg``
        replace the travel options (a backend that reads its travel from the device)."""
        az_min, az_max = az_range_deg or (self.az_min_deg, self.az_max_deg)
        el_min, el_max = el_range_deg or (self.el_min_deg, self.el_max_deg)
        return MountCapabilities(
            az=AxisLimits(az_min, az_max, self.az_max_rate_deg_s, self.az_max_accel_deg_s2),
            el=AxisLimits(el_min, el_max, self.el_max_rate_deg_s, self.el_max_accel_deg_s2),
            el_over_zenith=el_max > 90.0,
            program_track=program_track,
            command_latency_s=self.command_latency_s,
            encoder_resolution_deg=encoder_resolution_deg,
            park_az_deg=self.park_az_deg,
            park_el_deg=self.park_el_deg,
        )


def check_target(
    caps: MountCapabilities, az_deg: float, el_deg: float, *, device: str, what: str = ""
) -> None:
    """Raise :class:`MountLimitError` for a target outside the capabilities' travel."""
    for axis, value, lim in (("azimuth", az_deg, caps.az), ("elevation", el_deg, caps.el)):
        if not math.isfinite(value):
            raise MountLimitError(f"{what}{axis} target {value!r} is not a finite number",
                                  device=device)
        if not lim.min_deg <= value <= lim.max_deg:
            raise MountLimitError(
                f"{what}{axis} target {value:.4f}° is outside the mount's travel "
                f"{lim.min_deg:g}…{lim.max_deg:g}°",
                device=device,
            )


def backoff_s(attempt: int, *, initial_s: float, max_s: float) -> float:
    """Capped exponential backoff: ``initial_s * 2**attempt``, at most ``max_s``."""
    return min(max_s, initial_s * (2.0 ** min(attempt, 30)))
