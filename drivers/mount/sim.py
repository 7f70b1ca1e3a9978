"""Simulated two-axis alt-az mount: dynamics on the station Clock, not a mock.

Each axis is a double integrator with velocity and acceleration limits, driven by a
position + velocity-feedforward controller (a square-root braking law far from the
setpoint, linear close to it), integrated in fixed steps of ``step_s`` clock seconds.
The state is advanced *lazily* to ``clock.now_s()`` whenever anyone asks, so the mount
behaves the same on a real, scaled, autojump or manually stepped clock and needs no
background task.

Streamed tracking: successive ``slew_to`` targets arriving at a steady rate are treated as
samples of a moving target. Velocity and acceleration are estimated from the last three
targets and the setpoint is extrapolated between commands for at most
``extrapolation_horizon_s`` (after that it freezes, and the mount brakes to it, so a
silent client cannot drive it away). A target that implies more than the axis's maximum
rate, or that arrives after a gap longer than the horizon, starts a plain point-to-point
slew. Program track (``load_track``) follows a cubic Hermite interpolation of the points.

Fault injection for tests: :meth:`SimMount.inject_disconnect`,
:meth:`SimMount.inject_stuck_axis`, :meth:`SimMount.clear_fault`.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from drivers.clock import Clock
from drivers.mount._common import AxisOptions, check_target
from drivers.mount.base import (
    AxisLimits,
    Mount,
    MountCapabilities,
    MountCommandRejected,
    MountConnectionLost,
    MountNotConnected,
    MountPosition,
    MountStatus,
    TrackPoint,
)

#: Below these the axis counts as settled on its setpoint (snapped, velocity zero).
_SETTLE_POS_DEG = 1e-7
_SETTLE_VEL_DEG_S = 1e-6
#: |velocity| above which the axis counts as moving.
_MOVING_VEL_DEG_S = 1e-5


@dataclass(frozen=True, slots=True)
class SimCommand:
    """One command as the simulated controller received it (for tests and audits)."""

    time_s: float
    kind: Literal["slew", "track", "stop", "park"]
    az_deg: float | None = None
    el_deg: float | None = None


class _Axis:
    """One axis's state and dynamics."""

    __slots__ = ("name", "lim", "pos_deg", "vel_deg_s", "stuck", "gain_per_s")

    def __init__(self, name: str, lim: AxisLimits, pos_deg: float, gain_per_s: float):
        self.name = name
        self.lim = lim
        self.pos_deg = pos_deg
        self.vel_deg_s = 0.0
        self.stuck = False
        self.gain_per_s = gain_per_s

    def step(self, h_s: float, sp_deg: float | None, vff_deg_s: float) -> None:
        """Advance ``h_s`` seconds toward setpoint ``sp_deg`` (None: brake to a stop)."""
        if self.stuck:
            self.vel_deg_s = 0.0
            return
        amax = self.lim.max_accel_deg_s2
        vmax = self.lim.max_rate_deg_s
        if sp_deg is None:
            v_des = 0.0
        else:
            err = sp_deg - self.pos_deg
            v_des = vff_deg_s + _sqrt_law(err, self.gain_per_s, 0.95 * amax)
        v_des = max(-vmax, min(vmax, v_des))
        acc = max(-amax, min(amax, (v_des - self.vel_deg_s) / h_s))
        v0 = self.vel_deg_s
        self.vel_deg_s = v0 + acc * h_s
        self.pos_deg += v0 * h_s + 0.5 * acc * h_s * h_s
        # The hard stops: the controller's own setpoints never ask for this, but a
        # deceleration that cannot be completed in time ends here, as it would on steel.
        if self.pos_deg < self.lim.min_deg:
            self.pos_deg, self.vel_deg_s = self.lim.min_deg, 0.0
        elif self.pos_deg > self.lim.max_deg:
            self.pos_deg, self.vel_deg_s = self.lim.max_deg, 0.0

    def settled_on(self, sp_deg: float | None) -> bool:
        if self.stuck:
            return True  # it will not move again until the fault is cleared
        if abs(self.vel_deg_s) > _SETTLE_VEL_DEG_S:
            return False
        return sp_deg is None or abs(sp_deg - self.pos_deg) < _SETTLE_POS_DEG

    def snap(self, sp_deg: float | None) -> None:
        if sp_deg is not None and not self.stuck:
            self.pos_deg = sp_deg
        self.vel_deg_s = 0.0


