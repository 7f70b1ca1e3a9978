"""Point-to-point moves through the gate: to the rise point before a pass, and to park.

:class:`Positioner` slews the mount to one fixed position and waits until it is there,
going over the top when a direct move would sweep the Sun or the horizon mask (the gate
checks the whole az/el box a slew may sweep), and publishes a ``preposition`` sample per
reading while it waits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from drivers.mount.base import MountPosition
from station.clock import Clock
from station.config.mount import TrackingConfig
from station.tracking.gate import CommandRefused, GatedMount, Rule
from station.tracking.telemetry import TrackingSample
from station.tracking.trajectory import TrackPlan
from station.tracking.wrap import angle_between_deg

log = logging.getLogger("station.tracking.controller")

#: Poll period while pre-positioning and waiting for park (clock seconds).
POLL_S = 0.25


class PrepositionTimeout(Exception):
    """The mount did not reach the rise point before the deadline."""


class Positioner:
    """Moves to fixed positions through ``gated``; ``publish`` takes each sample."""

    def __init__(self, gated: GatedMount, clock: Clock, cfg: TrackingConfig,
                 publish: Callable[[TrackingSample], None]):
        self.gated = gated
        self.clock = clock
        self.cfg = cfg
        self._publish = publish

    def estimate_slew_s(self, plan: TrackPlan, from_pos: MountPosition) -> float:
        """Clock seconds a slew from ``from_pos`` to the rise point takes (trapezoidal)."""
        caps = self.gated.capabilities
        az0, el0 = plan.start
        out = 0.0
        for dist, lim in ((abs(az0 - from_pos.az_deg), caps.az), (abs(el0 - from_pos.el_deg), caps.el)):
            v, a = lim.max_rate_deg_s, lim.max_accel_deg_s2
            ramp = v * v / a
            out = max(out, 2 * math.sqrt(dist / a) if dist < ramp else dist / v + v / a)
        return out + caps.command_latency_s

    async def preposition(self, plan: TrackPlan, *, deadline_s: float | None = None) -> float:
        """Slew to the rise point and wait there; returns the clock time it was reached.

        Raises :class:`PrepositionTimeout` if not there by ``deadline_s`` (default: AOS).
        """
        deadline = plan.aos_s if deadline_s is None else deadline_s
        az, el = plan.start
        for leg_az, leg_el in await self._legs_to(az, el):
            await self.gated.slew_to(leg_az, leg_el)
            await self.wait_at(plan.pass_id, leg_az, leg_el, deadline)
        await self.gated.slew_to(az, el)
        return await self.wait_at(plan.pass_id, az, el, deadline, publish=True, plan=plan)

    async def _legs_to(self, az: float, el: float) -> list[tuple[float, float]]:
        """The intermediate stops of a move to (az, el), final one excluded.

        The gate checks the whole az/el box a direct slew may sweep; when that box holds
        the Sun or dips under the horizon mask, go up first, turn in azimuth high in the
        sky, then come down.
        """
        pos = await self.gated.position()
        if self.gated.would_refuse(az, el) is None:
            return []
        high = max(pos.el_deg, el)
        legs = [(pos.az_deg, high), (az, high)]
        return [leg for leg in legs if leg not in ((pos.az_deg, pos.el_deg), (az, el))]

    async def wait_at(self, pass_id: str, az: float, el: float, deadline: float, *,
                       publish: bool = False, plan: TrackPlan | None = None) -> float:
        tol = self.cfg.preposition_tolerance_deg
        while True:
            pos = await self.gated.position()
            err = float(angle_between_deg(np.asarray(pos.az_deg), np.asarray(pos.el_deg), az, el))
            self._publish(TrackingSample(
                pass_id=pass_id, phase="preposition", time_s=pos.time_s,
                commanded_az_deg=az, commanded_el_deg=el, actual_az_deg=pos.az_deg,
                actual_el_deg=pos.el_deg, error_arcsec=err * 3600.0,
                sky_error_arcsec=err * 3600.0, lateness_s=0.0, acquired=False))
            if abs(pos.az_deg - az) <= tol and abs(pos.el_deg - el) <= tol:
                if plan is not None:
                    log.info("pass %s: at the rise point %.0f s before AOS", pass_id,
                             plan.aos_s - pos.time_s)
                return pos.time_s
            if pos.time_s >= deadline:
                raise PrepositionTimeout(
                    f"pass {pass_id}: mount at az {pos.az_deg:.3f}°, el {pos.el_deg:.3f}°, "
                    f"not at az {az:.3f}°, el {el:.3f}° by the deadline"
                )
            await self.clock.sleep(POLL_S)

    # -- parking --------------------------------------------------------------------------
    async def park(self) -> bool:
        """Command park; True if parking.

        When the direct move is refused (the Sun or the horizon mask in the swept box), the
        mount first rises straight up to the park elevation (or its own, if higher) and
        parks from there. If that is refused too, it is stopped where it is.
        """
        try:
            try:
                await self.gated.park()
                return True
            except CommandRefused as exc:
                pos = await self.gated.position()
                high = max(pos.el_deg, self.gated.park_el_deg)
                if exc.rule not in (Rule.SUN, Rule.HORIZON) or high == pos.el_deg:
                    raise
                log.warning("direct park refused (%s); rising to %.1f° first", exc.reason, high)
                await self.gated.slew_to(pos.az_deg, high)
                est = abs(high - pos.el_deg) / self.gated.capabilities.el.max_rate_deg_s
                await self.wait_at("", pos.az_deg, high, self.clock.now_s() + 2 * est + 10)
                await self.gated.park()
                return True
        except (CommandRefused, PrepositionTimeout) as exc:
            log.error("park impossible (%s); stopping the mount where it is instead", exc)
            await self.gated.stop()
            return False

    async def wait_parked(self, timeout_s: float) -> bool:
        """Poll until the mount is at the park position or ``timeout_s`` clock seconds pass."""
        end = self.clock.now_s() + timeout_s
        while True:
            pos = await self.gated.position()
            if self.gated.is_parked(pos):
                return True
            if self.clock.now_s() >= end:
                return False
            await self.clock.sleep(POLL_S)
