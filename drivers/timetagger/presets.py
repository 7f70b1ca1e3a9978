"""Named parameter sets for the simulated downlink (``preset`` option of the sim tagger).

Every value carries its source. "Liao 2017" is Liao et al., "Satellite-to-ground quantum
key distribution", Nature 549, 43 (2017), arXiv:1707.00542; "Li 2025" is Li et al.,
"Microsatellite-based real-time quantum key distribution", Nature 640, 47 (2025). Values
marked ASSUMPTION are not published; docs/simulator.md explains each choice, and the two
calibrated ones (``atm_zenith_loss_db``, ``background_hz``) were set so the Micius pass
reproduces the published link budget and QBER, not measured.
"""

from __future__ import annotations

from typing import Any

#: preset name -> {option: value}. Options not named keep the Options model's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # Micius (QUESS) downlink to the Xinglong 1 m telescope, the validated case.
    "micius": {
        "rep_rate_hz": 100e6,  # Liao 2017
        "wavelength_nm": 848.6,  # Liao 2017
        "mu": (0.8, 0.1, 0.0),  # Liao 2017, signal / decoy / vacuum
        "mu_probs": (0.5, 0.25, 0.25),  # Liao 2017
        "divergence_urad": 10.0,  # Liao 2017 "~10 µrad"; read as full-angle FWHM (ASSUMPTION)
        "tx_aperture_m": 0.3,  # Liao 2017, satellite telescope 300 mm
        "sat_pointing_jitter_urad": 1.2,  # Liao 2017 tracking accuracy, per axis (ASSUMPTION: rms)
        "rx_aperture_m": 1.0,  # Liao 2017, Xinglong 1 m telescope
        "rx_optics_efficiency": 0.16,  # Liao 2017
        "detector_efficiency": 0.5,  # Liao 2017
        "atm_zenith_loss_db": 2.8,  # CALIBRATED to Liao's 30 dB @ 645 km / 40 dB @ 1200 km
        "rx_fov_urad": 100.0,  # ASSUMPTION: receiver field of view (full angle)
        "dark_count_hz": 25.0,  # Liao 2017 "< 25 Hz"
        "background_hz": 200.0,  # CALIBRATED (moonlit sky, 2016-12-19) to Liao's 1.1 % QBER
        "jitter_fwhm_ps": 350.0,  # Liao 2017 timing jitter; read as FWHM (ASSUMPTION)
        "dead_time_ns": 50.0,  # ASSUMPTION: typical Si SPAD
        "polarization_contrast": 280.0,  # Liao 2017, 280:1
        "polarization_misalignment_deg": 3.0,  # ASSUMPTION: residual reference-frame error
        "sync_rate_hz": 10e3,  # ASSUMPTION (Micius used a pulsed sync laser; 10 kHz)
    },
    # Jinan-1-class microsatellite to a portable 280 mm receiver. Only the rate and the
    # aperture come from the paper's report, and both are unconfirmed; the rest is Micius.
    "jinan1": {
        "rep_rate_hz": 625e6,  # Li 2025 as reported, UNCONFIRMED
        "wavelength_nm": 850.0,  # Li 2025 as reported, UNCONFIRMED
        "mu": (0.8, 0.1, 0.0),  # ASSUMPTION: Micius values
        "mu_probs": (0.5, 0.25, 0.25),  # ASSUMPTION: Micius values
        "divergence_urad": 10.0,  # ASSUMPTION: Micius value
        "tx_aperture_m": 0.1,  # ASSUMPTION: microsatellite payload
        "sat_pointing_jitter_urad": 1.0,  # Li 2025 fine pointing ~1 µrad, UNCONFIRMED
        "rx_aperture_m": 0.28,  # Li 2025 as reported, UNCONFIRMED
        "rx_optics_efficiency": 0.3,  # ASSUMPTION: compact receiver, fewer surfaces
        "detector_efficiency": 0.5,  # ASSUMPTION: Micius value
        "atm_zenith_loss_db": 2.8,  # ASSUMPTION: Micius calibration
        "rx_fov_urad": 100.0,  # ASSUMPTION
        "dark_count_hz": 25.0,  # ASSUMPTION: Micius value
        "background_hz": 200.0,  # ASSUMPTION: Micius calibration
        "jitter_fwhm_ps": 100.0,  # ASSUMPTION: 625 MHz needs a tighter jitter than 350 ps
        "dead_time_ns": 50.0,  # ASSUMPTION
        "polarization_contrast": 280.0,  # ASSUMPTION: Micius value
        "polarization_misalignment_deg": 3.0,  # ASSUMPTION
        "sync_rate_hz": 10e3,  # ASSUMPTION
    },
    # A bright bench link (fibre or free space over a metre), for throughput tests: no
    # atmosphere, SNSPD-class detectors. About 18 M detections/s.
    "lab": {
        "rep_rate_hz": 100e6,
        "wavelength_nm": 850.0,
        "mu": (0.8, 0.1, 0.0),
        "mu_probs": (0.5, 0.25, 0.25),
        "divergence_urad": 1000.0,
        "tx_aperture_m": 0.01,
        "sat_pointing_jitter_urad": 0.0,
        "rx_aperture_m": 0.05,
        "rx_optics_efficiency": 0.7,
        "detector_efficiency": 0.8,
        "atm_zenith_loss_db": 0.0,
        "rx_fov_urad": 1000.0,
        "dark_count_hz": 100.0,
        "background_hz": 0.0,
        "jitter_fwhm_ps": 50.0,
        "dead_time_ns": 20.0,
        "polarization_contrast": 1000.0,
        "polarization_misalignment_deg": 0.0,
        "sync_rate_hz": 10e3,
    },
}

__all__ = ["PRESETS"]