def _sqrt_law(err_deg: float, gain_per_s: float, accel_deg_s2: float) -> float:
    """Velocity that closes ``err_deg``: linear near zero, braking-limited far away."""
    linear_deg = accel_deg_s2 / (gain_per_s * gain_per_s)
    if abs(err_deg) <= linear_deg:
        return gain_per_s * err_deg
    return math.copysign(math.sqrt(2.0 * accel_deg_s2 * (abs(err_deg) - 0.5 * linear_deg)), err_deg)


class _Setpoint:
    """Where the controller wants each axis at clock time t, and how fast it moves."""

    def at(self, t_s: float) -> tuple[float, float, float, float]:
        """(az_deg, az_rate_deg_s, el_deg, el_rate_deg_s)."""
        raise NotImplementedError

    def static_after(self) -> float:
        """Clock time after which the setpoint no longer changes."""
        raise NotImplementedError

    def tracking_at(self, t_s: float) -> bool:
        return False


class _Extrapolated(_Setpoint):
    """A streamed target: last value, estimated rate and acceleration, bounded horizon."""

    def __init__(self, t0_s: float, az: tuple[float, float, float],
                 el: tuple[float, float, float], horizon_s: float,
                 lim_az: AxisLimits, lim_el: AxisLimits):
        self.t0_s = t0_s
        self.az = az
        self.el = el
        self.horizon_s = horizon_s if (az[1] or az[2] or el[1] or el[2]) else 0.0
        self.lim = (lim_az, lim_el)

    def at(self, t_s: float) -> tuple[float, float, float, float]:
        tau = min(max(0.0, t_s - self.t0_s), self.horizon_s)
        moving = t_s - self.t0_s < self.horizon_s
        out: list[float] = []
        for (x0, v, a), lim in zip((self.az, self.el), self.lim, strict=True):
            x = x0 + v * tau + 0.5 * a * tau * tau
            rate = v + a * tau if moving else 0.0
            if x <= lim.min_deg or x >= lim.max_deg:
                x, rate = min(lim.max_deg, max(lim.min_deg, x)), 0.0
            out += (x, rate)
        return out[0], out[1], out[2], out[3]

    def static_after(self) -> float:
        return self.t0_s + self.horizon_s

    def tracking_at(self, t_s: float) -> bool:
        return self.horizon_s > 0 and t_s - self.t0_s < self.horizon_s


