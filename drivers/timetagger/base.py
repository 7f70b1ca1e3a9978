"""The time tagger interface every backend implements, and the batch it streams.

A batch is a numpy structured array of :data:`EVENT_DTYPE` in non-decreasing time order,
with :class:`BatchInfo` metadata. Timestamps are integer picoseconds on the tagger's own
time base; ``BatchInfo.start_ps``/``end_ps`` bound the interval the batch covers, so that
an empty interval is still accounted for and consecutive batches tile time without gaps
unless an overflow says otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from drivers.errors import ConnectionLost, DriverError, NotConnected

#: One detection: when (ps) and on which input channel. Little-endian on every platform.
EVENT_DTYPE = np.dtype([("timestamp_ps", "<i8"), ("channel", "u1")])


class Channel(IntEnum):
    """The station's standard channel map (configurable per tagger in its options)."""

    H = 1
    V = 2
    D = 3
    A = 4
    SYNC = 5
    PPS = 6


class TimeTaggerError(DriverError):
    """Any time tagger failure."""


class TimeTaggerConnectionLost(TimeTaggerError, ConnectionLost):
    """The link to the tagger is down."""


class TimeTaggerNotConnected(TimeTaggerError, NotConnected):
    """Used before ``connect()`` or after ``close()``."""


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Input settings of one channel."""

    channel: int
    trigger_level_v: float = 0.5
    delay_ps: int = 0
    dead_time_ps: int = 0


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """Metadata of one batch.

    Overflow semantics mirror the common taggers (Swabian event types 2/3/4): when the
    hardware buffer overflowed, ``overflow_begin``/``overflow_end`` mark where the lossy
    period starts/ends inside this batch, ``in_overflow`` says the whole batch lies inside
    one, and ``missed_events`` counts events the hardware knows it dropped.
    """

    seq: int
    start_ps: int
    end_ps: int
    resolution_ps: float
    overflow_begin: bool = False
    overflow_end: bool = False
    in_overflow: bool = False
    missed_events: int = 0
    #: Clock time (UTC seconds) corresponding to ``start_ps``, when the tagger knows it.
    start_time_s: float | None = None

    @property
    def lossy(self) -> bool:
        return self.overflow_begin or self.overflow_end or self.in_overflow or self.missed_events > 0


@dataclass(slots=True)
class Batch:
    info: BatchInfo
    events: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.events.dtype != EVENT_DTYPE:
            raise TypeError(f"batch events must have dtype {EVENT_DTYPE}, got {self.events.dtype}")

    def __len__(self) -> int:
        return len(self.events)


class LinkGeometry(Protocol):
    """Where the satellite is seen from the station, for a simulated downlink.

    Vectorised: takes an array of clock times (UTC seconds) and returns
    ``(range_km, elevation_deg)`` arrays of the same shape. Provided by the station's orbit
    code; drivers only see this protocol.
    """

    def range_el_at(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class SimulatedDownlink(Protocol):
    """Optional capability of a tagger whose detections come from a simulated downlink.

    A real tagger sees whatever light reaches the detectors; a simulated one has to be
    told where the satellite is and how well the station points at it. The station asks
    for this capability once, at assembly, with :meth:`TimeTagger.simulated_downlink`,
    and calls these typed methods on what it gets (never ``getattr`` on the tagger).
    """

    def set_link(self, geometry: LinkGeometry | None) -> None:
        """Follow this satellite (``None``: no satellite, only noise and local signals)."""
        ...

    def set_pointing_error_urad(self, error: float | Callable[[float], float] | None) -> None:
        """The station's tracking error in µrad, or a callable of clock time (UTC s)
        returning it; ``None`` means perfect tracking."""
        ...

    @property
    def tagger_epoch_utc_ps(self) -> int:
        """UTC (ps since the Unix epoch) of tagger time 0; known once started."""
        ...


class TimeTagger(ABC):
    """A multi-channel time tagger streaming :class:`Batch` es.

    Backends define a nested pydantic ``Options`` model and take
    ``(options, *, clock, name="timetagger")``. Optional capabilities are asked for with
    a method returning the capability or ``None`` (see :meth:`simulated_downlink`).
    """

    Options: type[BaseModel]
    name: str = "timetagger"

    def simulated_downlink(self) -> SimulatedDownlink | None:
        """The :class:`SimulatedDownlink` controls of this tagger, ``None`` for hardware
        and recordings (the default)."""
        return None

    @property
    @abstractmethod
    def resolution_ps(self) -> float: ...

    @property
    @abstractmethod
    def model(self) -> str:
        """Device model string, recorded in pass files."""

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def configure(self, channels: list[ChannelConfig]) -> None: ...

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def batches(self) -> AsyncIterator[Batch]:
        """Batches in order from :meth:`start` until :meth:`stop`; then the iterator ends."""

    @abstractmethod
    def count_rates_hz(self) -> dict[int, float]:
        """Per-channel count rates over a recent sliding window."""
