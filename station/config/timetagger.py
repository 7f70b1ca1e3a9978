"""Time tagger backend and channel map. (Owned by the time tagger work.)"""

from __future__ import annotations

from typing import ClassVar

from station.config.base import BackendConfig


class TimeTaggerConfig(BackendConfig):
    """The time tagger, chosen by backend name."""

    kind: ClassVar[str] = "timetagger"
