"""The track of one pass, planned before it: sampled with skyfield, interpolated live.

:func:`plan_track` samples the satellite's topocentric az/el (with refraction for the
site's temperature and pressure) every ``tracking.sample_interval_s`` (finer for keyhole
passes), applies the keyhole path and the cable-wrap turn, and returns a
:class:`TrackPlan`. It is numeric work: call it through :func:`plan_track_async` (a
worker thread) from the event loop. The control loop then asks the plan for the mount
position at any instant (:meth:`TrackPlan.point_at`, cubic Hermite between samples).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from station.config.mount import TrackingConfig
from station.config.site import SiteConfig
from station.tracking.gate import GateLimits
from station.tracking.wrap import angle_between_deg, choose_wrap, keyhole_path

if TYPE_CHECKING:
    from skyfield.api import EarthSatellite

log = logging.getLogger(__name__)

#: Sampling step used instead of the configured one when the path is rate-limited.
_KEYHOLE_STEP_S = 0.1


@dataclass(frozen=True)
class TrackPlan:
    """Mount angles along a pass, and where the satellite really is.

    ``az_deg``/``el_deg`` are *mount* angles: wrap turn applied (azimuth may leave
    0…360) and, on a zenith flip, an elevation axis past 90°. ``sky_az_deg`` is the
    satellite's continuous (unwrapped) azimuth, ``sky_el_deg`` its refracted elevation.
    ``expected_error_deg`` is the pointing error the plan itself leaves (keyhole).
    """

    pass_id: str
    satellite: str
    time_s: np.ndarray
    az_deg: np.ndarray
    el_deg: np.ndarray
    sky_az_deg: np.ndarray
    sky_el_deg: np.ndarray
    expected_error_deg: np.ndarray
    wrap_offset_deg: float
    #: "none", "flip" (elevation over the zenith) or "rate_limited" (azimuth lags).
    keyhole: str
    #: Samples dropped at the ends because they were under the horizon mask / floor.
    trimmed_samples: int = 0

    @property
    def aos_s(self) -> float:
        return float(self.time_s[0])

    @property
    def los_s(self) -> float:
        return float(self.time_s[-1])

    @property
    def duration_s(self) -> float:
        return self.los_s - self.aos_s

    @property
    def start(self) -> tuple[float, float]:
        """Mount (az, el) at AOS: where pre-positioning goes."""
        return float(self.az_deg[0]), float(self.el_deg[0])

    @property
    def max_el_deg(self) -> float:
        return float(np.max(self.sky_el_deg))

    @functools.cached_property
    def _slopes(self) -> tuple[np.ndarray, ...]:
        # Computed once per plan: the control loop interpolates several times per tick.
        return tuple(_slopes(self.time_s, x) for x in
                     (self.az_deg, self.el_deg, self.sky_az_deg, self.sky_el_deg))

    def point_at(self, time_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mount (az, el) at ``time_s``; clamped to the ends outside the pass."""
        m = self._slopes
        return (_hermite(self.time_s, self.az_deg, time_s, m[0]),
                _hermite(self.time_s, self.el_deg, time_s, m[1]))

    def sky_at(self, time_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The satellite's (continuous az, el) at ``time_s``."""
        m = self._slopes
        return (_hermite(self.time_s, self.sky_az_deg, time_s, m[2]),
                _hermite(self.time_s, self.sky_el_deg, time_s, m[3]))

    def max_rates_deg_s(self) -> tuple[float, float]:
        """Largest (az, el) rates along the planned mount path."""
        dt = np.diff(self.time_s)
        return (float(np.max(np.abs(np.diff(self.az_deg)) / dt)),
                float(np.max(np.abs(np.diff(self.el_deg)) / dt)))

    def shifted(self, offset_s: float) -> TrackPlan:
        """The same track ``offset_s`` later (benchmarks and rehearsals on a real clock)."""
        return replace(self, time_s=self.time_s + offset_s)

    def window(self, start_s: float, end_s: float) -> TrackPlan:
        """The part of the plan between two clock times (both ends kept as samples)."""
        keep = (self.time_s >= start_s) & (self.time_s <= end_s)
        idx = np.flatnonzero(keep)
        if idx.size < 2:
            raise ValueError(f"the window {start_s}…{end_s} holds fewer than 2 plan samples")
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        return replace(self, time_s=self.time_s[sl], az_deg=self.az_deg[sl], el_deg=self.el_deg[sl],
                       sky_az_deg=self.sky_az_deg[sl], sky_el_deg=self.sky_el_deg[sl],
                       expected_error_deg=self.expected_error_deg[sl])


def _slopes(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Second-order finite-difference slopes (the Hermite tangents)."""
    if len(t) > 2:
        return np.gradient(x, t, edge_order=2)
    return np.full_like(x, (x[-1] - x[0]) / (t[-1] - t[0]))


def _hermite(t: np.ndarray, x: np.ndarray, tq: float | np.ndarray, m: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation of ``x(t)`` with tangents ``m`` at ``tq``."""
    tq_arr = np.clip(np.asarray(tq, dtype=float), t[0], t[-1])
    i = np.clip(np.searchsorted(t, tq_arr, side="right") - 1, 0, len(t) - 2)
    h = t[i + 1] - t[i]
    s = (tq_arr - t[i]) / h
    s2, s3 = s * s, s * s * s
    return ((2 * s3 - 3 * s2 + 1) * x[i] + (s3 - 2 * s2 + s) * h * m[i]
            + (-2 * s3 + 3 * s2) * x[i + 1] + (s3 - s2) * h * m[i + 1])


def plan_track(
    satellite: EarthSatellite,
    site: SiteConfig,
    aos_s: float,
    los_s: float,
    *,
    limits: GateLimits,
    tracking: TrackingConfig,
    from_az_deg: float | None = None,
    pass_id: str = "",
    refraction: bool = True,
) -> TrackPlan:
    """Plan the mount track of one pass (blocking numeric work: run it in a thread).

    Raises :class:`station.tracking.wrap.WrapError` if no cable-wrap turn holds the pass,
    and ``ValueError`` if less than two samples of the pass clear the horizon mask.
    """
    if not los_s > aos_s:
        raise ValueError(f"pass {pass_id or satellite.name!r}: LOS {los_s} is not after AOS {aos_s}")
    t, sky_az, sky_el = _sample(satellite, site, aos_s, los_s, tracking.sample_interval_s, refraction)
    margin = tracking.rate_margin
    high = float(np.max(sky_el)) > tracking.keyhole_el_deg
    fast = bool(np.any(np.abs(np.diff(sky_az)) / np.diff(t) > limits.az_rate_deg_s * margin))
    if (high or fast) and tracking.sample_interval_s > _KEYHOLE_STEP_S:
        # Resample finely: the rate-limited path bends within a second.
        t, sky_az, sky_el = _sample(satellite, site, aos_s, los_s, _KEYHOLE_STEP_S, refraction)
    keyhole, (az, el, err) = _mount_path(t, sky_az, sky_el, limits, margin, high=high, fast=fast)
    idx = np.flatnonzero(_clears_floor(t, sky_az, sky_el, site, limits, tracking))
    if idx.size < 2:
        raise ValueError(
            f"pass {pass_id or satellite.name!r}: fewer than two samples clear the horizon mask"
        )
    sl = slice(int(idx[0]), int(idx[-1]) + 1)
    trimmed = len(t) - (sl.stop - sl.start)
    t, az, el, err, sky_az, sky_el = t[sl], az[sl], el[sl], err[sl], sky_az[sl], sky_el[sl]
    offset = choose_wrap(az, limits.az_min_deg, limits.az_max_deg, from_az_deg=from_az_deg)
    plan = TrackPlan(
        pass_id=pass_id, satellite=satellite.name or "", time_s=t, az_deg=az + offset, el_deg=el,
        sky_az_deg=sky_az + offset, sky_el_deg=sky_el, expected_error_deg=err,
        wrap_offset_deg=offset, keyhole=keyhole if (high or fast) else "none",
        trimmed_samples=trimmed,
    )
    log.info(
        "track %s: %d samples %.0f s, max el %.1f°, wrap %+.0f°, keyhole %s, expected max error %.1f\"",
        pass_id or plan.satellite, len(t), plan.duration_s, plan.max_el_deg, offset, plan.keyhole,
        float(np.max(err)) * 3600.0,
    )
    return plan


def _mount_path(t: np.ndarray, sky_az: np.ndarray, sky_el: np.ndarray, limits: GateLimits,
                margin: float, *, high: bool, fast: bool,
                ) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keyhole strategy, (mount az, mount el, expected error)): the plain or rate-limited
    path, or over the zenith (flip) when the mount can and that errs less; rates and
    accelerations are the limits times the tracking ``margin``."""
    az_rate = limits.az_rate_deg_s * margin
    el_rate = limits.el_rate_deg_s * margin
    el_lo = max(limits.el_axis_min_deg, limits.min_el_deg)
    # Keyhole paths have corners; smoothing them keeps acceleration within the margin.
    accel = ({"az_accel_deg_s2": limits.az_accel_deg_s2 * margin,
              "el_accel_deg_s2": limits.el_accel_deg_s2 * margin} if (high or fast) else {})
    candidates = [("rate_limited" if fast else "none", keyhole_path(
        t, sky_az, sky_el, az_rate_deg_s=az_rate, el_rate_deg_s=el_rate, flip=False,
        el_min_deg=el_lo, el_max_deg=min(90.0, limits.el_axis_max_deg), **accel))]
    if high and limits.el_over_zenith:
        candidates.append(("flip", keyhole_path(
            t, sky_az, sky_el, az_rate_deg_s=az_rate, el_rate_deg_s=el_rate, flip=True,
            el_min_deg=el_lo, el_max_deg=limits.el_axis_max_deg, **accel)))
    # The candidate with the smaller worst-case error; the plain one wins ties.
    return min(candidates, key=lambda c: round(float(np.max(c[1][2])), 6))


def _clears_floor(t: np.ndarray, sky_az: np.ndarray, sky_el: np.ndarray, site: SiteConfig,
                  limits: GateLimits, tracking: TrackingConfig) -> np.ndarray:
    """Which samples clear the horizon mask and the elevation floor, now and as far ahead
    as the controller extrapolates a stream, braking included: the ends that do not are
    trimmed, since the gate would refuse them (AOS/LOS from the schedule are computed
    without refraction)."""
    floor = np.maximum(site.horizon_min_el_deg(np.mod(sky_az, 360.0)), limits.min_el_deg) + 1e-3
    # It then brakes: allow for the braking distance from the pass's own rate plus the
    # rate change one control period of measurement lag allows (see GatedMount).
    el_rate = np.gradient(sky_el, t)
    a = limits.el_accel_deg_s2
    v = np.minimum(np.abs(el_rate) + a * 2.5 / tracking.rate_hz, limits.el_rate_deg_s)
    brake = v * v / (1.8 * a)
    ahead = sky_el + el_rate * limits.stream_extrapolation_s - brake
    return np.minimum(sky_el, ahead) >= floor


def _sample(satellite: EarthSatellite, site: SiteConfig, aos_s: float, los_s: float,
            step_s: float, refraction: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from station.orbit.geometry import look_angles

    n = max(2, int(np.ceil((los_s - aos_s) / step_s)) + 1)
    t = np.linspace(aos_s, los_s, n)
    la = look_angles(satellite, site, t, refraction=refraction)
    sky_az = np.degrees(np.unwrap(np.radians(la.az_deg)))
    return t, sky_az, la.el_deg


async def plan_track_async(*args: object, **kwargs: object) -> TrackPlan:
    """:func:`plan_track` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(plan_track, *args, **kwargs)  # type: ignore[arg-type]


def tracking_error_deg(plan: TrackPlan, time_s: float, az_deg: float, el_deg: float) -> float:
    """Angle between the mount's (az, el) and the planned mount position at ``time_s``."""
    paz, pel = plan.point_at(time_s)
    return float(angle_between_deg(np.asarray(az_deg), np.asarray(el_deg), paz, pel))
