"""The optional simulator hooks of a time tagger, found once at assembly.

A simulated tagger models the downlink: it takes the pass's link geometry and the
mount's pointing error, and knows the UTC of its time 0. Other taggers have none of this.
:meth:`TaggerHooks.of` looks at the tagger once, when the station is built (the only
place that probes the device); the pass runner and the rehearsal call the typed methods,
which do nothing for a tagger without the hook.

The capability itself is the driver's :class:`~drivers.timetagger.base.SimulatedDownlink`,
asked for with :meth:`~drivers.timetagger.base.TimeTagger.simulated_downlink`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError
from drivers.timetagger.base import TimeTagger
from station.orbit.geometry import SatelliteLinkGeometry

#: Rate window of a tagger that does not say its own (seconds).
DEFAULT_RATE_WINDOW_S = 1.0


@dataclass(frozen=True)
class TaggerHooks:
    """Typed access to a tagger's optional simulator hooks (see the module docstring)."""

    tagger: TimeTagger
    _set_link: Callable[[SatelliteLinkGeometry | None], None] | None = None
    _set_pointing_error_urad: Callable[[float], None] | None = None
    rate_window_s: float = DEFAULT_RATE_WINDOW_S
    _epoch_utc_ps: Callable[[], int | None] | None = None

    @classmethod
    def of(cls, tagger: TimeTagger) -> TaggerHooks:
        """Ask ``tagger`` once, at assembly, for its simulator capability."""
        downlink = tagger.simulated_downlink()
        # Every backend's Options carries its rate window; a tagger without one has 1 s.
        options: Any = getattr(tagger, "options", None)
        window = getattr(options, "rate_window_s", None)
        return cls(
            tagger=tagger,
            _set_link=downlink.set_link if downlink is not None else None,
            _set_pointing_error_urad=(downlink.set_pointing_error_urad
                                      if downlink is not None else None),
            rate_window_s=float(window) if isinstance(window, int | float) else DEFAULT_RATE_WINDOW_S,
            _epoch_utc_ps=(lambda: downlink.tagger_epoch_utc_ps) if downlink is not None else None,
        )

    @property
    def follows_link(self) -> bool:
        """True for a tagger that models the downlink (a simulator)."""
        return self._set_link is not None

    def set_link(self, geometry: SatelliteLinkGeometry | None) -> None:
        """The pass's link geometry (None: no satellite); no-op without the hook."""
        if self._set_link is not None:
            self._set_link(geometry)

    def set_pointing_error_urad(self, error_urad: float) -> None:
        """The mount's pointing error on the sky; no-op without the hook."""
        if self._set_pointing_error_urad is not None:
            self._set_pointing_error_urad(error_urad)

    def started(self) -> bool:
        """Whether the tagger's time 0 is known (it ran); False for taggers without it."""
        if self._epoch_utc_ps is None:
            return False
        try:
            return self._epoch_utc_ps() is not None
        except DriverError:
            return False  # never started: the pass recorded nothing
