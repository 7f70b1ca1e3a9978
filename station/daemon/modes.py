"""Operating modes and pass phases: re-exported from :mod:`station.vocabulary`.

The enums moved there so that ``station.mqtt`` need not import the daemon; this module
keeps the old import path working for the daemon's own modules.
"""

from __future__ import annotations

from station.vocabulary import PHASE_ORDER, Mode, Outcome, Phase

__all__ = ["PHASE_ORDER", "Mode", "Outcome", "Phase"]
