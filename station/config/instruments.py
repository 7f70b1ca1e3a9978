"""Auxiliary VISA instruments. (Owned by the instruments work.)"""

from __future__ import annotations

from station.config.base import Strict


class InstrumentsConfig(Strict):
    """Beacon laser and time reference."""
