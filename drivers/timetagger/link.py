"""The optical link budget of a satellite-to-ground downlink, vectorised over time.

Transmittance from the satellite's output aperture to a detector's input, as a product
of independent factors (each a numpy array over the given ranges/elevations):

``diffraction``
    A Gaussian beam whose far-field full-angle FWHM divergence is ``divergence_urad``,
    launched from a ``tx_aperture_m`` telescope: the 1/e² radius at range L is
    ``w(L) = sqrt(w_tx² + (L·θ/1.1774)²)`` (``w_tx`` = half the aperture; FWHM diameter =
    1.1774·w). The fraction inside a centred receiver of radius a is ``1 − exp(−2a²/w²)``.
``sat_pointing``
    Random satellite pointing jitter σ per axis on that beam: the mean on-axis
    intensity is reduced by ``ω² / (ω² + 4σ²)``, ω = θ/1.1774 the 1/e² half-angle.
``atmosphere``
    Extinction and turbulence losses scale with the air mass ``X(el)`` (Kasten & Young
    1989, good to the horizon): ``loss_dB = atm_zenith_loss_db · X``.
``ground_pointing``
    The station's tracking error e moves the image in the receiver's field of view; a
    Gaussian acceptance with 1/e² radius ``rx_fov_urad/2`` gives ``exp(−2e²/(fov/2)²)``.
``rx_optics``
    Receiver optics transmission (telescope, filters, polarization analysis).
``extra``
    ``extra_loss_db``: any further fixed loss (an attenuator on a bench link, a dirty window).

The "link loss" published for Micius excludes detector efficiency, so :meth:`LinkBudget.loss_db`
does too; the detection probability uses :meth:`LinkBudget.efficiency` ×
``detector_efficiency``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: FWHM diameter of a Gaussian beam in units of its 1/e² radius: 2·sqrt(ln 2 / 2).
FWHM_PER_W = 2.0 * np.sqrt(np.log(2.0) / 2.0)


def airmass(el_deg: np.ndarray | float) -> np.ndarray:
    """Relative optical air mass at elevation ``el_deg`` (Kasten & Young 1989).

    1 at the zenith, ~38 at the horizon; below the horizon it is ``inf``.
    """
    el = np.asarray(el_deg, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = 1.0 / (np.sin(np.radians(el)) + 0.50572 * np.power(np.maximum(el, 0.0) + 6.07995, -1.6364))
    return np.where(el >= 0.0, x, np.inf)


def diffraction_efficiency(
    range_km: np.ndarray | float,
    *,
    divergence_urad: float,
    tx_aperture_m: float,
    rx_aperture_m: float,
) -> np.ndarray:
    """Fraction of a Gaussian beam collected by the receiver aperture (see module doc)."""
    range_m = np.asarray(range_km, dtype=float) * 1e3
    w_far_m = range_m * divergence_urad * 1e-6 / FWHM_PER_W
    w_m2 = (tx_aperture_m / 2.0) ** 2 + w_far_m**2
    a_m = rx_aperture_m / 2.0
    return -np.expm1(-2.0 * a_m**2 / w_m2)


def sat_pointing_efficiency(*, divergence_urad: float, jitter_urad: float) -> float:
    """Mean intensity factor of a Gaussian beam under Gaussian pointing jitter (per axis)."""
    omega = divergence_urad / FWHM_PER_W
    return float(omega**2 / (omega**2 + 4.0 * jitter_urad**2))


def ground_pointing_efficiency(error_urad: np.ndarray | float, *, rx_fov_urad: float) -> np.ndarray:
    """Coupling into a Gaussian receiver acceptance of 1/e² radius ``rx_fov_urad/2``."""
    e = np.asarray(error_urad, dtype=float)
    return np.exp(-2.0 * (e / (rx_fov_urad / 2.0)) ** 2)


def db(efficiency: np.ndarray | float) -> np.ndarray:
    """Loss in dB for a transmittance (positive numbers; ``inf`` for zero)."""
    with np.errstate(divide="ignore"):
        return -10.0 * np.log10(np.asarray(efficiency, dtype=float))


@dataclass(frozen=True, slots=True)
class LinkBudget:
    """The link parameters; methods evaluate the budget at given ranges and elevations."""

    divergence_urad: float
    tx_aperture_m: float
    sat_pointing_jitter_urad: float
    rx_aperture_m: float
    rx_optics_efficiency: float
    detector_efficiency: float
    atm_zenith_loss_db: float
    rx_fov_urad: float
    extra_loss_db: float = 0.0
    min_elevation_deg: float = 0.0

    def components(
        self,
        range_km: np.ndarray | float,
        el_deg: np.ndarray | float,
        ground_pointing_error_urad: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """Each factor of the transmittance (arrays broadcast over range/elevation)."""
        range_km = np.asarray(range_km, dtype=float)
        el_deg = np.asarray(el_deg, dtype=float)
        visible = el_deg >= self.min_elevation_deg
        atm = np.where(visible, 10.0 ** (-self.atm_zenith_loss_db * np.where(visible, airmass(el_deg), 1.0) / 10.0), 0.0)
        ones = np.ones(np.broadcast(range_km, el_deg).shape)
        return {
            "diffraction": diffraction_efficiency(
                range_km,
                divergence_urad=self.divergence_urad,
                tx_aperture_m=self.tx_aperture_m,
                rx_aperture_m=self.rx_aperture_m,
            )
            * ones,
            "sat_pointing": ones
            * sat_pointing_efficiency(
                divergence_urad=self.divergence_urad, jitter_urad=self.sat_pointing_jitter_urad
            ),
            "atmosphere": atm * ones,
            "ground_pointing": ones
            * ground_pointing_efficiency(ground_pointing_error_urad, rx_fov_urad=self.rx_fov_urad),
            "rx_optics": ones * self.rx_optics_efficiency,
            "extra": ones * 10.0 ** (-self.extra_loss_db / 10.0),
        }

    def efficiency(
        self,
        range_km: np.ndarray | float,
        el_deg: np.ndarray | float,
        ground_pointing_error_urad: float = 0.0,
    ) -> np.ndarray:
        """Transmittance satellite aperture -> detector input (no detector efficiency)."""
        # The product of components(), without building the per-factor arrays.
        el = np.asarray(el_deg, dtype=float)
        visible = el >= self.min_elevation_deg
        atm_db = self.atm_zenith_loss_db * airmass(np.where(visible, el, 90.0))
        constant = (
            sat_pointing_efficiency(divergence_urad=self.divergence_urad,
                                    jitter_urad=self.sat_pointing_jitter_urad)
            * self.rx_optics_efficiency
            * 10.0 ** (-self.extra_loss_db / 10.0)
        )
        return (
            diffraction_efficiency(range_km, divergence_urad=self.divergence_urad,
                                   tx_aperture_m=self.tx_aperture_m, rx_aperture_m=self.rx_aperture_m)
            * ground_pointing_efficiency(ground_pointing_error_urad, rx_fov_urad=self.rx_fov_urad)
            * np.where(visible, 10.0 ** (-atm_db / 10.0), 0.0)
            * constant
        )

    def loss_db(
        self,
        range_km: np.ndarray | float,
        el_deg: np.ndarray | float,
        ground_pointing_error_urad: float = 0.0,
    ) -> np.ndarray:
        """Link loss in dB, excluding detector efficiency (as Liao et al. 2017 quote it)."""
        return db(self.efficiency(range_km, el_deg, ground_pointing_error_urad))

    def detection_efficiency(
        self,
        range_km: np.ndarray | float,
        el_deg: np.ndarray | float,
        ground_pointing_error_urad: float = 0.0,
    ) -> np.ndarray:
        """Probability a photon leaving the satellite is detected: link × detector."""
        return self.efficiency(range_km, el_deg, ground_pointing_error_urad) * self.detector_efficiency


class StaticLinkGeometry:
    """A :class:`~drivers.timetagger.base.LinkGeometry` that never moves: a bench link,
    or a satellite frozen at one range and elevation for tests."""

    def __init__(self, range_km: float, el_deg: float) -> None:
        self.range_km = float(range_km)
        self.el_deg = float(el_deg)

    def range_el_at(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(time_s, dtype=float)
        return np.full(t.shape, self.range_km), np.full(t.shape, self.el_deg)


__all__ = [
    "FWHM_PER_W",
    "LinkBudget",
    "StaticLinkGeometry",
    "airmass",
    "db",
    "diffraction_efficiency",
    "ground_pointing_efficiency",
    "sat_pointing_efficiency",
]
