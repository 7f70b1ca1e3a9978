"""Decoy-state parameter estimation with finite-key statistics (seam 4).

After Lim, Curty, Walenta, Xu and Zbinden, PRA 89, 022307 (2014): a pure function of a
pass's sifted counts per basis and intensity class, the bits error correction leaked, and
the security parameters. See docs/postprocessing.md ("Security analysis") for the formulas and the choices.

    result = secret_key_length(counts, leaked_ec_bits, SecurityParameters())
    result.key_length_bits          # what privacy amplification outputs
    result.bounds("Z").s1_lower     # every bound, for the key report
"""

from postprocessing.estimation.decoy import binary_entropy, gamma
from postprocessing.estimation.keylength import basis_bounds, secret_key_length
from postprocessing.estimation.models import (
    BASES,
    INTENSITY_CLASSES,
    BasisCounts,
    BasisKeyBounds,
    ClassCounts,
    KeyLengthResult,
    SecurityParameters,
    SiftedCounts,
)

__all__ = [
    "BASES",
    "INTENSITY_CLASSES",
    "BasisCounts",
    "BasisKeyBounds",
    "ClassCounts",
    "KeyLengthResult",
    "SecurityParameters",
    "SiftedCounts",
    "basis_bounds",
    "binary_entropy",
    "gamma",
    "secret_key_length",
]
