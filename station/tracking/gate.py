"""The one safety gate: every mount motion command passes here, whatever the backend.

:class:`GatedMount` wraps the backend instance and is the only holder of it (the factory
builds the backend and wraps it at once; nothing else keeps a reference). Each motion
command is checked against

* the azimuth travel (backend capabilities, cable wrap included, and the configured range),
* the elevation-axis travel (capabilities, ``safety.max_el_deg``; above 90° is a zenith flip),
* the true elevation floor: ``safety.min_el_deg`` and the site's horizon mask,
* the Sun exclusion angle, with the Sun computed for the command's time from the Clock,
* the commanded rates of streamed and program-track targets against the axis rate limits.

Positions *and the path a move may sweep* are checked. The gate does not know the
controller's exact path between two points, so it checks the whole az/el box spanned by
where the mount may be now (its last reading and every target sent since) and the new
target: each axis moves monotonically on a point-to-point slew, so the path stays in that
box. This is conservative: a long slew past a tall horizon obstacle or across the Sun's
side of the sky is refused even if a clever path existed, and the operator splits it.

A refused command raises :class:`CommandRefused` (which rule, why, the target), is logged,
is counted, and never reaches the device. ``stop()`` is never refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from drivers.mount.base import (
    Mount,
    MountCapabilities,
    MountPosition,
    MountStatus,
    TrackPoint,
)
from station.clock import Clock
from station.config.mount import SafetyConfig
from station.config.site import SiteConfig

log = logging.getLogger(__name__)

#: The Sun never moves faster than this across a horizon-fixed sky (Earth's rotation,
#: 0.00418 deg/s, plus its own motion); stale Sun positions are padded by it.
SUN_MAX_RATE_DEG_S = 0.005

#: Elevation sampling step of the Sun-distance search over a box (error <= half of it).
_SUN_EL_STEP_DEG = 0.1

#: Shortest time between two readings used for a rate estimate.
_RATE_BASELINE_S = 0.04

SunFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Rule(StrEnum):
    """Which check refused a command."""

    NOT_FINITE = "not_finite"
    AZIMUTH = "azimuth_limit"
    ELEVATION = "elevation_limit"
    HORIZON = "horizon"
    SUN = "sun_exclusion"
    RATE = "rate_limit"
    MALFORMED = "malformed"


class CommandRefused(Exception):
    """The safety gate refused a mount command; it did not reach the device."""

    def __init__(self, command: str, rule: Rule, reason: str, *,
                 az_deg: float | None = None, el_deg: float | None = None):
        self.command = command
        self.rule = rule
        self.reason = reason
        self.az_deg = az_deg
        self.el_deg = el_deg
        target = "" if az_deg is None else f" to az {az_deg:.4f}°, el {el_deg:.4f}°"
        super().__init__(f"safety gate refused {command}{target}: {reason} [{rule}]")


@dataclass(frozen=True, slots=True)
class GateLimits:
    """The effective limits: the tighter of the backend's capabilities and the config."""

    az_min_deg: float
    az_max_deg: float
    #: Elevation-axis travel; above 90 means over the zenith.
    el_axis_min_deg: float
    el_axis_max_deg: float
    #: True elevation floor (the horizon mask applies on top).
    min_el_deg: float
    az_rate_deg_s: float
    el_rate_deg_s: float
    sun_exclusion_deg: float
    rate_tolerance: float
    stream_extrapolation_s: float = 0.0
    az_accel_deg_s2: float = math.inf
    el_accel_deg_s2: float = math.inf

    @property
    def el_over_zenith(self) -> bool:
        return self.el_axis_max_deg > 90.0


