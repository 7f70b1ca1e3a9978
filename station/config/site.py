"""Where the station is: geodetic position, horizon mask, weather for refraction."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from station.config.base import Strict


class SiteConfig(Strict):
    """The telescope's position (WGS84) and local horizon."""

    name: str = Field(description="Human-readable site name, e.g. 'Xinglong (NAOC)'.")
    latitude_deg: float = Field(ge=-90, le=90, description="Geodetic latitude, north positive.")
    longitude_deg: float = Field(ge=-180, le=180, description="Longitude, east positive.")
    height_m: float = Field(ge=-500, le=9000, description="Height above the WGS84 ellipsoid.")
    horizon_mask: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.0, 10.0)],
        description=(
            "Local horizon as [azimuth_deg, min_elevation_deg] points, linearly "
            "interpolated around the circle; one point means a flat horizon."
        ),
    )
    temperature_C: float = Field(10.0, ge=-60, le=60, description="Air temperature for refraction.")
    pressure_mbar: float = Field(
        1013.25, ge=0, le=1100,
        description="Air pressure for refraction; 0 disables the refraction correction.",
    )

    @field_validator("horizon_mask")
    @classmethod
    def _check_mask(cls, mask: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if not mask:
            raise ValueError("the horizon mask needs at least one [azimuth_deg, min_elevation_deg] point")
        for az_deg, el_deg in mask:
            if not 0 <= az_deg < 360:
                raise ValueError(f"azimuth {az_deg}° is outside 0..360°")
            if not -5 <= el_deg <= 90:
                raise ValueError(f"minimum elevation {el_deg}° is outside -5..90°")
        azimuths = [p[0] for p in mask]
        if len(set(azimuths)) != len(azimuths):
            raise ValueError("two horizon-mask points share one azimuth")
        return sorted(mask)

    def horizon_min_el_deg(self, az_deg: float | np.ndarray) -> np.ndarray:
        """Minimum elevation of the horizon mask at ``az_deg`` (vectorised, wraps at 360°)."""
        pts = np.asarray(self.horizon_mask, dtype=float)
        az = np.mod(np.asarray(az_deg, dtype=float), 360.0)
        if len(pts) == 1:
            return np.full_like(az, pts[0, 1])
        xs = np.concatenate([pts[-1:, 0] - 360.0, pts[:, 0], pts[:1, 0] + 360.0])
        ys = np.concatenate([pts[-1:, 1], pts[:, 1], pts[:1, 1]])
        return np.interp(az, xs, ys)
