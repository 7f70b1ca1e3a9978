"""Cable-wrap planning and the zenith keyhole.

Cable wrap: a mount whose azimuth travel exceeds 360° (e.g. −270…+270°) reaches most
directions on two wrap turns. A pass is tracked on one turn from rise to set: unwinding
mid-pass would cost a 360° slew while the satellite moves on. :func:`choose_wrap` picks,
before the pass, the whole-turn offset that keeps the entire (unwrapped, continuous)
azimuth track inside the travel, preferring the shortest slew from where the mount is.

Keyhole: an az/el mount must turn its azimuth by ~180° while a satellite passes near the
zenith; at zenith distance δ the needed azimuth rate is about ω/δ (ω the satellite's
angular speed), far beyond any mount for small δ. :func:`keyhole_path` turns a wanted
azimuth sequence into one that respects the azimuth rate limit (centred on culmination,
so the error is shared before and after it) and chooses the elevation that puts the
mount's vertical plane closest to the satellite; the planner records the pointing error
that geometry leaves (see docs/tracking.md).
"""

from __future__ import annotations

import math

import numpy as np


class WrapError(ValueError):
    """No wrap turn keeps the whole pass inside the azimuth travel."""


def choose_wrap(az_deg: np.ndarray, az_min_deg: float, az_max_deg: float, *,
                from_az_deg: float | None = None) -> float:
    """The multiple of 360° to add to the continuous azimuth track ``az_deg``.

    Raises :class:`WrapError` when the track's span does not fit in the travel at all.
    Among the offsets that fit, the one with the shortest slew from ``from_az_deg`` wins
    (ties: the one that leaves the most travel on both sides).
    """
    lo, hi = float(np.min(az_deg)), float(np.max(az_deg))
    k_min = math.ceil((az_min_deg - lo) / 360.0 - 1e-12)
    k_max = math.floor((az_max_deg - hi) / 360.0 + 1e-12)
    if k_min > k_max:
        raise WrapError(
            f"the pass sweeps {hi - lo:.1f}° of azimuth ({lo % 360:.1f}° → ...), which does not "
            f"fit on one wrap turn of the travel {az_min_deg:g}…{az_max_deg:g}°"
        )
    start = float(az_deg[0])

    def cost(k: int) -> tuple[float, float]:
        slew = abs(start + 360.0 * k - from_az_deg) if from_az_deg is not None else 0.0
        margin = min(lo + 360.0 * k - az_min_deg, az_max_deg - hi - 360.0 * k)
        return (round(slew, 3), -margin)

    return 360.0 * min(range(k_min, k_max + 1), key=cost)


def rate_limit_symmetric(t_s: np.ndarray, x: np.ndarray, rate: float) -> np.ndarray:
    """A version of ``x(t)`` whose rate never exceeds ``rate``, centred on the fast parts.

    The mean of a forward and a backward rate-limited follower: each is ``rate``-Lipschitz,
    so their mean is too, and where ``x`` is already slow enough both equal ``x``.
    """
    n = len(x)
    fwd = np.empty(n)
    bwd = np.empty(n)
    step = rate * np.diff(t_s)
    fwd[0] = x[0]
    for i in range(1, n):
        fwd[i] = min(max(x[i], fwd[i - 1] - step[i - 1]), fwd[i - 1] + step[i - 1])
    bwd[-1] = x[-1]
    for i in range(n - 2, -1, -1):
        bwd[i] = min(max(x[i], bwd[i + 1] - step[i]), bwd[i + 1] + step[i])
    return 0.5 * (fwd + bwd)


def smooth_acceleration(t_s: np.ndarray, x: np.ndarray, rate: float, accel: float) -> np.ndarray:
    """Moving average over ``2 rate / accel`` seconds: keeps the rate limit and bounds the
    acceleration of a rate-limited path (its corners need infinite acceleration)."""
    if not np.isfinite(accel) or accel <= 0 or len(x) < 3:
        return x
    step = float(np.median(np.diff(t_s)))
    half = int(round(rate / accel / step))
    if half < 1:
        return x
    padded = np.pad(x, half, mode="edge")
    c = np.cumsum(np.concatenate([[0.0], padded]))
    return (c[2 * half + 1:] - c[:-2 * half - 1]) / (2 * half + 1)


def plane_elevation(sky_az_deg: np.ndarray, sky_el_deg: np.ndarray, mount_az_deg: np.ndarray,
                    *, over_zenith: bool) -> np.ndarray:
    """Elevation-axis angle that brings the vertical plane at ``mount_az_deg`` nearest to
    the sky direction; past 90° (over the zenith) only when ``over_zenith``."""
    e = np.radians(sky_el_deg)
    da = np.radians(sky_az_deg - mount_az_deg)
    el = np.degrees(np.arctan2(np.sin(e), np.cos(e) * np.cos(da)))
    return el if over_zenith else np.minimum(el, 90.0)


def angle_between_deg(az1_deg: np.ndarray, el1_deg: np.ndarray,
                      az2_deg: np.ndarray, el2_deg: np.ndarray) -> np.ndarray:
    """Angle between directions given as mount (az, el-axis) angles; el may exceed 90°."""
    v1 = _unit(az1_deg, el1_deg)
    v2 = _unit(az2_deg, el2_deg)
    # atan2 of cross and dot: accurate for the arcsecond angles tracking cares about.
    cross = np.linalg.norm(np.cross(v1, v2, axis=0), axis=0)
    dot = np.sum(v1 * v2, axis=0)
    return np.degrees(np.arctan2(cross, dot))


def _unit(az_deg: np.ndarray, el_deg: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(az_deg, dtype=float))
    e = np.radians(np.asarray(el_deg, dtype=float))
    return np.array([np.cos(e) * np.sin(a), np.cos(e) * np.cos(a), np.sin(e)])


def keyhole_path(t_s: np.ndarray, sky_az_deg: np.ndarray, sky_el_deg: np.ndarray, *,
                 az_rate_deg_s: float, el_rate_deg_s: float, flip: bool,
                 el_min_deg: float, el_max_deg: float, az_accel_deg_s2: float = np.inf,
                 el_accel_deg_s2: float = np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mount ``(az, el)`` along the pass within the rate limits, and the pointing error.

    ``sky_az_deg`` must be continuous (unwrapped). With ``flip`` the azimuth follows the
    satellite's *plane* (after culmination the opposite azimuth with the elevation axis
    past 90°), so a pass through the zenith needs no azimuth swing at all.
    """
    want = np.array(sky_az_deg, dtype=float)
    if flip:
        ref = want[0]
        # Each sample on the representation nearest the rise azimuth's vertical plane.
        alt = want - 180.0 * np.sign(want - ref)
        want = np.where(np.abs(want - ref) > 90.0, alt, want)
    az = rate_limit_symmetric(t_s, want, az_rate_deg_s)
    az = smooth_acceleration(t_s, az, az_rate_deg_s, az_accel_deg_s2)
    el = plane_elevation(sky_az_deg, sky_el_deg, az, over_zenith=flip)
    el = np.clip(el, el_min_deg, el_max_deg)
    el = rate_limit_symmetric(t_s, el, el_rate_deg_s)
    el = smooth_acceleration(t_s, el, el_rate_deg_s, el_accel_deg_s2)
    el = np.clip(el, el_min_deg, el_max_deg)
    err = angle_between_deg(az, el, sky_az_deg, sky_el_deg)
    return az, el, err
