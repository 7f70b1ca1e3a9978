"""Pieces the mount backends share: strict options base, limit checks, backoff."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from drivers.mount.base import MountCapabilities, MountLimitError


class MountOptions(BaseModel):
    """Base of every backend's ``Options``: unknown keys are errors, defaults validated.

    (``drivers/`` may not import ``station.config.base.Strict``; this is its twin.)
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def check_target(
    caps: MountCapabilities, az_deg: float, el_deg: float, *, device: str, what: str = ""
) -> None:
    """Raise :class:`MountLimitError` for a target outside the capabilities' travel."""
    for axis, value, lim in (("azimuth", az_deg, caps.az), ("elevation", el_deg, caps.el)):
        if not math.isfinite(value):
            raise MountLimitError(f"{what}{axis} target {value!r} is not a finite number",
                                  device=device)
        if not lim.min_deg <= value <= lim.max_deg:
            raise MountLimitError(
                f"{what}{axis} target {value:.4f}° is outside the mount's travel "
                f"{lim.min_deg:g}…{lim.max_deg:g}°",
                device=device,
            )


def backoff_s(attempt: int, *, initial_s: float, max_s: float) -> float:
    """Capped exponential backoff: ``initial_s * 2**attempt``, at most ``max_s``."""
    return min(max_s, initial_s * (2.0 ** min(attempt, 30)))
