"""Sifting: keep the detections measured in the basis the satellite prepared.

One round per chunk of detections (one stream batch), in stream order:

1. Bob announces the pulse indices he detected (ascending, each once) and the basis he
   measured each in (:class:`BobAnnouncement`);
2. Alice announces, for the same pulses, the basis she prepared and the intensity class
   she sent (:class:`AliceAnnouncement`);
3. both keep the pulses whose bases match (:func:`sift_mask`). Each side's sifted bits
   are its own bits at those pulses, in pulse order; the sifted pulse's basis and class
   label it for parameter estimation (:class:`SiftTally`).

No bit value is announced. Conventions (shared with the classical channel's wire format,
docs/classical-channel.md): basis 0 = Z (H/V), 1 = X (D/A); class 0 = signal, 1 = decoy,
2 = vacuum (:data:`postprocessing.estimation.INTENSITY_CLASSES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from postprocessing.estimation import SiftedCounts

BASIS_NAMES: tuple[str, str] = ("Z", "X")
CLASS_NAMES: tuple[str, str, str] = ("signal", "decoy", "vacuum")


class SiftingError(ValueError):
    """An announcement is inconsistent (lengths, order, values out of range)."""


class _Arrays(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.size})"

    __str__ = __repr__

    @property
    def size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class BobAnnouncement(_Arrays):
    """The pulses Bob detected (ascending, unique int64) and his measurement bases."""

    pulse_index: np.ndarray
    basis: np.ndarray

    @property
    def size(self) -> int:
        return int(self.pulse_index.size)

    def check(self, *, after_pulse: int = -1) -> BobAnnouncement:
        """Refuse an announcement a correct Bob never sends (raises :class:`SiftingError`)."""
        idx, basis = self.pulse_index, self.basis
        if idx.ndim != 1 or basis.ndim != 1 or idx.size != basis.size:
            raise SiftingError(f"announcement: {idx.size} pulse indices but {basis.size} bases")
        if idx.size and (np.any(np.diff(idx) <= 0) or int(idx[0]) <= after_pulse or int(idx[0]) < 0):
            raise SiftingError("announcement: pulse indices must be non-negative, strictly "
                               f"increasing and after the last announced pulse ({after_pulse})")
        if basis.size and int(basis.max()) > 1:
            raise SiftingError("announcement: a basis is neither 0 (Z) nor 1 (X)")
        return self


class AliceAnnouncement(_Arrays):
    """Alice's prepared basis and intensity class for each announced pulse."""

    basis: np.ndarray
    intensity_class: np.ndarray

    @property
    def size(self) -> int:
        return int(self.basis.size)

    def check(self, n: int) -> AliceAnnouncement:
        if self.basis.size != n or self.intensity_class.size != n:
            raise SiftingError(f"Alice's answer has {self.basis.size} bases and "
                               f"{self.intensity_class.size} classes for {n} announced pulses")
        if n and (int(self.basis.max()) > 1 or int(self.intensity_class.max()) > 2):
            raise SiftingError("Alice's answer holds a basis > 1 or an intensity class > 2")
        return self


def sift_mask(bob: BobAnnouncement, alice: AliceAnnouncement) -> np.ndarray:
    """True where Alice's and Bob's bases match (the sifted pulses)."""
    alice.check(bob.size)
    return np.asarray(bob.basis == alice.basis)


def answer(bob: BobAnnouncement, sent_basis: np.ndarray, sent_class: np.ndarray) -> AliceAnnouncement:
    """Alice's answer to ``bob`` from what she sent at his pulses."""
    return AliceAnnouncement(basis=np.asarray(sent_basis, np.uint8),
                             intensity_class=np.asarray(sent_class, np.uint8)).check(bob.size)


class SiftedChunk(_Arrays):
    """One side's sifted bits of one chunk with their labels (pulse order)."""

    pulse_index: np.ndarray
    basis: np.ndarray
    intensity_class: np.ndarray
    bits: np.ndarray = Field(repr=False)

    @property
    def size(self) -> int:
        return int(self.bits.size)


def keep(mask: np.ndarray, pulse_index: np.ndarray, basis: np.ndarray,
         intensity_class: np.ndarray, bits: np.ndarray) -> SiftedChunk:
    """The sifted part of a chunk."""
    return SiftedChunk(pulse_index=pulse_index[mask], basis=basis[mask].astype(np.uint8),
                       intensity_class=intensity_class[mask].astype(np.uint8),
                       bits=bits[mask].astype(np.uint8))


class SiftTally(BaseModel):
    """Sifted bits and errors per basis and intensity class (counts only, no bits).

    ``sifted[b][k]`` and ``errors[b][k]``, b in Z, X and k in signal, decoy, vacuum.
    """

    detections: int = 0
    announced: int = 0
    sifted: list[list[int]] = Field(default_factory=lambda: [[0, 0, 0], [0, 0, 0]])
    errors: list[list[int]] = Field(default_factory=lambda: [[0, 0, 0], [0, 0, 0]])

    def add_sifted(self, basis: np.ndarray, intensity_class: np.ndarray,
                   weights: np.ndarray | None = None, *, errors: bool = False) -> None:
        table = self.errors if errors else self.sifted
        flat = np.bincount(basis.astype(np.int64) * 3 + intensity_class.astype(np.int64),
                           weights=weights, minlength=6)
        for i, n in enumerate(flat[:6]):
            table[i // 3][i % 3] += int(n)

    @property
    def sifted_bits(self) -> int:
        return sum(map(sum, self.sifted))

    def counts(self) -> SiftedCounts:
        """As the estimation stage's counts model."""
        from postprocessing.estimation import BasisCounts, ClassCounts, SiftedCounts

        def basis(b: int) -> BasisCounts:
            return BasisCounts(**{name: ClassCounts(sifted_bits=self.sifted[b][k], errors=self.errors[b][k])
                                  for k, name in enumerate(CLASS_NAMES)})

        return SiftedCounts(Z=basis(0), X=basis(1))

    @property
    def error_count(self) -> int:
        return sum(map(sum, self.errors))


__all__ = [
    "BASIS_NAMES",
    "CLASS_NAMES",
    "AliceAnnouncement",
    "BobAnnouncement",
    "SiftTally",
    "SiftedChunk",
    "SiftingError",
    "answer",
    "counts_from_messages",
    "keep",
    "sift_mask",
]


def counts_from_messages(z: object, x: object) -> SiftedCounts:
    """The estimation counts from the two :class:`~postprocessing.channel.messages.BasisCountsMsg`."""
    from postprocessing.estimation import BasisCounts, SiftedCounts

    return SiftedCounts(Z=BasisCounts.model_validate(z.model_dump()),  # type: ignore[attr-defined]
                        X=BasisCounts.model_validate(x.model_dump()))  # type: ignore[attr-defined]