class _ProgramTrack(_Setpoint):
    """A whole timed trajectory, cubic Hermite (Catmull-Rom slopes) between points."""

    def __init__(self, points: Sequence[TrackPoint]):
        self.t = [p.time_s for p in points]
        self.x = ([p.az_deg for p in points], [p.el_deg for p in points])
        self.m = tuple(_catmull_rom_slopes(self.t, xs) for xs in self.x)

    def at(self, t_s: float) -> tuple[float, float, float, float]:
        t = self.t
        if t_s <= t[0]:
            return self.x[0][0], 0.0, self.x[1][0], 0.0
        if t_s >= t[-1]:
            return self.x[0][-1], 0.0, self.x[1][-1], 0.0
        i = bisect.bisect_right(t, t_s) - 1
        h = t[i + 1] - t[i]
        s = (t_s - t[i]) / h
        out: list[float] = []
        for xs, ms in zip(self.x, self.m, strict=True):
            p0, p1, m0, m1 = xs[i], xs[i + 1], ms[i] * h, ms[i + 1] * h
            s2, s3 = s * s, s * s * s
            x = ((2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0
                 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1)
            dx_ds = ((6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * m0
                     + (-6 * s2 + 6 * s) * p1 + (3 * s2 - 2 * s) * m1)
            out += (x, dx_ds / h)
        return out[0], out[1], out[2], out[3]

    def static_after(self) -> float:
        return self.t[-1]

    def tracking_at(self, t_s: float) -> bool:
        return self.t[0] <= t_s < self.t[-1]


def _catmull_rom_slopes(t: list[float], x: list[float]) -> list[float]:
    n = len(t)
    slopes = []
    for i in range(n):
        lo, hi = max(0, i - 1), min(n - 1, i + 1)
        slopes.append((x[hi] - x[lo]) / (t[hi] - t[lo]))
    return slopes


class _Hold(_Setpoint):
    def __init__(self, az_deg: float, el_deg: float):
        self.az_deg, self.el_deg = az_deg, el_deg

    def at(self, t_s: float) -> tuple[float, float, float, float]:
        return self.az_deg, 0.0, self.el_deg, 0.0

    def static_after(self) -> float:
        return -math.inf


class SimMount(Mount):
    """A simulated alt-az mount with realistic dynamics; see the module docstring."""

    class Options(AxisOptions):
        """Options of the simulated mount (``[mount] backend = "sim"``)."""

        az_min_deg: float = Field(-270.0, description="Azimuth travel minimum (cable wrap), degrees.")
        az_max_deg: float = Field(270.0, description="Azimuth travel maximum (cable wrap), degrees.")
        az_max_rate_deg_s: float = Field(10.0, gt=0, description="Azimuth maximum rate, deg/s.")
        el_max_rate_deg_s: float = Field(10.0, gt=0, description="Elevation maximum rate, deg/s.")
        encoder_resolution_deg: float = Field(
            1.0 / 36000.0, ge=0,
            description="Encoder quantisation step of reported positions, degrees (0: none). Default 0.1 arcsec.",
        )
        encoder_noise_deg: float = Field(
            0.5 / 3600.0, ge=0,
            description="RMS Gaussian noise added to reported positions, degrees. Default 0.5 arcsec.",
        )
        seed: int = Field(0, description="Seed of the encoder-noise generator (runs are reproducible).")
        start_az_deg: float | None = Field(
            None, description="Azimuth at start-up, degrees; default: the park azimuth."
        )
        start_el_deg: float | None = Field(
            None, description="Elevation at start-up, degrees; default: the park elevation."
        )
        command_latency_s: float = Field(
            0.0, ge=0, le=5, description="Delay between a command and the axes acting on it, seconds."
        )
        program_track: bool = Field(
            True, description="Advertise and accept program track (load_track)."
        )
        position_gain_per_s: float = Field(
            4.0, gt=0, le=50, description="Position-loop gain of the simulated controller, 1/s."
        )
        extrapolation_horizon_s: float = Field(
            1.0, gt=0, le=10,
            description="How long a streamed target's estimated motion is extrapolated, seconds.",
        )
        step_s: float = Field(
            0.005, gt=0, le=0.1, description="Integration step of the dynamics, clock seconds."
        )

        @model_validator(mode="after")
        def _ranges(self) -> SimMount.Options:
            if not self.az_min_deg < self.az_max_deg:
                raise ValueError(f"az_min_deg {self.az_min_deg} must be below az_max_deg {self.az_max_deg}")
            if not self.el_min_deg < self.el_max_deg:
                raise ValueError(f"el_min_deg {self.el_min_deg} must be below el_max_deg {self.el_max_deg}")
            for what, az, el in (("park", self.park_az_deg, self.park_el_deg),
                                 ("start", self.start_az_deg, self.start_el_deg)):
                if az is not None and not self.az_min_deg <= az <= self.az_max_deg:
                    raise ValueError(f"{what}_az_deg {az} is outside the azimuth travel")
                if el is not None and not self.el_min_deg <= el <= self.el_max_deg:
                    raise ValueError(f"{what}_el_deg {el} is outside the elevation travel")
            return self

    def __init__(self, options: SimMount.Options, *, clock: Clock, name: str = "mount"):
        self.options = options
        self.clock = clock
        self.name = name
        o = options
        self._caps = o.capabilities(encoder_resolution_deg=o.encoder_resolution_deg,
                                    program_track=o.program_track)
        start_az = o.park_az_deg if o.start_az_deg is None else o.start_az_deg
        start_el = o.park_el_deg if o.start_el_deg is None else o.start_el_deg
        self._az = _Axis("azimuth", self._caps.az, start_az, o.position_gain_per_s)
        self._el = _Axis("elevation", self._caps.el, start_el, o.position_gain_per_s)
        self._rng = random.Random(o.seed)
        self._t_s: float | None = None  # clock time the state is valid at
        self._setpoint: _Setpoint | None = _Hold(start_az, start_el)
        self._parking = start_az == o.park_az_deg and start_el == o.park_el_deg
        self._targets: list[tuple[float, float, float]] = []  # recent (t, az, el)
        # Timed events (effective time, order, action), applied in time order.
        self._events: list[tuple[float, int, Callable[[], None], bool]] = []
        self._event_seq = 0
        self._connected = False
        self._link_down = False
        self._unreachable = False
        self._fault: str | None = None
        #: Every command the controller accepted, in order (audits, safety-gate tests).
        self.commands: list[SimCommand] = []

    # -- Mount interface ---------------------------------------------------------------
    @property
    def capabilities(self) -> MountCapabilities:
        return self._caps

    async def connect(self) -> None:
        self._advance()
        if self._unreachable or self._link_down:
            raise MountConnectionLost("simulated controller does not answer (injected fault)",
                                      device=self.name)
        self._connected = True

    async def close(self) -> None:
        self._advance()
        self._connected = False

    async def position(self) -> MountPosition:
        t = self._checked()
        return MountPosition(self._encoder(self._az.pos_deg), self._encoder(self._el.pos_deg), t)

    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        t = self._checked()
        check_target(self._caps, az_deg, el_deg, device=self.name)
        self.commands.append(SimCommand(t, "slew", az_deg, el_deg))
        self._command(t, lambda: self._apply_target(
            t + self.options.command_latency_s, az_deg, el_deg, parking=False))

    async def load_track(self, points: Sequence[TrackPoint]) -> None:
        t = self._checked()
        if not self._caps.program_track:
            raise MountCommandRejected("program track is disabled in this mount's options",
                                       device=self.name)
        pts = list(points)
        if len(pts) < 2:
            raise MountCommandRejected(f"a program track needs at least 2 points, got {len(pts)}",
                                       device=self.name)
        for a, b in zip(pts, pts[1:], strict=False):
            if not b.time_s > a.time_s:
                raise MountCommandRejected(
                    f"program track times must increase strictly; {b.time_s} follows {a.time_s}",
                    device=self.name)
        for p in pts:
            check_target(self._caps, p.az_deg, p.el_deg, device=self.name,
                         what=f"program track point at t={p.time_s}: ")
        self.commands.append(SimCommand(t, "track", pts[0].az_deg, pts[0].el_deg))
        track = _ProgramTrack(pts)

        def apply() -> None:
            self._setpoint, self._parking, self._targets = track, False, []

        self._command(t, apply)

    async def stop(self) -> None:
        t = self._checked()
        self.commands.append(SimCommand(t, "stop"))

        def apply() -> None:
            self._setpoint, self._parking, self._targets = None, False, []

        self._command(t, apply)

    async def park(self) -> None:
        t = self._checked()
        o = self.options
        self.commands.append(SimCommand(t, "park", o.park_az_deg, o.park_el_deg))
        self._command(t, lambda: self._apply_target(
            t + o.command_latency_s, o.park_az_deg, o.park_el_deg, parking=True))

    async def status(self) -> MountStatus:
        t = self._advance()
        moving = any(abs(ax.vel_deg_s) > _MOVING_VEL_DEG_S for ax in (self._az, self._el))
        sp = self._setpoint
        tracking = sp is not None and sp.tracking_at(t)
        parked = self._parking and not moving and self._at(self.options.park_az_deg,
                                                           self.options.park_el_deg)
        fault = self._fault
        if self._link_down:
            fault = fault or "link to the controller lost (injected fault)"
        return MountStatus(connected=self._connected and not self._link_down, moving=moving,
                           tracking=tracking, parked=parked, fault=fault)

    # -- test and audit helpers --------------------------------------------------------
    def true_position(self) -> MountPosition:
        """The axes' exact positions now (no encoder noise or quantisation)."""
        t = self._advance()
        return MountPosition(self._az.pos_deg, self._el.pos_deg, t)

    def true_velocity(self) -> tuple[float, float]:
        """(az, el) rates now, deg/s."""
        self._advance()
        return self._az.vel_deg_s, self._el.vel_deg_s

    def inject_disconnect(self, at_s: float | None = None) -> None:
        """Drop the link at clock time ``at_s`` (now if None) until :meth:`clear_fault`.

        The controller's watchdog then brakes both axes to a stop, and every call except
        ``status`` and ``close`` raises :class:`MountConnectionLost`.
        """

        def apply() -> None:
            self._link_down = True
            self._unreachable = True
            self._setpoint, self._targets = None, []

        self._schedule(self._now() if at_s is None else at_s, apply, fault=True)

    def inject_stuck_axis(self, axis: Literal["az", "el"], at_s: float | None = None,
                          *, reported: bool = True) -> None:
        """Jam ``axis`` at clock time ``at_s`` (now if None): it stops dead and stays.

        With ``reported`` the controller notices and ``status().fault`` says so; without,
        only the position readback shows it (a slipping clutch, a frozen encoder).
        """
        ax = {"az": self._az, "el": self._el}[axis]

        def apply() -> None:
            ax.stuck = True
            ax.vel_deg_s = 0.0
            if reported:
                self._fault = f"{ax.name} axis stalled at {ax.pos_deg:.4f}°"

        self._schedule(self._now() if at_s is None else at_s, apply, fault=True)

    def clear_fault(self) -> None:
        """Undo every injected fault (pending ones too); the link can be connected again."""
        self._advance()
        self._events = [e for e in self._events if not e[3]]
        self._link_down = self._unreachable = False
        self._fault = None
        self._az.stuck = self._el.stuck = False

    # -- internals ---------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock.now_s()

    def _checked(self) -> float:
        t = self._advance()
        if self._link_down:
            self._connected = False
            raise MountConnectionLost("link to the simulated controller lost", device=self.name)
        if not self._connected:
            raise MountNotConnected("not connected; call connect() first", device=self.name)
        return t

    def _encoder(self, value_deg: float) -> float:
        o = self.options
        if o.encoder_noise_deg:
            value_deg += self._rng.gauss(0.0, o.encoder_noise_deg)
        if o.encoder_resolution_deg:
            value_deg = round(value_deg / o.encoder_resolution_deg) * o.encoder_resolution_deg
        return value_deg

    def _at(self, az_deg: float, el_deg: float) -> bool:
        tol = max(1e-6, self.options.encoder_resolution_deg)
        return abs(self._az.pos_deg - az_deg) <= tol and abs(self._el.pos_deg - el_deg) <= tol

    def _command(self, t_s: float, action: Callable[[], None]) -> None:
        """A command issued at ``t_s`` acts after the controller's latency."""
        self._schedule(t_s + self.options.command_latency_s, action, fault=False)

    def _schedule(self, at_s: float, action: Callable[[], None], *, fault: bool) -> None:
        """Run ``action`` when the simulated state passes clock time ``at_s``."""
        self._event_seq += 1
        self._events.append((at_s, self._event_seq, action, fault))
        self._events.sort(key=lambda e: (e[0], e[1]))
        self._advance()

    def _apply_target(self, t_s: float, az_deg: float, el_deg: float, *, parking: bool) -> None:
        """A new streamed target, effective at ``t_s``: estimate its motion, extrapolate."""
        self._parking = parking
        hist = self._targets
        horizon = self.options.extrapolation_horizon_s
        if hist and not (0.0 < t_s - hist[-1][0] <= horizon):
            hist.clear()
        hist.append((t_s, az_deg, el_deg))
        del hist[:-3]
        az_est = _motion([(t, a) for t, a, _ in hist], self._caps.az)
        el_est = _motion([(t, e) for t, _, e in hist], self._caps.el)
        if az_est is None or el_est is None:
            # Not a smooth stream (a jump beyond the axis rate): a plain slew from here on.
            hist[:] = [(t_s, az_deg, el_deg)]
            az_est, el_est = (az_deg, 0.0, 0.0), (el_deg, 0.0, 0.0)
        if parking:
            az_est, el_est = (az_deg, 0.0, 0.0), (el_deg, 0.0, 0.0)
            hist.clear()
        self._setpoint = _Extrapolated(t_s, az_est, el_est, horizon, self._caps.az, self._caps.el)

    def _advance(self) -> float:
        """Bring the simulated state up to the clock's now; returns now."""
        now = self._now()
        if self._t_s is None:
            self._t_s = now
        while True:
            next_evt = self._events[0][0] if self._events else math.inf
            seg_end = min(now, next_evt)
            if seg_end > self._t_s:
                self._integrate(seg_end)
            if next_evt <= now:
                action = self._events.pop(0)[2]
                action()
                continue
            break
        return now

    def _integrate(self, t_end_s: float) -> None:
        step = self.options.step_s
        az, el = self._az, self._el
        t = self._t_s
        assert t is not None
        while t < t_end_s:
            sp = self._setpoint
            if sp is None:
                if az.settled_on(None) and el.settled_on(None):
                    az.snap(None)
                    el.snap(None)
                    break
                h = min(step, t_end_s - t)
                az.step(h, None, 0.0)
                el.step(h, None, 0.0)
                t += h
                continue
            if t >= sp.static_after():
                a_sp, _, e_sp, _ = sp.at(t)
                if az.settled_on(a_sp) and el.settled_on(e_sp):
                    az.snap(a_sp)
                    el.snap(e_sp)
                    break
            h = min(step, t_end_s - t)
            # Feed forward the rate at the *end* of the step: the velocity the axis
            # reaches there, so a moving setpoint is followed without a lag.
            a_sp, _, e_sp, _ = sp.at(t)
            _, a_ff, _, e_ff = sp.at(t + h)
            az.step(h, a_sp, a_ff)
            el.step(h, e_sp, e_ff)
            t += h
        self._t_s = t_end_s


def _motion(samples: list[tuple[float, float]], lim: AxisLimits) -> tuple[float, float, float] | None:
    """(value, rate, acceleration) at the last of 1-3 timed samples, or None if too fast."""
    t2, x2 = samples[-1]
    if len(samples) == 1:
        return x2, 0.0, 0.0
    t1, x1 = samples[-2]
    d2 = (x2 - x1) / (t2 - t1)
    if abs(d2) > lim.max_rate_deg_s:
        return None
    if len(samples) == 2:
        return x2, d2, 0.0
    t0, x0 = samples[-3]
    d1 = (x1 - x0) / (t1 - t0)
    acc = 2.0 * (d2 - d1) / (t2 - t0)
    acc = max(-lim.max_accel_deg_s2, min(lim.max_accel_deg_s2, acc))
    return x2, d2 + 0.5 * acc * (t2 - t1), acc

