"""Mount backend, safety limits and tracking settings. (Owned by the mount/tracking work.)"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from station.config.base import BackendConfig, Strict


class MountConfig(BackendConfig):
    """The telescope mount, chosen by backend name."""

    kind: ClassVar[str] = "mount"
    park_az_deg: float = Field(0.0, description="Park position azimuth.")
    park_el_deg: float = Field(90.0, ge=0, le=90, description="Park position elevation.")


class SafetyConfig(Strict):
    """The one safety gate's limits."""

    min_el_deg: float = Field(0.0, ge=-5, le=90)
    sun_exclusion_deg: float = Field(30.0, ge=0, le=180)


class TrackingConfig(Strict):
    """The tracking control loop."""

    rate_hz: float = Field(20.0, gt=0, le=200)
