"""Horizontal <-> equatorial-of-date conversion for mounts that only take RA/Dec.

A rotation by the site's latitude and the local apparent sidereal time, nothing more: no
refraction (the station's trajectory already includes it, and the mount's axes point
where they point), no polar motion, no aberration (the device applies none to
"EOD" coordinates either, it converts with the same rotation). Sidereal time comes from
skyfield's built-in timescale, offline.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache

from skyfield.api import Loader, Timescale


@lru_cache(maxsize=1)
def _timescale() -> Timescale:
    # builtin=True: leap seconds and Delta T from the files shipped with skyfield, no
    # downloads (the station runs offline). The path is never written to.
    return Loader("/nonexistent-skyfield-cache", verbose=False).timescale(builtin=True)


def local_sidereal_time_h(time_s: float, longitude_deg: float) -> float:
    """Local apparent sidereal time, hours in [0, 24), at UTC epoch seconds ``time_s``."""
    t = _timescale().from_datetime(datetime.fromtimestamp(time_s, tz=UTC))
    return (float(t.gast) + longitude_deg / 15.0) % 24.0


def horizontal_to_equatorial(az_deg: float, el_deg: float, *, latitude_deg: float,
                             lst_h: float) -> tuple[float, float]:
    """(RA hours in [0, 24), Dec degrees) of date for azimuth (N through E) and elevation."""
    a, h, phi = math.radians(az_deg), math.radians(el_deg), math.radians(latitude_deg)
    sin_dec = math.sin(phi) * math.sin(h) + math.cos(phi) * math.cos(h) * math.cos(a)
    # cos(dec)·sin(HA) and cos(dec)·cos(HA): atan2 keeps full precision near the poles,
    # where asin(sin_dec) would not.
    y = -math.sin(a) * math.cos(h)
    x = math.cos(phi) * math.sin(h) - math.sin(phi) * math.cos(h) * math.cos(a)
    dec = math.atan2(sin_dec, math.hypot(x, y))
    ha = math.atan2(y, x)
    ra_h = (lst_h - math.degrees(ha) / 15.0) % 24.0
    return ra_h, math.degrees(dec)


def equatorial_to_horizontal(ra_h: float, dec_deg: float, *, latitude_deg: float,
                             lst_h: float) -> tuple[float, float]:
    """(azimuth in [0, 360), elevation) degrees for RA hours and Dec degrees of date."""
    ha = math.radians((lst_h - ra_h) * 15.0)
    d, phi = math.radians(dec_deg), math.radians(latitude_deg)
    sin_h = math.sin(phi) * math.sin(d) + math.cos(phi) * math.cos(d) * math.cos(ha)
    y = -math.sin(ha) * math.cos(d)
    x = math.cos(phi) * math.sin(d) - math.sin(phi) * math.cos(d) * math.cos(ha)
    el = math.atan2(sin_h, math.hypot(x, y))
    az = math.atan2(y, x)
    return math.degrees(az) % 360.0, math.degrees(el)