def effective_limits(caps: MountCapabilities, safety: SafetyConfig) -> GateLimits:
    """Combine the backend's capabilities with the configured safety limits."""
    az_min = caps.az.min_deg if safety.az_min_deg is None else max(caps.az.min_deg, safety.az_min_deg)
    az_max = caps.az.max_deg if safety.az_max_deg is None else min(caps.az.max_deg, safety.az_max_deg)
    if az_min >= az_max:
        raise ValueError(
            f"the configured azimuth range {safety.az_min_deg}…{safety.az_max_deg}° leaves "
            f"nothing of the mount's travel {caps.az.min_deg:g}…{caps.az.max_deg:g}°"
        )
    el_max = min(caps.el.max_deg, safety.max_el_deg)
    if not caps.el_over_zenith:
        el_max = min(el_max, 90.0)
    el_min = max(caps.el.min_deg, -5.0)
    az_rate = caps.az.max_rate_deg_s
    if safety.max_az_rate_deg_s is not None:
        az_rate = min(az_rate, safety.max_az_rate_deg_s)
    el_rate = caps.el.max_rate_deg_s
    if safety.max_el_rate_deg_s is not None:
        el_rate = min(el_rate, safety.max_el_rate_deg_s)
    return GateLimits(
        az_min_deg=az_min, az_max_deg=az_max, el_axis_min_deg=el_min, el_axis_max_deg=el_max,
        min_el_deg=max(safety.min_el_deg, el_min), az_rate_deg_s=az_rate, el_rate_deg_s=el_rate,
        sun_exclusion_deg=safety.sun_exclusion_deg, rate_tolerance=safety.rate_tolerance,
        stream_extrapolation_s=safety.stream_extrapolation_s,
        az_accel_deg_s2=caps.az.max_accel_deg_s2, el_accel_deg_s2=caps.el.max_accel_deg_s2,
    )


def true_direction(az_deg: float, el_deg: float) -> tuple[float, float]:
    """The sky direction (azimuth 0..360, elevation <= 90) of mount axis angles;
    an elevation axis past 90° looks over the zenith, at the opposite azimuth."""
    if el_deg > 90.0:
        return (az_deg + 180.0) % 360.0, 180.0 - el_deg
    return az_deg % 360.0, el_deg


def _closest_in_interval(target_deg: np.ndarray, lo_deg: float, hi_deg: float) -> np.ndarray:
    """For each target azimuth, the azimuth in [lo, hi] nearest to it around the circle."""
    if hi_deg - lo_deg >= 360.0:
        return target_deg
    shifted = lo_deg + np.mod(target_deg - lo_deg, 360.0)
    inside = shifted <= hi_deg
    to_hi = shifted - hi_deg
    to_lo = lo_deg + 360.0 - shifted
    return np.where(inside, shifted, np.where(to_hi <= to_lo, hi_deg, lo_deg))


def box_sun_distance_deg(az_lo: float, az_hi: float, el_lo: float, el_hi: float,
                         sun_az_deg: float, sun_el_deg: float) -> float:
    """Smallest angle between the Sun and any direction in the mount-coordinate box.

    Exact in azimuth (for each elevation the nearest azimuth in range is found), sampled
    in elevation every 0.1°; the result is a lower bound (half a step is subtracted).
    """
    n = max(2, math.ceil((el_hi - el_lo) / _SUN_EL_STEP_DEG) + 1)
    e = np.linspace(el_lo, el_hi, n)
    cos_e = np.cos(np.radians(e))
    # Past the zenith the axis looks the other way, so the nearest azimuth is the far one.
    want = np.where(cos_e >= 0, sun_az_deg, sun_az_deg + 180.0)
    a = _closest_in_interval(np.asarray(want, dtype=float), az_lo, az_hi)
    es, as_ = math.radians(sun_el_deg), math.radians(sun_az_deg)
    cos_d = np.sin(np.radians(e)) * math.sin(es) + cos_e * math.cos(es) * np.cos(np.radians(a) - as_)
    d = float(np.degrees(np.arccos(np.clip(cos_d, -1.0, 1.0))).min())
    step = (el_hi - el_lo) / (n - 1) if n > 1 else 0.0
    return d - step / 2.0


def mask_max_deg(site: SiteConfig, az_lo: float, az_hi: float) -> float:
    """Highest horizon-mask elevation over the azimuths [az_lo, az_hi] (any wrap)."""
    pts = site.horizon_mask
    if len(pts) == 1:
        return float(pts[0][1])
    if az_hi - az_lo >= 360.0:
        return float(max(p[1] for p in pts))
    probes = [az_lo, az_hi]
    k0 = math.floor(az_lo / 360.0)
    for k in range(k0, k0 + 3):
        probes += [v + 360.0 * k for v, _ in pts if az_lo <= v + 360.0 * k <= az_hi]
    return float(np.max(site.horizon_min_el_deg(np.asarray(probes))))


