"""Detection-event pipeline: pass files and the post-processing stream. (Owned by the pipeline work.)"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from station.config.base import Strict, ZmqEndpoint


class EventsConfig(Strict):
    """Pass files and the stream to the post-processing core (docs/passfile.md,
    docs/stream-protocol.md)."""

    flush_interval_s: float = Field(
        1.0, gt=0, le=60.0,
        description="Data at risk on a power cut: pass files are fsynced at least this often "
        "(wall time) and after at most this much recorded tagger time.")
    stream_endpoint: ZmqEndpoint = Field(
        "tcp://127.0.0.1:5560",
        description="ZeroMQ endpoint the event stream is served on (ROUTER), e.g. "
        "tcp://0.0.0.0:5560 for a post-processing core on another host.")
    passes_dir: str = Field(
        "passes", description="Folder for pass files, relative to state_dir.")
    compression: Literal["lz4", "zstd", "none"] = Field(
        "lz4", description="Arrow IPC body compression of pass files (lz4 is the fastest).")
    max_queue_batches: int = Field(
        64, ge=1, le=100_000,
        description="Batches queued for the writer before push() waits (backpressure to the "
        "tagger); bounds the memory and the data held only in memory.")
    encoder_threads: int = Field(
        2, ge=1, le=16,
        description="Threads compressing batches in parallel (the writer keeps their order).")
    cache_batches: int = Field(
        32, ge=0, le=100_000,
        description="Recent batches kept in memory for the stream; older ones are read back "
        "from the pass file.")
    stream_max_window_batches: int = Field(
        256, ge=1, le=100_000,
        description="Most batches a consumer may have unacknowledged (it asks for its own "
        "window up to this).")
    consumer_timeout_s: float = Field(
        10.0, gt=0, le=3600,
        description="A consumer silent this long is considered gone (it pings when idle).")
