"""Pass prediction: when each satellite is above the station's horizon mask, in two stages.

- :mod:`station.orbit.pass_search`: :func:`find_passes`, fast, for many satellites over
  days (all of them propagated at once with SGP4; rise, culmination and set refined to
  10 ms).
- :mod:`station.orbit.pass_description`: :func:`describe_pass`, detailed, for the few
  passes worth showing (skyfield frames: the 1 s track, the QKD window, Sun and Moon).
- :mod:`station.orbit.pass_ids`: the id both give a pass.

Callers import from here; the stages are separate modules because they share nothing
but :class:`PassEvent`.
"""

from __future__ import annotations

from station.orbit.pass_description import PassInfo, PassTrack, describe_pass
from station.orbit.pass_ids import pass_id
from station.orbit.pass_search import PassEvent, PassSearch, ProgressCallback, find_passes

__all__ = [
    "PassEvent",
    "PassInfo",
    "PassSearch",
    "PassTrack",
    "ProgressCallback",
    "describe_pass",
    "find_passes",
    "pass_id",
]
