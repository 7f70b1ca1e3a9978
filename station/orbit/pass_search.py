"""Fast pass search: when each satellite rises above and sets below the horizon mask.

:func:`find_passes` is built for many satellites over days. All satellites are
propagated at once with sgp4's ``SatrecArray`` on a coarse grid (a twentieth of an orbit
or ``step_s``, whichever is shorter). The SGP4 TEME vectors are turned Earth-fixed with
the GMST 1982 rotation, the same pseudo-Earth-fixed frame skyfield's own ``find_events``
works in, so both agree to a fraction of a second. Every local maximum of elevation on
the grid whose best possible elevation could clear the mask is then refined (a
safeguarded secant on the analytic elevation rate), and the rise and set are bracketed
from the grid and refined to 10 ms (Illinois regula falsi on elevation minus the mask at
that azimuth). Refinement is vectorised over all candidates; only the SGP4 calls loop
over satellites.

Elevations are geometric (no refraction), as in skyfield's ``find_events``; at the 10°
masks stations use, refraction would raise the satellite by ~5 arcmin (~1-2 s earlier
AOS). SGP4 with elements a day old predicts AOS to within a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sgp4.api import SGP4_ERRORS, SatrecArray
from skyfield.sgp4lib import theta_GMST1982

from station.orbit.elements import ElementSet
from station.orbit.geometry import (
    site_position,
    utc_time,
)
from station.orbit.pass_ids import pass_id

if TYPE_CHECKING:

    from station.config.site import SiteConfig


__all__ = ["PassEvent", "PassSearch", "find_passes", "pass_id"]

#: (satellites done, satellites total)
ProgressCallback = Callable[[int, int], None]

_UNIX_EPOCH_JD = 2440587.5
_EARTH_RATE_RAD_S = 7.292115e-5
_EARTH_RADIUS_KM = 6378.135  # WGS72, as SGP4
_TOL_S = 0.01
#: Points of one propagation batch (satellites x times); bounds memory to ~100 MB.
_BATCH_POINTS = 1_500_000
#: Passes are searched this far beyond the window so ones in progress at its edges
#: get their true AOS/LOS (LEO passes last < 25 min above the horizon).
_EDGE_MARGIN_S = 1800.0


@dataclass(frozen=True, slots=True)
class PassEvent:
    """One pass as found by :func:`find_passes` (clock seconds, UTC).

    ``aos_clipped``/``los_clipped`` say the pass was already up at the start of the
    searched span, or still up at its end, so that AOS/LOS are the span's edge.
    """

    norad_id: int
    aos_s: float
    tca_s: float
    los_s: float
    max_el_deg: float
    aos_clipped: bool = False
    los_clipped: bool = False

    @property
    def duration_s(self) -> float:
        return self.los_s - self.aos_s

    @property
    def pass_id(self) -> str:
        return pass_id(self.norad_id, self.aos_s)


@dataclass(slots=True)
class PassSearch:
    """Result of :func:`find_passes`: passes sorted by AOS, and any propagation problems."""

    passes: list[PassEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class _Station:
    xyz_km: np.ndarray  # (3,) Earth-fixed
    east: np.ndarray
    north: np.ndarray
    up: np.ndarray

    @classmethod
    def of(cls, site: SiteConfig) -> _Station:
        lat = math.radians(site.latitude_deg)
        lon = math.radians(site.longitude_deg)
        xyz = np.asarray(site_position(site).itrs_xyz.km, dtype=float)
        east = np.array([-math.sin(lon), math.cos(lon), 0.0])
        north = np.array([-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)])
        up = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        return cls(xyz, east, north, up)


def _jd_split(time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC Julian date as (whole, fraction) for SGP4, exactly as skyfield passes it."""
    days = np.floor(time_s / 86400.0)
    return _UNIX_EPOCH_JD + days, (time_s - days * 86400.0) / 86400.0


def _gmst(time_s: np.ndarray) -> tuple[np.ndarray, float]:
    """GMST 1982 angle (rad) and its rate (rad/s) at ``time_s``, with UT1 from skyfield."""
    t = utc_time(time_s)
    theta, theta_dot = theta_GMST1982(t.whole, t.ut1_fraction)
    return np.asarray(theta), float(np.mean(theta_dot)) / 86400.0