#: How far outside its travel a position reading may be and still count as at the stop.
READING_TOLERANCE_DEG = 0.01


class GatedMount:
    """The mount as the station sees it: a backend behind the safety gate.

    ``sun_altaz`` maps clock seconds (array) to the Sun's ``(az_deg, el_deg)``; it defaults
    to :func:`station.orbit.geometry.sun_altaz` for the site (tests pass their own Sun).
    """

    def __init__(
        self,
        backend: Mount,
        *,
        site: SiteConfig,
        safety: SafetyConfig,
        clock: Clock,
        park_az_deg: float,
        park_el_deg: float,
        park_tolerance_deg: float = 0.05,
        command_timeout_s: float = 10.0,
        sun_altaz: SunFunction | None = None,
    ) -> None:
        # Name-mangled: the gate is the only way to the device.
        self.__backend = backend
        self.site = site
        self.safety = safety
        self.clock = clock
        self.name = backend.name
        self.park_az_deg = park_az_deg
        self.park_el_deg = park_el_deg
        self.park_tolerance_deg = park_tolerance_deg
        self.command_timeout_s = command_timeout_s
        if sun_altaz is None:
            from station.orbit.geometry import sun_altaz as _sun

            def sun_altaz(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return _sun(site, t)
        self._sun_fn: SunFunction = sun_altaz
        self._sun_cache: tuple[float, float, float] | None = None  # (time_s, az, el)
        self._dry_run = False
        self.refused_count = 0
        self.accepted_count = 0
        self.last_refusal: CommandRefused | None = None
        self.limits = effective_limits(backend.capabilities, safety)
        # Some backends learn their travel only on connect (rotctld's dump_caps): the park
        # position is checked against the travel there, against the sky here.
        self._check_park_position(travel=False)
        #: Last reading of the mount, and the box of every target sent since.
        self._last_pos: MountPosition | None = None
        #: Recent readings, for the rate estimate of the stream check.
        self._readings: deque[MountPosition] = deque(maxlen=16)
        self._since_read: list[tuple[float, float]] = []
        #: Recent timed (streamed) targets: (time_s, az, el), for rates and extrapolation.
        self._timed: list[tuple[float, float, float]] = []
        #: The last target if it came from track_to (the rate rule applies after it).
        self._streamed: set[tuple[float, float, float]] = set()

    # -- read-only passthroughs --------------------------------------------------------
    @property
    def capabilities(self) -> MountCapabilities:
        return self.__backend.capabilities

    async def connect(self) -> None:
        """Connect the backend; its limits may only be known now (e.g. rotctld's
        ``dump_caps``), so the effective limits and the park position are re-checked."""
        async with asyncio.timeout(self.command_timeout_s):
            await self.__backend.connect()
        self.limits = effective_limits(self.__backend.capabilities, self.safety)
        self._check_park_position()

    async def close(self) -> None:
        async with asyncio.timeout(self.command_timeout_s):
            await self.__backend.close()

    async def position(self) -> MountPosition:
        """Read the axes; the reading also narrows where the gate thinks the mount may be."""
        async with asyncio.timeout(self.command_timeout_s):
            pos = self._within_travel(await self.__backend.position())
        self._last_pos = pos
        self._readings.append(pos)
        # The mount may still be moving to the latest target.
        self._since_read = self._since_read[-1:]
        return pos

    def _within_travel(self, pos: MountPosition) -> MountPosition:
        """A reading a hair outside the travel (encoder noise at a hard stop, e.g. 90.0001°
        at the zenith park) is the limit itself: the axis cannot be beyond its stop, and
        taking the noise literally would make every move from there "leave the travel".
        Readings further out are kept as they are, so a real fault still shows."""
        lim = self.limits
        az, el = pos.az_deg, pos.el_deg
        tol = READING_TOLERANCE_DEG
        if lim.az_max_deg < az <= lim.az_max_deg + tol:
            az = lim.az_max_deg
        elif lim.az_min_deg - tol <= az < lim.az_min_deg:
            az = lim.az_min_deg
        if lim.el_axis_max_deg < el <= lim.el_axis_max_deg + tol:
            el = lim.el_axis_max_deg
        elif lim.el_axis_min_deg - tol <= el < lim.el_axis_min_deg:
            el = lim.el_axis_min_deg
        if (az, el) == (pos.az_deg, pos.el_deg):
            return pos
        return MountPosition(az_deg=az, el_deg=el, time_s=pos.time_s)

    async def status(self) -> MountStatus:
        async with asyncio.timeout(self.command_timeout_s):
            return await self.__backend.status()

    def sun_altaz_at(self, time_s: float) -> tuple[float, float, float]:
        """The Sun's ``(az_deg, el_deg, uncertainty_deg)`` at ``time_s`` (cached, padded)."""
        cached = self._sun_cache
        if cached is None or abs(time_s - cached[0]) > self.safety.sun_cache_s:
            az, el = self._sun_fn(np.asarray([time_s], dtype=float))
            cached = (time_s, float(np.asarray(az).ravel()[0]), float(np.asarray(el).ravel()[0]))
            self._sun_cache = cached
        return cached[1], cached[2], SUN_MAX_RATE_DEG_S * abs(time_s - cached[0])

    def is_parked(self, pos: MountPosition) -> bool:
        """True when ``pos`` is the configured park position (within the tolerance)."""
        tol = self.park_tolerance_deg
        return abs(pos.az_deg - self.park_az_deg) <= tol and abs(pos.el_deg - self.park_el_deg) <= tol

    # -- motion commands ----------------------------------------------------------------
    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        """Point-to-point move (the controller picks the speed); the swept box is checked.

        Two slews in quick succession look like a stream to many controllers, which then
        extrapolate; the gate checks that reach as it does for :meth:`track_to`.
        """
        await self._target("slew_to", az_deg, el_deg, self.clock.now_s(), enforce_rate=False)

    async def track_to(self, az_deg: float, el_deg: float, time_s: float) -> None:
        """A streamed tracking target meant for clock time ``time_s``.

        Besides the position checks, the rate implied by the previous streamed target
        (when it was recent) must be within the axis rate limits, and the box the
        controller may reach by extrapolating the stream for
        ``safety.stream_extrapolation_s`` (if the next target never came) and braking
        must be allowed too.
        """
        await self._target("track_to", az_deg, el_deg, time_s, enforce_rate=True)

    async def _target(self, cmd: str, az_deg: float, el_deg: float, time_s: float, *,
                      enforce_rate: bool) -> None:
        prev = self._timed[-1] if self._timed else None
        if enforce_rate and prev is not None and time_s <= prev[0]:
            self._refuse(cmd, Rule.MALFORMED,
                         f"target time {time_s:.3f} is not after the previous one {prev[0]:.3f}",
                         az_deg, el_deg)
        # Targets closer together than this may be taken as one stream by the controller.
        window_s = max(2.0, self.safety.stream_extrapolation_s) if enforce_rate else \
            self.safety.stream_extrapolation_s
        hist = self._timed[-2:] if prev is not None and 0.0 < time_s - prev[0] <= window_s else []
        new = (time_s, az_deg, el_deg)
        extra: list[tuple[float, float]] = []
        self._check_static(cmd, az_deg, el_deg)
        await self._fresh_position()
        # The rate limit binds between streamed targets; after a plain slew, a target too
        # fast to continue it is what the controller takes as a new plain move.
        streamed = enforce_rate and bool(hist) and prev in self._streamed
        if hist and not streamed and not self._within_rate(hist[-1], new):
            hist = []
        if hist:
            if streamed:
                self._check_rate(cmd, hist[-1], new)
            for corner in self._stream_reach([*hist, new]):
                self._check_static(cmd + " (extrapolated and braking)", *corner)
                extra.append(corner)
        self._check_move(cmd, az_deg, el_deg, max(time_s, self.clock.now_s()), extra=extra)
        self._timed = [*hist, new]
        self._streamed = {new} if enforce_rate else set()
        await self._send(self.__backend.slew_to(az_deg, el_deg), az_deg, el_deg, extra=extra)

    def _within_rate(self, a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
        caps = self.capabilities
        dt = b[0] - a[0]
        return (abs(b[1] - a[1]) <= caps.az.max_rate_deg_s * dt * self.limits.rate_tolerance
                and abs(b[2] - a[2]) <= caps.el.max_rate_deg_s * dt * self.limits.rate_tolerance)

    def _stream_reach(self, pts: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
        """Corners of the box a streaming controller may reach if the stream stopped now.

        It extrapolates the stream (rate and acceleration from the last three targets) for
        ``stream_extrapolation_s``, then brakes. The braking distance is taken from the
        fastest the axis may then be moving: the stream's rate, plus how far the mount's
        measured rate differs from it (it may be catching up), plus the speed a lagging
        mount reaches closing its lag; all capped at the axis's maximum rate.
        """
        horizon = self.safety.stream_extrapolation_s
        caps = self.capabilities
        now = self.clock.now_s()
        pos, prev = self._last_pos, None
        if pos is not None:
            # Readings too close together make a noisy rate (encoder noise, quantisation).
            for r in reversed(self._readings):
                if pos.time_s - r.time_s >= _RATE_BASELINE_S:
                    prev = r
                    break
        lo: list[float] = []
        hi: list[float] = []
        for i, lim in ((1, caps.az), (2, caps.el)):
            t2, x2 = pts[-1][0], pts[-1][i]
            t1, x1 = pts[-2][0], pts[-2][i]
            d2 = (x2 - x1) / (t2 - t1)
            acc = 0.0
            if len(pts) >= 3:
                t0, x0 = pts[-3][0], pts[-3][i]
                acc = 2.0 * (d2 - (x1 - x0) / (t1 - t0)) / (t2 - t0)
                acc = max(-lim.max_accel_deg_s2, min(lim.max_accel_deg_s2, acc))
            v = d2 + 0.5 * acc * (t2 - t1)
            x = x2 + v * horizon + 0.5 * acc * horizon * horizon
            v_end = v + acc * horizon
            a = 0.9 * lim.max_accel_deg_s2
            if pos is None or prev is None or pos.time_s - prev.time_s > 2.0:
                dv = lim.max_rate_deg_s + abs(d2)
            else:
                p_now = (pos.az_deg, pos.el_deg)[i - 1]
                p_prev = (prev.az_deg, prev.el_deg)[i - 1]
                v_meas = (p_now - p_prev) / (pos.time_s - prev.time_s)
                lag = abs(p_now - (x1 + d2 * (pos.time_s - t1)))
                dv = (abs(v_meas - d2) + lim.max_accel_deg_s2 * (now - prev.time_s)
                      + math.sqrt(2.0 * a * lag))
            # The axis brakes in whichever direction it may be moving.
            v_hi = min(lim.max_rate_deg_s, max(0.0, v_end + dv))
            v_lo = min(lim.max_rate_deg_s, max(0.0, -(v_end - dv)))
            lo.append(min(lim.max_deg, max(lim.min_deg, x - v_lo * v_lo / (2.0 * a))))
            hi.append(min(lim.max_deg, max(lim.min_deg, x + v_hi * v_hi / (2.0 * a))))
        return [(lo[0], lo[1]), (hi[0], hi[1])]

    async def load_track(self, points: Sequence[TrackPoint]) -> None:
        """Program track: every point, every segment (with its interpolation overshoot
        bound), the rates and the Sun at each point's time are checked first."""
        pts = list(points)
        cmd = "load_track"
        if len(pts) < 2:
            self._refuse(cmd, Rule.MALFORMED, f"a program track needs >= 2 points, got {len(pts)}")
        t = np.array([p.time_s for p in pts], dtype=float)
        az = np.array([p.az_deg for p in pts], dtype=float)
        el = np.array([p.el_deg for p in pts], dtype=float)
        if not (np.isfinite(t).all() and np.isfinite(az).all() and np.isfinite(el).all()):
            self._refuse(cmd, Rule.NOT_FINITE, "a point has a non-finite time or angle")
        if not (np.diff(t) > 0).all():
            self._refuse(cmd, Rule.MALFORMED, "point times must increase strictly")
        dt = np.diff(t)
        lim = self.limits
        for name, x, rate in (("azimuth", az, lim.az_rate_deg_s), ("elevation", el, lim.el_rate_deg_s)):
            chord = np.diff(x) / dt
            # Catmull-Rom slopes: what a cubic program-track interpolation runs at.
            slopes = np.empty_like(x)
            slopes[1:-1] = (x[2:] - x[:-2]) / (t[2:] - t[:-2])
            slopes[0], slopes[-1] = chord[0], chord[-1]
            worst = max(float(np.abs(chord).max()), float(np.abs(slopes).max()))
            if worst > rate * lim.rate_tolerance:
                i = int(np.argmax(np.abs(chord)))
                self._refuse(cmd, Rule.RATE,
                             f"{name} rate {worst:.3f}°/s exceeds the limit {rate:g}°/s "
                             f"(near t={t[i]:.1f})", float(az[i]), float(el[i]))
        # Interpolation overshoot bound of a cubic Hermite segment (see _hermite_pad).
        pad_az = self._hermite_pad(t, az)
        pad_el = self._hermite_pad(t, el)
        await self._fresh_position()
        now = self.clock.now_s()
        self._check_move(cmd, float(az[0]), float(el[0]), max(now, float(t[0])))
        for i in range(len(pts) - 1):
            self._check_box(
                cmd,
                min(az[i], az[i + 1]) - pad_az[i], max(az[i], az[i + 1]) + pad_az[i],
                min(el[i], el[i + 1]) - pad_el[i], max(el[i], el[i + 1]) + pad_el[i],
                max(now, float(t[i])), float(az[i + 1]), float(el[i + 1]),
            )
        self._timed = []
        await self._send(self.__backend.load_track(pts), float(az[-1]), float(el[-1]), all_pts=pts)

    async def park(self) -> None:
        """Go to the configured park position (checked like any move, the Sun included).

        Uses the controller's own park when it parks at the same place, else a slew.
        """
        await self._fresh_position()
        az, el = self.park_az_deg, self.park_el_deg
        self._check_move("park", az, el, self.clock.now_s())
        self._timed = []
        caps = self.capabilities
        tol = self.park_tolerance_deg
        if abs(caps.park_az_deg - az) <= tol and abs(caps.park_el_deg - el) <= tol:
            await self._send(self.__backend.park(), az, el)
        else:
            await self._send(self.__backend.slew_to(az, el), az, el)
        log.info("mount %s: park commanded (az %.3f°, el %.3f°)", self.name, az, el)

    async def stop(self) -> None:
        """Stop both axes where they are; never refused."""
        async with asyncio.timeout(self.command_timeout_s):
            await self.__backend.stop()
        self._timed = []
        log.info("mount %s: stop commanded", self.name)

    # -- checks -------------------------------------------------------------------------
    def would_refuse(self, az_deg: float, el_deg: float) -> CommandRefused | None:
        """What a ``slew_to(az, el)`` from the mount's last known position would be
        refused for (None: it would pass). Sends nothing, counts nothing."""
        self._dry_run = True
        try:
            self._check_move("slew_to", az_deg, el_deg, self.clock.now_s())
        except CommandRefused as exc:
            return exc
        finally:
            self._dry_run = False
        return None

    def check_target(self, az_deg: float, el_deg: float, time_s: float | None = None) -> None:
        """Raise :class:`CommandRefused` if a *position* (no path) is not allowed at ``time_s``."""
        t = self.clock.now_s() if time_s is None else time_s
        self._check_static("check", az_deg, el_deg)
        self._check_box("check", az_deg, az_deg, el_deg, el_deg, t, az_deg, el_deg)

    def _check_park_position(self, *, travel: bool = True) -> None:
        """The park position must be inside the travel and above the horizon mask (the
        Sun is checked when park is commanded)."""
        az, el = self.park_az_deg, self.park_el_deg
        if travel:
            self._check_static("park", az, el)
        else:
            s = self.safety
            if ((s.az_min_deg is not None and az < s.az_min_deg)
                    or (s.az_max_deg is not None and az > s.az_max_deg) or el > s.max_el_deg):
                self._refuse("park", Rule.AZIMUTH if el <= s.max_el_deg else Rule.ELEVATION,
                             "the park position is outside the configured [safety] travel", az, el)
        true_az, true_el = true_direction(az, el)
        floor = max(self.limits.min_el_deg, float(self.site.horizon_min_el_deg(true_az)))
        if true_el < floor:
            self._refuse("park", Rule.HORIZON,
                         f"the park position's elevation {true_el:g}° is below the horizon "
                         f"mask / floor {floor:g}° there", az, el)

    def _check_static(self, cmd: str, az: float, el: float) -> None:
        lim = self.limits
        if not (math.isfinite(az) and math.isfinite(el)):
            self._refuse(cmd, Rule.NOT_FINITE, "the target is not a finite number", az, el)
        if not lim.az_min_deg <= az <= lim.az_max_deg:
            self._refuse(cmd, Rule.AZIMUTH,
                         f"azimuth {az:.4f}° is outside the allowed travel "
                         f"{lim.az_min_deg:g}…{lim.az_max_deg:g}°", az, el)
        if not lim.el_axis_min_deg <= el <= lim.el_axis_max_deg:
            self._refuse(cmd, Rule.ELEVATION,
                         f"elevation axis {el:.4f}° is outside the allowed travel "
                         f"{lim.el_axis_min_deg:g}…{lim.el_axis_max_deg:g}°", az, el)

    def _check_move(self, cmd: str, az: float, el: float, time_s: float,
                    extra: Sequence[tuple[float, float]] = ()) -> None:
        self._check_static(cmd, az, el)
        pos = self._last_pos
        if pos is not None and (floor := self._floor_at(pos.az_deg, pos.el_deg)) is not None:
            # Started (or was left) under the floor: the only way out is straight up.
            same_az = [(a, e) for a, e in [(az, el), *extra, *self._since_read]
                       if abs(a - pos.az_deg) <= 0.01 and e >= pos.el_deg - 0.01]
            if len(same_az) == 1 + len(extra) + len(self._since_read) and el > pos.el_deg:
                self._check_box(cmd, az, az, el, el, time_s, az, el)
                lo_az, hi_az = min(az, pos.az_deg), max(az, pos.az_deg)
                self._check_box(cmd, lo_az, hi_az, pos.el_deg, el, time_s, az, el, floor=False)
                return
            self._refuse(cmd, Rule.HORIZON,
                         f"the mount is under the elevation floor / horizon mask (az "
                         f"{pos.az_deg:.2f}°, el {pos.el_deg:.2f}°, floor {floor:.2f}°); raise it "
                         f"first at its own azimuth, e.g. goto {pos.az_deg:.2f} {floor + 1:.1f}",
                         az, el)
        corners = [(az, el), *extra, *self._since_read]
        if self._last_pos is not None:
            corners.append((self._last_pos.az_deg, self._last_pos.el_deg))
        azs = [c[0] for c in corners]
        els = [c[1] for c in corners]
        self._check_box(cmd, min(azs), max(azs), min(els), max(els), time_s, az, el)

    def _floor_at(self, az: float, el: float) -> float | None:
        """The elevation floor at (az, el) if that direction is under it, else None."""
        true_az, true_el = true_direction(az, el)
        floor = max(self.limits.min_el_deg, float(self.site.horizon_min_el_deg(true_az)))
        return floor if true_el < floor - 1e-6 else None

    def _check_box(self, cmd: str, az_lo: float, az_hi: float, el_lo: float, el_hi: float,
                   time_s: float, az: float, el: float, *, floor: bool = True) -> None:
        """Every direction the mount may sweep through on the way must be allowed."""
        lim = self.limits
        if az_lo < lim.az_min_deg or az_hi > lim.az_max_deg:
            self._refuse(cmd, Rule.AZIMUTH,
                         f"the move spans azimuth {az_lo:.4f}…{az_hi:.4f}°, outside the allowed "
                         f"travel {lim.az_min_deg:g}…{lim.az_max_deg:g}°", az, el)
        if el_lo < lim.el_axis_min_deg or el_hi > lim.el_axis_max_deg:
            self._refuse(cmd, Rule.ELEVATION,
                         f"the move spans elevation axis {el_lo:.4f}…{el_hi:.4f}°, outside the "
                         f"allowed travel {lim.el_axis_min_deg:g}…{lim.el_axis_max_deg:g}°", az, el)
        # True elevation is lowest at the box's elevation ends (it peaks at 90 in between).
        true_lo = min(el_lo if el_lo <= 90 else 180 - el_lo, el_hi if el_hi <= 90 else 180 - el_hi)
        if not floor:
            true_lo = 90.0
        if true_lo < lim.min_el_deg:
            self._refuse(cmd, Rule.ELEVATION,
                         f"the move reaches elevation {true_lo:.4f}°, below the limit "
                         f"{lim.min_el_deg:g}°", az, el)
        mask = -90.0
        if el_lo <= 90.0:
            mask = max(mask, mask_max_deg(self.site, az_lo, az_hi))
        if el_hi > 90.0:
            mask = max(mask, mask_max_deg(self.site, az_lo + 180.0, az_hi + 180.0))
        if true_lo < mask:
            self._refuse(cmd, Rule.HORIZON,
                         f"the move reaches elevation {true_lo:.4f}° where the horizon mask "
                         f"is up to {mask:.2f}° (azimuth {az_lo:.2f}…{az_hi:.2f}°)", az, el)
        if lim.sun_exclusion_deg > 0:
            sun_az, sun_el, pad = self.sun_altaz_at(time_s)
            d = box_sun_distance_deg(az_lo, az_hi, el_lo, el_hi, sun_az, sun_el)
            if d - pad < lim.sun_exclusion_deg:
                self._refuse(cmd, Rule.SUN,
                             f"the move comes within {max(d, 0.0):.2f}° of the Sun (az "
                             f"{sun_az:.2f}°, el {sun_el:.2f}°); the exclusion is "
                             f"{lim.sun_exclusion_deg:g}°", az, el)

    def _check_rate(self, cmd: str, a: tuple[float, float, float], b: tuple[float, float, float]) -> None:
        lim = self.limits
        dt = b[0] - a[0]
        for name, i, rate in (("azimuth", 1, lim.az_rate_deg_s), ("elevation", 2, lim.el_rate_deg_s)):
            r = abs(b[i] - a[i]) / dt
            if r > rate * lim.rate_tolerance:
                self._refuse(cmd, Rule.RATE,
                             f"commanded {name} rate {r:.3f}°/s exceeds the limit {rate:g}°/s",
                             b[1], b[2])

    @staticmethod
    def _hermite_pad(t: np.ndarray, x: np.ndarray) -> np.ndarray:
        m = np.empty_like(x)
        m[1:-1] = (x[2:] - x[:-2]) / (t[2:] - t[:-2])
        m[0] = (x[1] - x[0]) / (t[1] - t[0])
        m[-1] = (x[-1] - x[-2]) / (t[-1] - t[-2])
        h = np.diff(t)
        chord = np.diff(x) / h
        # Hermite minus the chord is h*(h10*(m0-c) + h11*(m1-c)), |h10|,|h11| <= 4/27.
        return (4.0 / 27.0) * h * (np.abs(m[:-1] - chord) + np.abs(m[1:] - chord))

    def _refuse(self, cmd: str, rule: Rule, reason: str,
                az: float | None = None, el: float | None = None) -> None:
        exc = CommandRefused(cmd, rule, reason, az_deg=az, el_deg=el)
        if self._dry_run:
            raise exc
        self.refused_count += 1
        self.last_refusal = exc
        log.warning("%s: %s", self.name, exc)
        raise exc

    async def _fresh_position(self) -> None:
        pos = self._last_pos
        if pos is None or self.clock.now_s() - pos.time_s > self.safety.position_max_age_s:
            await self.position()

    async def _send(self, call: object, az: float, el: float,
                    all_pts: Sequence[TrackPoint] | None = None,
                    extra: Sequence[tuple[float, float]] = ()) -> None:
        async with asyncio.timeout(self.command_timeout_s):
            await call  # type: ignore[misc]
        self.accepted_count += 1
        if all_pts is not None:
            self._since_read.extend((p.az_deg, p.el_deg) for p in all_pts)
        else:
            self._since_read.extend(extra)
            self._since_read.append((az, el))
        # Keep the envelope cheap: its box is all that matters.
        if len(self._since_read) > 8:
            azs = [p[0] for p in self._since_read]
            els = [p[1] for p in self._since_read]
            last = self._since_read[-1]
            self._since_read = [(min(azs), min(els)), (max(azs), max(els)), last]
