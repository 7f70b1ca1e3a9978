"""Detection-event pipeline: pass files and the post-processing stream. (Owned by the pipeline work.)"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from station.config.base import ConfigPath, Strict, ZmqEndpoint


class EventsConfig(Strict):
    """Pass files and the stream to the post-processing core (docs/passfile.md,
    docs/stream-protocol.md)."""

    flush_interval_s: float = Field(
        1.0, gt=0, le=60.0,
        description="Data at risk on a power cut: pass files are fsynced at least this often "
        "(wall time) and after at most this much recorded tagger time.")
    stream_endpoint: ZmqEndpoint = Field(
        "tcp://127.0.0.1:5560",
        description="ZeroMQ endpoint the event stream is served on (ROUTER): tcp://HOST:PORT "
        "or ipc://PATH. Anything but loopback (e.g. tcp://0.0.0.0:5560 for a post-processing "
        "core on another host) needs the CURVE keys below.")
    curve_secret_key_file: ConfigPath | None = Field(
        None,
        description="The station's CURVE secret certificate (`qkd-station keygen --name "
        "station`, mode 0600): the stream is then authenticated and encrypted, and only the "
        "consumers listed below may connect (docs/stream-protocol.md, Security).")
    curve_consumer_key_files: list[ConfigPath] = Field(
        default_factory=list, max_length=1000,
        description="Public certificates (.key) of the consumers allowed to connect, or "
        "folders of them (every *.key inside).")
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

    @field_validator("stream_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        from station.events.curve import check_endpoint

        return check_endpoint(value)

    @model_validator(mode="after")
    def _curve_or_loopback(self) -> EventsConfig:
        from station.events.curve import is_loopback

        if self.curve_secret_key_file is None:
            if self.curve_consumer_key_files:
                raise ValueError("curve_consumer_key_files is set but curve_secret_key_file "
                                 "is not: the station needs its own secret key to use CURVE")
            if not is_loopback(self.stream_endpoint):
                raise ValueError(
                    f"stream_endpoint {self.stream_endpoint!r} is reachable from other hosts but "
                    "the stream has no CURVE keys, so anyone could read the raw detections: set "
                    "curve_secret_key_file and curve_consumer_key_files (`qkd-station keygen`), "
                    "or serve on 127.0.0.1")
        elif not self.curve_consumer_key_files:
            raise ValueError("curve_secret_key_file is set but curve_consumer_key_files is "
                             "empty: no consumer could connect")
        return self

    def file_problems(self) -> list[str]:
        """``path: value: reason`` for every CURVE key file that cannot be used (read at
        start; ``check-config`` calls this so a missing key fails before the start)."""
        from station.events.curve import CurveKeyError, load_allowed_keys, load_keypair

        out: list[str] = []
        if self.curve_secret_key_file is not None:
            try:
                load_keypair(self.curve_secret_key_file)
            except CurveKeyError as exc:
                out.append(f"events.curve_secret_key_file: {str(self.curve_secret_key_file)!r}: "
                           f"{_without_path(exc, self.curve_secret_key_file)}")
        for i, p in enumerate(self.curve_consumer_key_files):
            try:
                load_allowed_keys([Path(p)])
            except CurveKeyError as exc:
                out.append(f"events.curve_consumer_key_files[{i}]: {str(p)!r}: "
                           f"{_without_path(exc, p)}")
        return out


def _without_path(exc: Exception, path: Path) -> str:
    # The line names the path already; keep the reason (and any file inside a folder).
    return str(exc).removeprefix(f"{path}: ")