def _topocentric(
    r_teme: np.ndarray, v_teme: np.ndarray | None, theta: np.ndarray, theta_dot: float, st: _Station
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Elevation, azimuth (deg), elevation rate (deg/s; None without velocities) and the
    angle between the satellite's direction and the station's vertical (rad, ~ the central
    angle to the sub-satellite point) from TEME vectors; ``theta`` broadcasts."""
    c, s = np.cos(theta), np.sin(theta)
    x, y, z = r_teme[..., 0], r_teme[..., 1], r_teme[..., 2]
    # Earth-fixed position (the frame turns at theta_dot).
    xe, ye = c * x + s * y, -s * x + c * y
    dx, dy, dz = xe - st.xyz_km[0], ye - st.xyz_km[1], z - st.xyz_km[2]
    rng = np.sqrt(dx * dx + dy * dy + dz * dz)
    up = dx * st.up[0] + dy * st.up[1] + dz * st.up[2]
    east = dx * st.east[0] + dy * st.east[1]
    north = dx * st.north[0] + dy * st.north[1] + dz * st.north[2]
    sin_el = np.clip(up / rng, -1.0, 1.0)
    el = np.degrees(np.arcsin(sin_el))
    az = np.mod(np.degrees(np.arctan2(east, north)), 360.0)
    el_rate = None
    if v_teme is not None:
        vx, vy, vz = v_teme[..., 0], v_teme[..., 1], v_teme[..., 2]
        vxe = c * vx + s * vy + theta_dot * ye
        vye = -s * vx + c * vy - theta_dot * xe
        up_dot = vxe * st.up[0] + vye * st.up[1] + vz * st.up[2]
        rng_dot = (dx * vxe + dy * vye + dz * vz) / rng
        cos_el = np.sqrt(np.maximum(1 - sin_el**2, 1e-12))
        el_rate = np.degrees((up_dot / rng - up * rng_dot / (rng * rng)) / cos_el)
    r_norm = np.sqrt(xe * xe + ye * ye + z * z)
    cos_psi = (xe * st.up[0] + ye * st.up[1] + z * st.up[2]) / r_norm
    psi = np.arccos(np.clip(cos_psi, -1.0, 1.0))
    return el, az, el_rate, psi


class _Evaluator:
    """Elevation/azimuth/rate of given satellites at given times (one sgp4 call per satellite)."""

    def __init__(self, satrecs: Sequence[object], st: _Station) -> None:
        self.satrecs = satrecs
        self.st = st

    def __call__(self, sat_index: np.ndarray, time_s: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(time_s)
        r = np.empty((n, 3))
        v = np.empty((n, 3))
        err = np.zeros(n, dtype=np.uint8)
        jd, fr = _jd_split(time_s)
        order = np.argsort(sat_index, kind="stable")
        bounds = np.flatnonzero(np.diff(sat_index[order])) + 1
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            e, rr, vv = self.satrecs[sat_index[group[0]]].sgp4_array(jd[group], fr[group])  # type: ignore[attr-defined]
            r[group], v[group], err[group] = rr, vv, e
        theta, theta_dot = _gmst(time_s)
        el, az, rate, _ = _topocentric(r, v, theta, theta_dot, self.st)
        el_rate = rate if rate is not None else np.zeros_like(el)  # always set: v was given
        bad = err != 0
        el[bad], el_rate[bad] = -90.0, 0.0
        return el, az, el_rate


def _illinois(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray, fa: np.ndarray, fb: np.ndarray,
    tol_s: float = _TOL_S, max_iter: int = 60,
) -> np.ndarray:
    """Vectorised Illinois regula falsi: roots of ``f`` in brackets where fa, fb differ in sign."""
    a, b, fa, fb = a.copy(), b.copy(), fa.copy(), fb.copy()
    side = np.zeros(len(a), dtype=np.int8)
    active = np.abs(b - a) > tol_s
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        denom = fb[idx] - fa[idx]
        c = np.where(denom != 0, (a[idx] * fb[idx] - b[idx] * fa[idx]) / np.where(denom == 0, 1, denom),
                     0.5 * (a[idx] + b[idx]))
        # Keep strictly inside, and fall back to bisection when the secant stalls.
        lo, hi = np.minimum(a[idx], b[idx]), np.maximum(a[idx], b[idx])
        c = np.clip(c, lo + 0.25 * tol_s, hi - 0.25 * tol_s)
        fc = f(idx, c)
        left = np.sign(fc) == np.sign(fa[idx])
        # Replace the endpoint on fc's side; halve the other end's value if it was kept twice.
        ia, ib = idx[left], idx[~left]
        a[ia], fa[ia] = c[left], fc[left]
        fb[ia] = np.where(side[ia] == -1, fb[ia] / 2, fb[ia])
        side[ia] = -1
        b[ib], fb[ib] = c[~left], fc[~left]
        fa[ib] = np.where(side[ib] == 1, fa[ib] / 2, fa[ib])
        side[ib] = 1
        done = (np.abs(b[idx] - a[idx]) <= tol_s) | (fc == 0)
        active[idx[done]] = False
    # The root lies between a and b; the side where f crosses is what matters at 10 ms.
    return 0.5 * (a + b)


# --------------------------------------------------------------------------- search


def _step_for(sets: Sequence[ElementSet], step_s: float | None) -> float:
    shortest_period_s = min(es.period_min for es in sets) * 60.0
    step = shortest_period_s / 20.0
    return min(step, step_s) if step_s else step


def _psi_bound_rad(max_el_deg: float, alt_km: np.ndarray) -> np.ndarray:
    """Largest Earth central angle at which a satellite at ``alt_km`` is still ``max_el_deg`` up."""
    el = math.radians(max_el_deg)
    ratio = _EARTH_RADIUS_KM / (_EARTH_RADIUS_KM + np.maximum(alt_km, 100.0))
    return np.arccos(ratio * math.cos(el)) - el


def find_passes(
    element_sets: Sequence[ElementSet],
    site: SiteConfig,
    start_s: float,
    end_s: float,
    *,
    step_s: float | None = None,
    progress: ProgressCallback | None = None,
) -> PassSearch:
    """Passes above ``site``'s horizon mask that overlap ``[start_s, end_s]``.

    A plain synchronous function (CPU-bound): the daemon runs it in a worker thread.
    Passes in progress at either edge are reported whole (searched up to 30 min beyond).
    """
    result = PassSearch()
    if not element_sets or end_s <= start_s:
        return result
    st = _Station.of(site)
    mask = np.asarray(site.horizon_mask, dtype=float)
    mask_min_deg = float(mask[:, 1].min())
    step = _step_for(element_sets, step_s)
    t_lo, t_hi = start_s - _EDGE_MARGIN_S, end_s + _EDGE_MARGIN_S
    n_steps = int(math.ceil((t_hi - t_lo) / step))
    grid = t_lo + step * np.arange(n_steps + 1)
    jd, fr = _jd_split(grid)
    theta, theta_dot = _gmst(grid)
    # Along-track angular rate bound of the sub-satellite point (orbit + Earth's turn).
    per_batch = max(1, _BATCH_POINTS // len(grid))
    done = 0
    for b0 in range(0, len(element_sets), per_batch):
        batch = list(element_sets[b0:b0 + per_batch])
        satrecs = [es.satellite.model for es in batch]
        err, r, v = SatrecArray(satrecs).sgp4(jd, fr)
        del v  # the coarse grid needs no rates
        el, az, _, psi = _topocentric(r, None, theta[None, :], theta_dot, st)
        alt_km = np.linalg.norm(r, axis=-1) - _EARTH_RADIUS_KM
        del r
        bad = err != 0
        if bad.any():
            for i in np.flatnonzero(bad.any(axis=1)):
                k = int(np.argmax(bad[i]))
                when = datetime.fromtimestamp(grid[k], tz=UTC)
                result.problems.append(
                    f"{batch[i].name} ({batch[i].norad_id}): SGP4 fails from {when:%Y-%m-%dT%H:%M:%SZ} "
                    f"({SGP4_ERRORS[int(err[i, k])]}); no passes predicted where it fails"
                )
            el[bad] = -90.0
        g = el - site.horizon_min_el_deg(az) if len(mask) > 1 else el - mask_min_deg
        rate_rad_s = np.array([es.satellite.model.no_kozai / 60.0 for es in batch]) + _EARTH_RATE_RAD_S
        result.passes.extend(
            _refine_batch(batch, satrecs, st, site, grid, el, g, alt_km, psi, rate_rad_s, step, mask_min_deg)
        )
        done += len(batch)
        if progress is not None:
            progress(done, len(element_sets))
    result.passes = sorted(
        (p for p in result.passes if p.los_s > start_s and p.aos_s < end_s),
        key=lambda p: (p.aos_s, p.norad_id),
    )
    return result


def _refine_batch(
    batch: list[ElementSet], satrecs: list[object], st: _Station, site: SiteConfig,
    grid: np.ndarray, el: np.ndarray, g: np.ndarray, alt_km: np.ndarray, psi: np.ndarray,
    rate_rad_s: np.ndarray, step: float, mask_min_deg: float,
) -> list[PassEvent]:
    """The passes of one propagation batch, from its coarse grid to 10 ms: candidate
    culminations, their refinement, the run above the mask around each, and its edges."""
    si, ki = _candidates(el, psi, alt_km, rate_rad_s, step, mask_min_deg)
    if len(si) == 0:
        return []
    evaluate = _Evaluator(satrecs, st)
    tca, el_tca, g_tca = _culminations(evaluate, site, grid, si, ki)
    runs = _runs_above_mask(grid, g, si, ki, tca, g_tca)
    if not runs.owner:
        return []
    own = np.asarray(runs.owner)
    aos, los = _refine_edges(evaluate, site, si[own], runs)
    events: list[PassEvent] = []
    for j, row in enumerate(own):
        events.append(PassEvent(
            norad_id=batch[si[row]].norad_id,
            aos_s=float(aos[j]), tca_s=float(tca[row]), los_s=float(los[j]),
            max_el_deg=float(el_tca[row]), aos_clipped=runs.clipped_a[j], los_clipped=runs.clipped_l[j],
        ))
    return _merge(events)


def _candidates(el: np.ndarray, psi: np.ndarray, alt_km: np.ndarray, rate_rad_s: np.ndarray,
                step: float, mask_min_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(satellite row, grid index) of every grid maximum of elevation that could clear
    the lowest point of the mask."""
    # Local maxima of elevation on the grid (a plateau counts once, at its first point).
    interior = (el[:, 1:-1] >= el[:, :-2]) & (el[:, 1:-1] > el[:, 2:])
    si, ki = np.nonzero(interior)
    ki = ki + 1
    # Skip maxima that cannot clear the lowest point of the mask: between samples the
    # sub-satellite point moves at most rate*step, so the central angle at the true
    # culmination is no smaller than the sampled minimum minus that.
    psi_min = np.minimum(np.minimum(psi[si, ki - 1], psi[si, ki]), psi[si, ki + 1])
    # 1° of margin covers geodetic vs geocentric vertical and the oblate Earth.
    reach = psi_min - rate_rad_s[si] * step - math.radians(1.0)
    alt_hi = np.maximum(np.maximum(alt_km[si, ki - 1], alt_km[si, ki]), alt_km[si, ki + 1]) + 50.0
    keep = reach <= _psi_bound_rad(mask_min_deg, alt_hi)
    return si[keep], ki[keep]


def _culminations(evaluate: _Evaluator, site: SiteConfig, grid: np.ndarray, si: np.ndarray,
                  ki: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, elevation, elevation above the mask) of each candidate's culmination."""
    def el_rate_at(idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        return evaluate(si[idx], t)[2]

    # Culmination: root of the elevation rate between the neighbours of the grid maximum.
    a, b = grid[ki - 1], grid[ki + 1]
    ea, eb = evaluate(si, a)[2], evaluate(si, b)[2]
    proper = (ea > 0) & (eb < 0)
    tca = np.where(proper, 0.0, grid[ki])
    if proper.any():
        p = np.flatnonzero(proper)
        tca[p] = _illinois(lambda idx, t: el_rate_at(p[idx], t), a[p], b[p], ea[p], eb[p])
    el_tca, az_tca, _ = evaluate(si, tca)
    g_tca = el_tca - site.horizon_min_el_deg(az_tca)
    return tca, el_tca, g_tca


@dataclass
class _Runs:
    """Grid brackets of the rise and set of each candidate's run above the mask."""

    owner: list[int] = field(default_factory=list)   # candidate row of each run
    aos_lo: list[float] = field(default_factory=list)
    aos_hi: list[float] = field(default_factory=list)
    los_lo: list[float] = field(default_factory=list)
    los_hi: list[float] = field(default_factory=list)
    clipped_a: list[bool] = field(default_factory=list)  # the run starts at the grid's start
    clipped_l: list[bool] = field(default_factory=list)  # the run ends at the grid's end


def _runs_above_mask(grid: np.ndarray, g: np.ndarray, si: np.ndarray, ki: np.ndarray,
                     tca: np.ndarray, g_tca: np.ndarray) -> _Runs:
    """A pass is the continuous run above the mask around a culmination: grid points
    next to the culmination that clear the mask, extended while they keep clearing it.
    (Behind a tall mask obstacle at the culmination, the nearest grid point of the bump
    above the mask seeds the run; a pass split by an obstacle keeps only that part.)
    The rise is bracketed by the run's first point and the grid point before it, the
    set by its last point and the grid point after it."""
    m = g.shape[1]
    runs = _Runs()
    for row in range(len(si)):
        s, k, t_c = si[row], ki[row], tca[row]
        gs = g[s]
        left = int(np.searchsorted(grid, t_c, "right")) - 1  # last grid point <= tca
        right = left + 1
        if g_tca[row] > 0:
            first = last = t_c
        else:
            up = np.flatnonzero(gs[max(k - 2, 0):k + 3] > 0) + max(k - 2, 0)
            if len(up) == 0:
                continue
            seed = int(up[np.argmin(np.abs(up - k))])
            first = last = grid[seed]
            left, right = seed, seed
        while left >= 0 and gs[left] > 0:
            first = grid[left]
            left -= 1
        while right < m and gs[right] > 0:
            last = grid[right]
            right += 1
        runs.clipped_a.append(left < 0)
        runs.aos_lo.append(grid[max(left, 0)])
        runs.aos_hi.append(first)
        runs.clipped_l.append(right >= m)
        runs.los_lo.append(last)
        runs.los_hi.append(grid[min(right, m - 1)])
        runs.owner.append(row)
    return runs


def _refine_edges(evaluate: _Evaluator, site: SiteConfig, sat_of: np.ndarray,
                  runs: _Runs) -> tuple[np.ndarray, np.ndarray]:
    """(AOS, LOS) of each run, refined to 10 ms inside their grid brackets."""
    # Rises and sets are refined together: one SGP4 call per satellite per iteration.
    n_own = len(runs.owner)
    sat_2 = np.concatenate([sat_of, sat_of])
    lo_a = np.asarray(runs.aos_lo + runs.los_lo, dtype=float)
    hi_a = np.asarray(runs.aos_hi + runs.los_hi, dtype=float)
    clipped = np.asarray(runs.clipped_a + runs.clipped_l, dtype=bool)

    def g_at(rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        e, azv, _ = evaluate(sat_2[rows], t)
        return e - site.horizon_min_el_deg(azv)

    edges = lo_a.copy()
    work = np.flatnonzero(~clipped & (hi_a > lo_a))
    if len(work):
        f_both = g_at(np.concatenate([work, work]), np.concatenate([lo_a[work], hi_a[work]]))
        f_lo, f_hi = f_both[:len(work)], f_both[len(work):]
        # The culmination itself may sit a hair under the mask when only a grid point
        # cleared it; such brackets have no sign change and keep the grid point.
        ok = np.sign(f_lo) != np.sign(f_hi)
        w = work[ok]
        if len(w):
            edges[w] = _illinois(lambda idx, t: g_at(w[idx], t), lo_a[w], hi_a[w], f_lo[ok], f_hi[ok])
        bad = work[~ok]
        edges[bad] = np.where(f_lo[~ok] > 0, lo_a[bad], hi_a[bad])
    return edges[:n_own], edges[n_own:]


def _merge(events: list[PassEvent]) -> list[PassEvent]:
    """One pass per continuous time above the mask (two culminations can share one)."""
    out: list[PassEvent] = []
    for ev in sorted(events, key=lambda e: (e.norad_id, e.aos_s)):
        last = out[-1] if out else None
        if last is not None and last.norad_id == ev.norad_id and ev.aos_s <= last.los_s + _TOL_S:
            best = ev if ev.max_el_deg > last.max_el_deg else last
            out[-1] = PassEvent(
                norad_id=ev.norad_id, aos_s=last.aos_s, tca_s=best.tca_s,
                los_s=max(last.los_s, ev.los_s), max_el_deg=best.max_el_deg,
                aos_clipped=last.aos_clipped, los_clipped=ev.los_clipped,
            )
        else:
            out.append(ev)
    return out
