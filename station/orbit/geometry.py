"""Where a satellite, the Sun and the Moon are seen from the station.

Every function takes times as clock seconds (UTC seconds since the Unix epoch, what
:meth:`station.clock.Clock.now_s` returns) in numpy arrays and is vectorised over them.

Offline by design: the timescale comes from skyfield's builtin leap-second and Delta T
tables and the planetary ephemeris (Sun, Moon) from the ``skyfield-data`` package's
``de421.bsp`` (valid 1900–2050). Nothing is ever downloaded.

Accuracy: SGP4 with a fresh element set is good to about a kilometre (a few arcminutes
seen from the ground at LEO ranges), degrading by a few kilometres per day of element age.
That is enough to plan passes and to point a wide-field acquisition camera; fine pointing
closes the loop on the beacon.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from skyfield.api import EarthSatellite, load, wgs84
from skyfield.jpllib import SpiceKernel
from skyfield.nutationlib import iau2000b_radians
from skyfield.timelib import Time, Timescale
from skyfield.toposlib import GeographicPosition

if TYPE_CHECKING:
    from station.config.site import SiteConfig

__all__ = [
    "LookAngles",
    "SatelliteLinkGeometry",
    "angular_separation_deg",
    "load_ephemeris",
    "load_timescale",
    "look_angles",
    "moon_altaz",
    "moon_illumination",
    "site_position",
    "sun_altaz",
    "times_from_epoch_s",
]

@functools.cache
def load_timescale() -> Timescale:
    """skyfield's timescale from its builtin tables (no download, no network)."""
    return load.timescale(builtin=True)


def _ephemeris_path() -> Path:
    import skyfield_data

    # Open the file directly: skyfield_data.get_skyfield_data_path() also runs an expiry
    # check on the bundled Earth-orientation table, which we do not use.
    return Path(skyfield_data.__file__).resolve().parent / "data" / "de421.bsp"


@functools.cache
def load_ephemeris() -> SpiceKernel:
    """JPL DE421 from the installed ``skyfield-data`` package (no download, no network)."""
    path = _ephemeris_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the DE421 ephemeris of the skyfield-data package is missing; "
            "reinstall it with `pip install --force-reinstall skyfield-data`"
        )
    return SpiceKernel(str(path))


def times_from_epoch_s(time_s: np.ndarray | float) -> Time:
    """A skyfield :class:`Time` (vectorised) for clock seconds since the Unix epoch, UTC.

    Unix seconds skip leap seconds, exactly like the UTC calendar skyfield takes, so the
    Julian date split below is exact to the microsecond for any post-1972 time.

    The Time uses the IAU 2000B nutation series (77 terms, good to about a milliarcsecond)
    instead of 2000A (1365 terms), as skyfield's own almanac searches do: it was most of
    the cost of describing a pass, and a milliarcsecond is far below SGP4's accuracy.
    """
    t = utc_time(time_s)
    t._nutation_angles_radians = iau2000b_radians(t)
    return t


def utc_time(time_s: np.ndarray | float) -> Time:
    """Like :func:`times_from_epoch_s` but leaves nutation to skyfield (computed only if
    used): for callers that need just UT1 or TT, e.g. a GMST rotation."""
    ts = load_timescale()
    s = np.asarray(time_s, dtype=float)
    days = np.floor(s / 86400.0)
    # Split whole days from the fraction to keep sub-millisecond precision in doubles.
    return ts.utc(1970, 1, 1 + days, 0, 0, s - days * 86400.0)


def site_position(site: SiteConfig) -> GeographicPosition:
    """The station as a skyfield WGS84 position."""
    return wgs84.latlon(site.latitude_deg, site.longitude_deg, elevation_m=site.height_m)


def _refraction_kwargs(site: SiteConfig, refraction: bool) -> dict[str, Any]:
    if not refraction or site.pressure_mbar <= 0:
        return {}
    return {"temperature_C": site.temperature_C, "pressure_mbar": site.pressure_mbar}


