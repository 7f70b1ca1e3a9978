"""Detection events: pass files (Arrow IPC) and the lossless ZeroMQ stream.

See ``docs/passfile.md`` and ``docs/stream-protocol.md``.
"""

from station.events.passfile import PassFileReader, PassHeader, ReadStop, read_pass_file
from station.events.pipeline import (
    EventPipeline,
    PassRecorder,
    PassTotals,
    RecorderStats,
    RecoveryInfo,
    recover_interrupted,
)

__all__ = [
    "EventPipeline",
    "PassFileReader",
    "PassHeader",
    "PassRecorder",
    "PassTotals",
    "ReadStop",
    "RecorderStats",
    "RecoveryInfo",
    "read_pass_file",
    "recover_interrupted",
]
