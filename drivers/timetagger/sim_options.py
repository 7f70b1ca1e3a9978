"""Options of the simulated time tagger (``[timetagger] backend = "sim"``).

Unset link parameters come from a preset (drivers/timetagger/presets.py); docs/simulator.md
gives every parameter with its source.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.timetagger.bb84 import class_thresholds, period_ps_of
from drivers.timetagger.link import LinkBudget
from drivers.timetagger.presets import PRESETS

_PS_PER_S = 1_000_000_000_000

__all__ = ["SimOptions"]


class SimOptions(BaseModel):
    """Options of the ``sim`` time tagger. Unset link parameters come from ``preset``."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["micius", "jinan1", "lab"] = Field(
        "micius", description="Parameter set the unset options come from (drivers/timetagger/presets.py)."
    )
    seed: int = Field(1, ge=0, lt=2**63, description="Seed of the sent pulses and of the receiver's randomness.")
    batch_s: float = Field(0.1, gt=0, le=10, description="Clock seconds each batch covers.")
    rate_window_s: float = Field(1.0, gt=0, description="Sliding window of count_rates_hz().")
    resolution_ps: int = Field(1, ge=1, description="Timestamp resolution of the simulated tagger.")
    # -- source (satellite) ------------------------------------------------------------
    rep_rate_hz: float = Field(100e6, gt=0, description="Pulse repetition rate; must divide 1e12.")
    wavelength_nm: float = Field(848.6, gt=0, description="Signal wavelength (recorded; the link budget uses divergence directly).")
    mu: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.0), description="Mean photon numbers of signal, decoy, vacuum pulses."
    )
    mu_probs: tuple[float, float, float] = Field(
        (0.5, 0.25, 0.25), description="Probabilities of sending signal, decoy, vacuum."
    )
    divergence_urad: float = Field(10.0, gt=0, description="Downlink beam divergence, full-angle FWHM.")
    tx_aperture_m: float = Field(0.3, gt=0, description="Satellite telescope aperture (near-field beam size).")
    sat_pointing_jitter_urad: float = Field(1.2, ge=0, description="Satellite pointing jitter, rms per axis.")
    # -- receiver (station) ------------------------------------------------------------
    rx_aperture_m: float = Field(1.0, gt=0, description="Receiving telescope aperture diameter.")
    rx_optics_efficiency: float = Field(0.16, gt=0, le=1, description="Receiver optics transmission.")
    detector_efficiency: float = Field(0.5, gt=0, le=1, description="Single-photon detector efficiency.")
    atm_zenith_loss_db: float = Field(2.8, ge=0, description="Atmospheric loss at the zenith; scales with air mass.")
    extra_loss_db: float = Field(0.0, ge=0, description="Any further fixed loss (e.g. a bench attenuator).")
    rx_fov_urad: float = Field(100.0, gt=0, description="Receiver field of view (full angle) for tracking-error loss.")
    min_elevation_deg: float = Field(0.0, description="Below this elevation the link is blocked.")
    dark_count_hz: float = Field(25.0, ge=0, description="Dark counts per detector.")
    background_hz: float = Field(200.0, ge=0, description="Sky background counts per detector.")
    jitter_fwhm_ps: float = Field(350.0, ge=0, description="Detector timing jitter, FWHM (Gaussian).")
    dead_time_ns: float = Field(50.0, ge=0, description="Detector dead time (non-paralysable).")
    polarization_contrast: float = Field(280.0, gt=0, description="Polarization extinction ratio N:1.")
    polarization_misalignment_deg: float = Field(
        3.0, ge=0, le=45, description="Residual reference-frame rotation between satellite and station."
    )
    basis_split_z: float = Field(0.5, gt=0, lt=1, description="Probability the passive splitter sends a photon to the Z (H/V) analyser.")
    # -- sync and PPS ------------------------------------------------------------------
    sync_rate_hz: float = Field(10e3, gt=0, description="Sync pulse rate; must divide rep_rate_hz.")
    sync_source: Literal["satellite", "local"] = Field(
        "satellite",
        description="'satellite': the satellite's sync laser (only during a link, moves with the "
        "time of flight); 'local': the station's own reference, always present.",
    )
    sync_detection_prob: float = Field(1.0, ge=0, le=1, description="Probability each sync pulse is detected.")
    sync_jitter_ps: float = Field(50.0, ge=0, description="Sync detection jitter, rms.")
    pps: bool = Field(True, description="Emit the station's PPS on the PPS channel.")
    inline_below_events: int = Field(
        20_000, ge=0,
        description="Batches expected to hold fewer events are generated on the event loop "
        "(about 1 ms of work, less than a thread hop); bigger ones in a worker thread.",
    )
    # -- the tagger's limits -----------------------------------------------------------
    max_rate_hz: float | None = Field(
        80e6, gt=0, description="Sustained tagger throughput; None for unlimited."
    )
    buffer_events: int = Field(
        8_000_000, ge=1, description="Tagger buffer; overflow when input exceeds max_rate_hz long enough to fill it."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", "micius")
        if name not in PRESETS:
            return data  # the Literal reports the bad name
        return {**PRESETS[name], **data}

    @model_validator(mode="after")
    def _check(self) -> SimOptions:
        period_ps_of(self.rep_rate_hz)
        pulses_per_sync = self.rep_rate_hz / self.sync_rate_hz
        if abs(pulses_per_sync - round(pulses_per_sync)) > 1e-9 or round(pulses_per_sync) < 1:
            raise ValueError(
                f"sync_rate_hz {self.sync_rate_hz} must divide rep_rate_hz {self.rep_rate_hz}"
            )
        class_thresholds(self.mu_probs)
        if any(m < 0 for m in self.mu):
            raise ValueError(f"mean photon numbers must be >= 0, got {self.mu}")
        batch_ps = self.batch_s * _PS_PER_S
        if abs(batch_ps - round(batch_ps)) > 1e-3:
            raise ValueError(f"batch_s {self.batch_s} is not a whole number of picoseconds")
        return self

    def link_budget(self) -> LinkBudget:
        """The link parameters as a :class:`~drivers.timetagger.link.LinkBudget`."""
        return LinkBudget(
            divergence_urad=self.divergence_urad,
            tx_aperture_m=self.tx_aperture_m,
            sat_pointing_jitter_urad=self.sat_pointing_jitter_urad,
            rx_aperture_m=self.rx_aperture_m,
            rx_optics_efficiency=self.rx_optics_efficiency,
            detector_efficiency=self.detector_efficiency,
            atm_zenith_loss_db=self.atm_zenith_loss_db,
            rx_fov_urad=self.rx_fov_urad,
            extra_loss_db=self.extra_loss_db,
            min_elevation_deg=self.min_elevation_deg,
        )

    @property
    def polarization_error(self) -> float:
        """Probability a photon measured in the sent basis hits the wrong detector."""
        return 1.0 / (1.0 + self.polarization_contrast) + math.sin(
            math.radians(self.polarization_misalignment_deg)
        ) ** 2
