"""Mount backend, safety limits and tracking settings. (Owned by the mount/tracking work.)"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from station.config.base import BackendConfig, Strict


class MountConfig(BackendConfig):
    """The telescope mount, chosen by backend name."""

    kind: ClassVar[str] = "mount"
    park_az_deg: float = Field(
        0.0, ge=-540, le=540,
        description="Park position azimuth (wrap-aware, in the mount's own azimuth range).",
    )
    park_el_deg: float = Field(90.0, ge=0, le=90, description="Park position elevation.")
    park_tolerance_deg: float = Field(
        0.05, gt=0, le=5, description="The mount counts as parked within this of the park position."
    )
    command_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Wall-clock deadline of one command to the controller."
    )


class SafetyConfig(Strict):
    """The one safety gate's limits; the gate also applies the backend's own capabilities
    and the site's horizon mask, whichever is tighter."""

    min_el_deg: float = Field(
        0.0, ge=-5, le=90,
        description="Never command below this true elevation (on top of the horizon mask).",
    )
    max_el_deg: float = Field(
        180.0, ge=0, le=180,
        description="Never command an elevation axis angle above this (above 90 is a zenith "
        "flip and also needs a mount that can do it).",
    )
    az_min_deg: float | None = Field(
        None, ge=-720, le=720,
        description="Azimuth travel minimum (wrap-aware); default: the backend's own limit.",
    )
    az_max_deg: float | None = Field(
        None, ge=-720, le=720,
        description="Azimuth travel maximum (wrap-aware); default: the backend's own limit.",
    )
    sun_exclusion_deg: float = Field(
        30.0, ge=0, le=180,
        description="Never command within this angle of the Sun, computed at command time; "
        "also checked along the whole path a slew may sweep.",
    )
    sun_cache_s: float = Field(
        10.0, gt=0, le=120,
        description="The Sun's position is recomputed when older than this (clock seconds); "
        "the exclusion grows by the Sun's possible motion in that time (<= 0.005 deg/s).",
    )
    max_az_rate_deg_s: float | None = Field(
        None, gt=0, description="Commanded azimuth rate limit; default: the backend's maximum."
    )
    max_el_rate_deg_s: float | None = Field(
        None, gt=0, description="Commanded elevation rate limit; default: the backend's maximum."
    )
    rate_tolerance: float = Field(
        1.02, ge=1.0, le=1.5,
        description="A streamed target may imply up to this times the rate limit "
        "(timing jitter of the control loop) before it is refused.",
    )
    stream_extrapolation_s: float = Field(
        1.0, ge=0, le=10,
        description="How long the controller may extrapolate a streamed target's motion when "
        "the next one does not come; the gate checks that extrapolated point as well.",
    )
    position_max_age_s: float = Field(
        1.0, gt=0, le=60,
        description="Before a slew, a position reading older than this (clock seconds) is "
        "refreshed so the swept path is checked from where the mount really is.",
    )

    @model_validator(mode="after")
    def _check(self) -> SafetyConfig:
        if self.min_el_deg >= self.max_el_deg:
            raise ValueError(f"min_el_deg {self.min_el_deg} must be below max_el_deg {self.max_el_deg}")
        if (self.az_min_deg is not None and self.az_max_deg is not None
                and self.az_min_deg >= self.az_max_deg):
            raise ValueError(f"az_min_deg {self.az_min_deg} must be below az_max_deg {self.az_max_deg}")
        return self


class TrackingConfig(Strict):
    """The tracking control loop and the trajectory planner."""

    rate_hz: float = Field(20.0, gt=0, le=200, description="Control loop rate.")
    sample_interval_s: float = Field(
        1.0, gt=0, le=10,
        description="Trajectory sampling step (skyfield); the loop interpolates between samples.",
    )
    lead_s: float | None = Field(
        None, ge=0, le=5,
        description="Command lead (latency compensation); default: the backend's command latency.",
    )
    keyhole_el_deg: float = Field(
        80.0, ge=45, le=90,
        description="Passes culminating above this are planned as keyhole passes (zenith flip "
        "when the mount can, else the azimuth-rate-limited path).",
    )
    rate_margin: float = Field(
        0.9, gt=0, le=1.0,
        description="The planner keeps commanded rates below this fraction of the gate's limits.",
    )
    mode: Literal["auto", "stream", "program"] = Field(
        "auto",
        description="'stream' (targets at rate_hz), 'program' (timed track upload) or 'auto' "
        "(program track when the backend has it).",
    )
    program_chunk_s: float = Field(
        30.0, gt=1, le=900, description="Program track is uploaded in chunks of this length."
    )
    acquisition_error_arcsec: float = Field(
        120.0, gt=0, description="Tracking error below which the target counts as acquired."
    )
    acquisition_samples: int = Field(
        5, ge=1, description="Consecutive samples under the acquisition error to count as acquired."
    )
    loss_error_deg: float = Field(
        1.0, gt=0,
        description="After acquisition, an error above this for loss_duration_s is tracking "
        "loss: the pass is abandoned and the mount parked.",
    )
    loss_duration_s: float = Field(3.0, ge=0, description="See loss_error_deg.")
    capture_deg: float = Field(
        0.5, gt=0,
        description="Streaming starts when the mount is this close to the track; farther "
        "away it first slews to a point the satellite will reach (intercept).",
    )
    recapture_deg: float = Field(
        2.0, gt=0, description="While streaming, an error above this goes back to intercepting."
    )
    preposition_tolerance_deg: float = Field(
        0.05, gt=0, description="Pre-positioning is done when both axes are within this."
    )
    preposition_margin_s: float = Field(
        30.0, ge=0, description="Recommended head start of pre-positioning over the slew estimate."
    )
    park_after_pass: bool = Field(True, description="Park when the pass ends (LOS).")
    telemetry_queue: int = Field(
        1000, ge=1, description="Per-subscriber telemetry queue; overflow drops the oldest (counted)."
    )
