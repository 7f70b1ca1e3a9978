"""Orbital elements and pass-planning constraints. (Owned by the orbit/schedule work.)

Station-wide constraints live in ``[schedule]``; any of them can be overridden for one
satellite in its ``[[orbit.satellites]]`` entry (leave a key out to inherit the station's).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from station.config.base import ConfigPath, Strict


class PassConstraints(Strict):
    """What makes a pass worth taking. Shared by ``[schedule]`` and per-satellite overrides."""

    max_sun_el_deg: float = Field(
        -12.0, ge=-90, le=90,
        description="Night: the Sun's elevation at the station must stay below this during the pass "
        "(-12 nautical, -18 astronomical twilight; 90 disables).",
    )
    min_peak_el_deg: float = Field(
        20.0, ge=0, le=90, description="Passes peaking lower than this are not taken."
    )
    qkd_min_el_deg: float = Field(
        15.0, ge=0, le=90, description="QKD window: the part of the pass above this elevation ..."
    )
    qkd_max_range_km: float | None = Field(
        None, gt=0, description="... and, when set, closer than this range (link loss grows with range)."
    )
    min_qkd_s: float = Field(
        30.0, ge=0, description="Passes whose QKD window is shorter than this are not taken."
    )
    sun_exclusion_deg: float = Field(
        30.0, ge=0, le=180,
        description="The line of sight must stay this far from the Sun at every point of the track "
        "(the larger of this and safety.sun_exclusion_deg applies: the gate would refuse the rest).",
    )
    moon_exclusion_deg: float = Field(
        10.0, ge=0, le=180,
        description="The line of sight must stay this far from the Moon at every point of the track "
        "(checked while the Moon is above the horizon).",
    )
    require_satellite_in_shadow: bool = Field(
        False,
        description="Take a pass only if the satellite is in Earth's shadow during the whole QKD window "
        "(sunlit spacecraft scatter light into the receiver).",
    )
    lead_time_s: float = Field(
        120.0, ge=0, description="Kept free before AOS to ready the hardware and slew to the rise point."
    )
    post_time_s: float = Field(
        60.0, ge=0, description="Kept free after LOS to park and close the pass files."
    )


#: Names of the constraint fields a satellite may override.
CONSTRAINT_FIELDS: tuple[str, ...] = tuple(PassConstraints.model_fields)


class SatelliteConfig(Strict):
    """One satellite the station may take passes of, with optional constraint overrides."""

    norad_id: int = Field(ge=1, le=999_999_999, description="NORAD catalog number.")
    name: str | None = Field(None, description="Display name; default from the element set.")
    priority: float = Field(1.0, gt=0, description="Weight of this satellite's QKD time.")
    enabled: bool = Field(True, description="False keeps the satellite listed but never plans it.")
    max_sun_el_deg: float | None = Field(None, ge=-90, le=90, description="Override of schedule.max_sun_el_deg.")
    min_peak_el_deg: float | None = Field(None, ge=0, le=90, description="Override of schedule.min_peak_el_deg.")
    qkd_min_el_deg: float | None = Field(None, ge=0, le=90, description="Override of schedule.qkd_min_el_deg.")
    qkd_max_range_km: float | None = Field(None, gt=0, description="Override of schedule.qkd_max_range_km.")
    min_qkd_s: float | None = Field(None, ge=0, description="Override of schedule.min_qkd_s.")
    sun_exclusion_deg: float | None = Field(None, ge=0, le=180, description="Override of schedule.sun_exclusion_deg.")
    moon_exclusion_deg: float | None = Field(None, ge=0, le=180, description="Override of schedule.moon_exclusion_deg.")
    require_satellite_in_shadow: bool | None = Field(
        None, description="Override of schedule.require_satellite_in_shadow."
    )
    lead_time_s: float | None = Field(None, ge=0, description="Override of schedule.lead_time_s.")
    post_time_s: float | None = Field(None, ge=0, description="Override of schedule.post_time_s.")

    def overrides(self) -> dict[str, Any]:
        """The constraint fields this satellite sets itself."""
        return {k: getattr(self, k) for k in CONSTRAINT_FIELDS if getattr(self, k) is not None}


class OrbitConfig(Strict):
    """Where element sets come from and how old they may be."""

    element_sources: list[ConfigPath] = Field(
        default_factory=list,
        description="TLE/3LE/OMM (JSON, XML, KVN) files or directories of them.",
    )
    max_element_age_days: float = Field(
        3.0, gt=0, description="Warn when an element set's epoch is older than this (clock time)."
    )
    update_dir: ConfigPath | None = Field(
        None,
        description="Where `qkd-station tle update` writes; default: the first directory in element_sources.",
    )
    satellites: list[SatelliteConfig] = Field(
        default_factory=list,
        description="Satellites to plan; empty plans every satellite in the catalog with the station defaults.",
    )

    @model_validator(mode="after")
    def _unique(self) -> OrbitConfig:
        seen: set[int] = set()
        for sat in self.satellites:
            if sat.norad_id in seen:
                raise ValueError(f"satellite {sat.norad_id} is listed twice in orbit.satellites")
            seen.add(sat.norad_id)
        return self

    def satellite(self, norad_id: int) -> SatelliteConfig | None:
        """The configured entry for ``norad_id``, if any."""
        return next((s for s in self.satellites if s.norad_id == norad_id), None)


class ScheduleConfig(PassConstraints):
    """Station-wide constraints that decide which passes are taken."""

    search_step_s: float | None = Field(
        None, ge=1, le=600,
        description="Coarse grid of the pass search in seconds; default a twentieth of the shortest "
        "orbital period (as skyfield's find_events). Elevation maxima found on it are refined, so "
        "short passes are not missed; a finer grid only helps masks with narrow obstacles.",
    )
    force_include: list[str] = Field(
        default_factory=list, description="Pass ids always scheduled, e.g. '41731-20161219T164844Z'."
    )
    force_exclude: list[str] = Field(default_factory=list, description="Pass ids never scheduled.")

    def for_satellite(self, sat: SatelliteConfig | None) -> PassConstraints:
        """The constraints in force for ``sat``: its overrides over the station's."""
        base = {k: getattr(self, k) for k in CONSTRAINT_FIELDS}
        if sat is not None:
            base.update(sat.overrides())
        return PassConstraints(**base)
