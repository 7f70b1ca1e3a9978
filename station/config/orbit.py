"""Orbital elements and pass-planning constraints. (Owned by the orbit/schedule work.)"""

from __future__ import annotations

from pydantic import Field

from station.config.base import ConfigPath, Strict


class SatelliteConfig(Strict):
    """One satellite the station may take passes of."""

    norad_id: int = Field(ge=1, le=999_999_999, description="NORAD catalog number.")
    name: str | None = Field(None, description="Display name; default from the element set.")
    priority: float = Field(1.0, gt=0, description="Weight of this satellite's QKD time.")


class OrbitConfig(Strict):
    """Where element sets come from and how old they may be."""

    element_sources: list[ConfigPath] = Field(
        default_factory=list, description="TLE/3LE/OMM files or directories of them."
    )
    max_element_age_days: float = Field(3.0, gt=0, description="Warn when elements are older.")
    satellites: list[SatelliteConfig] = Field(default_factory=list)


class ScheduleConfig(Strict):
    """Constraints that decide which passes are taken."""

    lead_time_s: float = Field(120.0, ge=0, description="Prepare this long before AOS.")
    post_time_s: float = Field(60.0, ge=0, description="Time after LOS kept free (park, files).")
