"""The ZeroMQ server of the event stream (``docs/stream-protocol.md``), on its own thread.

One ROUTER socket serves every consumer. Each consumer (DEALER) says which pass it wants
and from which sequence number; the server sends batches from the pass's index, at most
``window`` unacknowledged at a time (credit flow control, so ZeroMQ's high-water mark is
never reached and nothing is dropped), and an end-of-pass message with totals once the
last batch is out. Recording never waits for a consumer: the pass file is the buffer.

The parts: the socket and its CURVE setup (``stream_socket.py``), the passes that can be
served (``stream_catalog.py`` :class:`StreamCatalog`), and the protocol rules per consumer
session (``stream_sessions.py`` :class:`StreamSessions`); this module runs them on a thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from station.events.source import PassSource
from station.events.stream_catalog import StreamCatalog
from station.events.stream_sessions import StreamSessions
from station.events.stream_socket import (
    REPLIES_PER_S,
    AllowedKeys,
    Router,
    lower_priority,
    open_router,
)

__all__ = ["REPLIES_PER_S", "StreamServer", "lower_priority"]

log = logging.getLogger(__name__)


class StreamServer:
    """Serves pass files and live passes to consumers. Thread-safe entry points:
    :meth:`start`, :meth:`stop`, :meth:`reserve`, :meth:`unreserve`, :meth:`register`,
    :meth:`notify`, :attr:`consumers`.

    With ``curve_secret_key_file`` the stream is CURVE-encrypted and only consumers whose
    public keys are in ``curve_consumer_key_files`` can connect; without it the endpoint
    must be loopback (``ValueError`` otherwise)."""

    def __init__(self, endpoint: str, passes_dir: Path, *, max_window_batches: int = 256,
                 consumer_timeout_s: float = 10.0,
                 on_error: Callable[[str], None] | None = None,
                 curve_secret_key_file: Path | str | None = None,
                 curve_consumer_key_files: Sequence[Path | str] = ()):
        self.endpoint = endpoint
        self.passes_dir = Path(passes_dir)
        self.max_window_batches = max_window_batches
        self.consumer_timeout_s = consumer_timeout_s
        self._on_error = on_error
        self._curve_secret_file = Path(curve_secret_key_file) if curve_secret_key_file else None
        self._curve_consumer_files = [Path(p) for p in curve_consumer_key_files]
        self.catalog = StreamCatalog(self.passes_dir)
        self.sessions = StreamSessions(self.catalog, max_window_batches=max_window_batches,
                                       consumer_timeout_s=consumer_timeout_s)
        self._lock = threading.Lock()  # guards the wake-up pipe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._router: Router | None = None
        self._keys: AllowedKeys | None = None
        self.bound_endpoint = endpoint
        self.errors = 0

    @property
    def curve(self) -> bool:
        """Whether the stream is authenticated and encrypted (CURVE)."""
        return self._curve_secret_file is not None

    @property
    def consumers(self) -> int:
        """Consumer sessions open now."""
        return self.sessions.consumers

    @property
    def consumers_denied(self) -> int:
        """Connections refused for a CURVE key not on the allowed list."""
        return self._keys.denied if self._keys is not None else 0

    @property
    def replies_dropped(self) -> int:
        """Replies not sent because a connection asked faster than ``REPLIES_PER_S``."""
        return self.sessions.wire.replies_dropped

    @property
    def frames_refused(self) -> int:
        """Consumer messages refused as malformed (wrong frame count, invalid JSON ...)."""
        return self.sessions.frames_refused

    # -- thread-safe API -------------------------------------------------------------------
    def start(self) -> None:
        """Bind and start serving. Raises ``zmq.ZMQError`` if the endpoint is taken,
        ``ValueError`` (a :class:`~station.events.curve.CurveKeyError` for a key file) if
        the keys cannot be used or a non-loopback endpoint has none."""
        router = open_router(self.endpoint, self._curve_secret_file, self._curve_consumer_files)
        self._router, self._keys = router, router.keys
        self.bound_endpoint = router.bound_endpoint
        self.sessions.wire.sock = router.sock
        self._thread = threading.Thread(target=self._run, name="event-stream", daemon=True)
        self._thread.start()
        log.info("event stream on %s, %s", self.bound_endpoint,
                 f"CURVE, {len(self._keys.allowed)} consumer key(s) allowed" if self._keys
                 else "loopback only, no CURVE")

    def stop(self) -> None:
        self._stop.set()
        self.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.catalog.close_files()
        if self._router is not None:
            self._router.close()
            self._router = None
        with self._lock:
            # A late notify() must never write into a reused descriptor number.
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
        if wake_w >= 0:
            os.close(wake_r)
            os.close(wake_w)

    def reserve(self, pass_id: str) -> None:
        """A pass is about to open (before its file exists): from now on ``list`` shows it
        recording and a ``hello`` for it waits for its first batches, never sees it as a
        finished, empty file."""
        self.catalog.reserve(pass_id)
        self.notify()

    def unreserve(self, pass_id: str) -> None:
        """The pass could not be opened after all."""
        self.catalog.unreserve(pass_id)
        self.notify()

    def register(self, source: PassSource) -> None:
        """A pass starts recording: follow-mode consumers get it."""
        self.catalog.register(source)
        self.notify()

    def notify(self) -> None:
        """Something changed (new batch, pass closed): wake the server thread."""
        with self._lock:
            if self._wake_w < 0:
                return  # stopped
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # the pipe is full: a wake-up is already pending

    # -- server thread ---------------------------------------------------------------------
    def _run(self) -> None:
        lower_priority()
        assert self._router is not None
        sock = self._router.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                events = dict(poller.poll(500))
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                if sock in events:
                    for _ in range(1000):  # bounded so sending keeps its turn
                        got = self._recv(sock)
                        if got is None:
                            break
                        self.sessions.handle(*got)
                self.sessions.delivery.pump()
                self.sessions.expire()
            except Exception as exc:  # the stream must never take the daemon down
                self.errors += 1
                log.exception("event stream server: %s", exc)
                if self._on_error is not None:
                    self._on_error(str(exc))
                time.sleep(0.1)  # don't spin if the fault persists

    @staticmethod
    def _recv(sock: zmq.Socket[bytes]) -> tuple[bytes, bytes | None, int] | None:
        """(routing id, frame 0, frame count) of the next message; extra frames are read
        and dropped one by one, so a message of many frames never sits in memory whole."""
        try:
            identity = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        first: bytes | None = None
        n = 0
        while sock.getsockopt(zmq.RCVMORE):
            part = sock.recv()
            if n == 0:
                first = part
            n += 1
        return identity, first, n