@dataclass(slots=True)
class LookAngles:
    """Topocentric look angles of a satellite at a series of times.

    All arrays have the shape of ``time_s``; ``az_deg`` is in [0, 360), elevation is
    geometric unless refraction was asked for, ``range_rate_km_s`` is positive when the
    satellite moves away.
    """

    time_s: np.ndarray
    az_deg: np.ndarray
    el_deg: np.ndarray
    range_km: np.ndarray
    range_rate_km_s: np.ndarray


def look_angles(
    satellite: EarthSatellite,
    site: SiteConfig,
    time_s: np.ndarray,
    *,
    refraction: bool = False,
    t: Time | None = None,
) -> LookAngles:
    """Azimuth, elevation, range and range rate of ``satellite`` from ``site`` (vectorised).

    With ``refraction=True`` the elevation includes atmospheric refraction for the site's
    ``temperature_C`` and ``pressure_mbar`` (pressure 0 turns it off); refraction only
    changes the elevation, never azimuth or range. ``t``, the skyfield Time of ``time_s``
    when the caller already has it, lets several calls share its (costly) nutation.
    """
    time_s = np.asarray(time_s, dtype=float)
    if t is None:
        t = times_from_epoch_s(time_s)
    topocentric = (satellite - site_position(site)).at(t)
    alt, az, dist = topocentric.altaz(**_refraction_kwargs(site, refraction))
    r_km = topocentric.position.km
    v_km_s = topocentric.velocity.km_per_s
    range_km = np.asarray(dist.km)
    range_rate = np.sum(r_km * v_km_s, axis=0) / range_km
    return LookAngles(
        time_s=time_s,
        az_deg=np.mod(np.asarray(az.degrees), 360.0),
        el_deg=np.asarray(alt.degrees),
        range_km=range_km,
        range_rate_km_s=np.asarray(range_rate),
    )


def _body_altaz(
    body: str, site: SiteConfig, time_s: np.ndarray | float, t: Time | None
) -> tuple[np.ndarray, np.ndarray]:
    eph = load_ephemeris()
    observer = eph["earth"] + site_position(site)
    if t is None:
        t = times_from_epoch_s(time_s)
    alt, az, _ = observer.at(t).observe(eph[body]).apparent().altaz()
    return np.mod(np.asarray(az.degrees), 360.0), np.asarray(alt.degrees)


def sun_altaz(
    site: SiteConfig, time_s: np.ndarray | float, *, t: Time | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(az_deg, el_deg)`` of the Sun's apparent (geometric-elevation) position; vectorised."""
    return _body_altaz("sun", site, time_s, t)


def moon_altaz(
    site: SiteConfig, time_s: np.ndarray | float, *, t: Time | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(az_deg, el_deg)`` of the Moon's apparent (geometric-elevation) position; vectorised."""
    return _body_altaz("moon", site, time_s, t)


def moon_illumination(time_s: np.ndarray | float) -> np.ndarray:
    """Illuminated fraction of the Moon's disc (0 new .. 1 full) at ``time_s``."""
    from skyfield import almanac

    eph = load_ephemeris()
    t = times_from_epoch_s(time_s)
    return np.asarray(almanac.fraction_illuminated(eph, "moon", t))


def angular_separation_deg(
    az1_deg: np.ndarray, el1_deg: np.ndarray, az2_deg: np.ndarray, el2_deg: np.ndarray
) -> np.ndarray:
    """Great-circle angle between two (az, el) directions, in degrees (vectorised)."""
    a1, e1, a2, e2 = (np.radians(np.asarray(x, dtype=float)) for x in (az1_deg, el1_deg, az2_deg, el2_deg))
    # Haversine form: well conditioned for the small angles that matter for exclusions.
    h = np.sin((e2 - e1) / 2) ** 2 + np.cos(e1) * np.cos(e2) * np.sin((a2 - a1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


class SatelliteLinkGeometry:
    """:class:`drivers.timetagger.base.LinkGeometry` for one satellite over one site.

    The simulated time tagger asks this for range and elevation to model link loss.
    """

    def __init__(self, satellite: EarthSatellite, site: SiteConfig) -> None:
        self.satellite = satellite
        self.site = site

    def range_el_at(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(range_km, el_deg)`` arrays of the shape of ``time_s`` (clock seconds, UTC)."""
        la = look_angles(self.satellite, self.site, np.asarray(time_s, dtype=float))
        return la.range_km, la.el_deg
