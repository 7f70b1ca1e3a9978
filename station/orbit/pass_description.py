"""Detailed description of one pass found by :func:`station.orbit.pass_search.find_passes`.

:func:`describe_pass` is for the few passes worth showing. With skyfield's full
reference frames: the track at 1 s, minimum range, the QKD window (above the QKD
minimum elevation and, optionally, below a maximum range), the Sun's and Moon's
positions and their smallest separation from the line of sight, whether the satellite
is sunlit. The result is a :class:`PassInfo` (what is published and scheduled) and a
:class:`PassTrack` (the samples, for plots and constraint checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from pydantic import AwareDatetime, BaseModel, Field, computed_field, field_serializer

from station.orbit.elements import ElementFormat, ElementSet, satellite_from_text
from station.orbit.geometry import (
    angular_separation_deg,
    load_ephemeris,
    look_angles,
    moon_altaz,
    moon_illumination,
    sun_altaz,
    times_from_epoch_s,
)
from station.orbit.pass_search import PassEvent
from station.utc import at_ms, iso_z_or_none

if TYPE_CHECKING:
    from skyfield.api import EarthSatellite

    from station.config.site import SiteConfig


__all__ = ["PassInfo", "PassTrack", "describe_pass"]

class PassInfo(BaseModel):
    """Everything the station knows about one pass (times UTC; ISO 8601 with Z in JSON)."""

    pass_id: str = Field(description="<norad>-<AOS YYYYmmddTHHMMSSZ>; stable for the same elements.")
    satellite: str = Field(description="Satellite name.")
    norad_id: int = Field(description="NORAD catalog number.")
    aos: AwareDatetime = Field(description="Rise above the horizon mask.")
    tca: AwareDatetime = Field(description="Culmination (highest elevation).")
    los: AwareDatetime = Field(description="Set below the horizon mask.")
    max_el_deg: float = Field(description="Highest elevation (geometric).")
    aos_az_deg: float = Field(description="Azimuth at AOS.")
    tca_az_deg: float = Field(description="Azimuth at culmination.")
    los_az_deg: float = Field(description="Azimuth at LOS.")
    min_range_km: float = Field(description="Smallest slant range during the pass.")
    qkd_start: AwareDatetime | None = Field(description="Start of the QKD window (None: no window).")
    qkd_end: AwareDatetime | None = Field(description="End of the QKD window.")
    qkd_min_el_deg: float = Field(description="QKD minimum elevation the window was computed with.")
    qkd_max_range_km: float | None = Field(description="QKD maximum range the window was computed with.")
    sunlit: bool = Field(description="Satellite in sunlight at culmination.")
    sunlit_fraction: float = Field(description="Fraction of the pass with the satellite in sunlight.")
    qkd_sunlit: bool = Field(description="Satellite sunlit at any time of the QKD window.")
    sun_el_deg: float = Field(description="Highest elevation of the Sun at the station during the pass.")
    sun_min_sep_deg: float = Field(description="Smallest angle between the line of sight and the Sun.")
    moon_el_deg: float = Field(description="Highest elevation of the Moon during the pass.")
    moon_min_sep_deg: float = Field(description="Smallest angle between the line of sight and the Moon.")
    moon_min_sep_up_deg: float | None = Field(
        description="Same, counting only times the Moon is above the horizon (None: never up)."
    )
    moon_illumination: float = Field(description="Illuminated fraction of the Moon at culmination.")
    element_epoch: AwareDatetime = Field(description="Epoch of the element set used.")
    element_age_days: float = Field(description="Age of the elements at AOS.")
    elements_format: ElementFormat = Field(description="Format of elements_text.")
    elements_text: str = Field(description="The element set used (TLE lines or OMM as JSON).")
    aos_clipped: bool = Field(False, description="The pass was already up where the search began.")
    los_clipped: bool = Field(False, description="The pass was still up where the search ended.")

    @field_serializer("aos", "tca", "los", "qkd_start", "qkd_end", "element_epoch")
    def _ser_time(self, value: datetime | None) -> str | None:
        return iso_z_or_none(value)

    @property
    def aos_s(self) -> float:
        return self.aos.timestamp()

    @property
    def los_s(self) -> float:
        return self.los.timestamp()

    @property
    def tca_s(self) -> float:
        return self.tca.timestamp()

    # Derived, never stored: they cannot disagree with the times they come from, and
    # stay in the JSON output as before.
    @computed_field(description="LOS - AOS.")  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float:
        return round(self.los_s - self.aos_s, 3)

    @computed_field(description="Length of the QKD window (0 when there is none).")  # type: ignore[prop-decorator]
    @property
    def qkd_duration_s(self) -> float:
        if self.qkd_start is None or self.qkd_end is None:
            return 0.0
        return round(self.qkd_end.timestamp() - self.qkd_start.timestamp(), 3)

    def earth_satellite(self) -> EarthSatellite:
        """The skyfield satellite of the elements this pass was predicted with."""
        return satellite_from_text(self.elements_text, self.elements_format)


@dataclass(slots=True)
class PassTrack:
    """The pass sampled along time (for plots and constraint checks)."""

    time_s: np.ndarray
    az_deg: np.ndarray
    el_deg: np.ndarray
    range_km: np.ndarray
    sun_az_deg: np.ndarray
    sun_el_deg: np.ndarray
    moon_az_deg: np.ndarray
    moon_el_deg: np.ndarray
    sunlit: np.ndarray


def _qkd_window(
    site: SiteConfig, track: PassTrack, min_el_deg: float, max_range_km: float | None,
) -> tuple[float, float] | None:
    """First and last moment the QKD conditions hold, interpolated on the 1 s track
    (elevation and range are smooth over a second: the error is a few milliseconds)."""
    margin = np.minimum(track.el_deg - min_el_deg, track.el_deg - site.horizon_min_el_deg(track.az_deg))
    if max_range_km is not None:
        # Scale km to about the same sensitivity as degrees near the window edges.
        margin = np.minimum(margin, (max_range_km - track.range_km) / 30.0)
    inside = np.flatnonzero(margin > 0)
    if len(inside) == 0:
        return None
    t = track.time_s
    i0, i1 = int(inside[0]), int(inside[-1])

    def cross(a: int, b: int) -> float:
        fa, fb = margin[a], margin[b]
        return float(t[a] + (t[b] - t[a]) * fa / (fa - fb)) if fa != fb else float(t[b])

    start = cross(i0 - 1, i0) if i0 > 0 else float(t[0])
    end = cross(i1, i1 + 1) if i1 + 1 < len(t) else float(t[-1])
    return start, end


def _sample_pass(es: ElementSet, site: SiteConfig, ev: PassEvent, step_s: float) -> PassTrack:
    """The pass every ``step_s`` from AOS, LOS included, with the Sun and the Moon."""
    sat = es.satellite
    times = np.arange(ev.aos_s, ev.los_s, step_s)
    times = np.append(times, ev.los_s)
    # One Time for every body: skyfield computes its nutation once, not four times.
    t = times_from_epoch_s(times)
    la = look_angles(sat, site, times, t=t)
    sun_az, sun_el = sun_altaz(site, times, t=t)
    moon_az, moon_el = moon_altaz(site, times, t=t)
    sunlit = np.asarray(sat.at(t).is_sunlit(load_ephemeris()), dtype=bool)
    return PassTrack(times, la.az_deg, la.el_deg, la.range_km, sun_az, sun_el, moon_az, moon_el, sunlit)


def _min_range_km(range_km: np.ndarray) -> float:
    """The closest approach: the smallest sample, refined by a parabola through it and
    its neighbours."""
    i_min = int(np.argmin(range_km))
    min_range = float(range_km[i_min])
    if 0 < i_min < len(range_km) - 1:  # parabola through the three samples around the minimum
        r0, r1, r2 = range_km[i_min - 1:i_min + 2]
        denom = r0 - 2 * r1 + r2
        if denom > 0:
            min_range = float(r1 - (r0 - r2) ** 2 / (8 * denom))
    return min_range


def describe_pass(
    es: ElementSet,
    site: SiteConfig,
    ev: PassEvent,
    *,
    qkd_min_el_deg: float,
    qkd_max_range_km: float | None = None,
    step_s: float = 1.0,
) -> tuple[PassInfo, PassTrack]:
    """The full description of one pass found by :func:`find_passes` (skyfield frames)."""
    sat = es.satellite
    track = _sample_pass(es, site, ev, step_s)
    times, sunlit = track.time_s, track.sunlit
    la_az, sun_az, sun_el = track.az_deg, track.sun_az_deg, track.sun_el_deg
    moon_az, moon_el = track.moon_az_deg, track.moon_el_deg
    min_range = _min_range_km(track.range_km)
    sun_sep = angular_separation_deg(la_az, track.el_deg, sun_az, sun_el)
    moon_sep = angular_separation_deg(la_az, track.el_deg, moon_az, moon_el)
    moon_up = moon_el > 0
    tca_la = look_angles(sat, site, np.array([ev.tca_s]))
    window = _qkd_window(site, track, qkd_min_el_deg, qkd_max_range_km)
    if window:
        in_window = (times >= window[0]) & (times <= window[1])
        qkd_sunlit = bool(sunlit[in_window].any())
    else:
        qkd_sunlit = False
    info = PassInfo(
        pass_id=ev.pass_id,
        satellite=es.name,
        norad_id=es.norad_id,
        aos=at_ms(ev.aos_s), tca=at_ms(ev.tca_s), los=at_ms(ev.los_s),
        max_el_deg=round(ev.max_el_deg, 4),
        aos_az_deg=round(float(la_az[0]), 3),
        tca_az_deg=round(float(tca_la.az_deg[0]), 3),
        los_az_deg=round(float(la_az[-1]), 3),
        min_range_km=round(min_range, 3),
        qkd_start=at_ms(window[0]) if window else None,
        qkd_end=at_ms(window[1]) if window else None,
        qkd_min_el_deg=qkd_min_el_deg,
        qkd_max_range_km=qkd_max_range_km,
        sunlit=bool(sunlit[np.argmin(np.abs(times - ev.tca_s))]),
        sunlit_fraction=round(float(sunlit.mean()), 4),
        qkd_sunlit=qkd_sunlit,
        sun_el_deg=round(float(sun_el.max()), 3),
        sun_min_sep_deg=round(float(sun_sep.min()), 3),
        moon_el_deg=round(float(moon_el.max()), 3),
        moon_min_sep_deg=round(float(moon_sep.min()), 3),
        moon_min_sep_up_deg=round(float(moon_sep[moon_up].min()), 3) if moon_up.any() else None,
        moon_illumination=round(float(moon_illumination(np.array([ev.tca_s]))[0]), 4),
        element_epoch=es.epoch,
        element_age_days=round(es.age_days(ev.aos_s), 4),
        elements_format=es.format,
        elements_text=es.text,
        aos_clipped=ev.aos_clipped,
        los_clipped=ev.los_clipped,
    )
    return info, track
