"""Detection-event pipeline: pass files and the post-processing stream. (Owned by the pipeline work.)"""

from __future__ import annotations

from pydantic import Field

from station.config.base import Strict


class EventsConfig(Strict):
    """Pass files and the stream to the post-processing core."""

    flush_interval_s: float = Field(1.0, gt=0, le=1.0, description="Data at risk on a crash.")
    stream_endpoint: str = Field("tcp://127.0.0.1:5560", description="ZeroMQ endpoint served.")
