"""The ZeroMQ server of the event stream (``docs/stream-protocol.md``), on its own thread.

One ROUTER socket serves every consumer. Each consumer (DEALER) says which pass it wants
and from which sequence number; the server sends batches from the pass's index, at most
``window`` unacknowledged at a time (credit flow control, so ZeroMQ's high-water mark is
never reached and nothing is dropped), and an end-of-pass message with totals once the
last batch is out. Recording never waits for a consumer: the pass file is the buffer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from station.events import passfile
from station.events.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Error,
    ErrorCode,
    Hello,
    ListPasses,
    PassBegin,
    Passes,
    PassInfo,
    Ping,
    Pong,
    ProtocolError,
    Waiting,
    encode,
    parse_consumer,
)
from station.events.source import PassSource

log = logging.getLogger(__name__)


def _task_ids() -> set[str]:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _lower_new_zmq_threads(before: set[str], step: int = 5) -> None:
    """libzmq's I/O threads of a context just created get the same lower priority."""
    for tid in _task_ids() - before:
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            if comm.startswith("ZMQbg"):
                prio = os.getpriority(os.PRIO_PROCESS, int(tid))
                os.setpriority(os.PRIO_PROCESS, int(tid), min(19, prio + step))
        except (OSError, ValueError):
            pass


def lower_priority(step: int = 5) -> None:
    """Run the calling (pipeline) thread at a lower CPU priority than the event loop, so
    that on a loaded machine tracking and MQTT keep their timing and the pipeline gets the
    rest. Linux applies a nice value per thread; elsewhere this does nothing."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError):
        pass


@dataclass
class _Session:
    identity: bytes
    follow: bool
    window: int
    name: str
    last_seen_s: float
    source: PassSource | None = None
    next_seq: int = 0
    acked_seq: int = -1
    end_sent: bool = False
    done: set[str] = field(default_factory=set)
    waiting_sent: bool = False


class StreamServer:
    """Serves pass files and live passes to consumers. Thread-safe entry points:
    :meth:`start`, :meth:`stop`, :meth:`register`, :meth:`notify`, :attr:`consumers`."""

    def __init__(self, endpoint: str, passes_dir: Path, *, max_window_batches: int = 256,
                 consumer_timeout_s: float = 10.0,
                 on_error: Callable[[str], None] | None = None):
        self.endpoint = endpoint
        self.passes_dir = Path(passes_dir)
        self.max_window_batches = max_window_batches
        self.consumer_timeout_s = consumer_timeout_s
        self._on_error = on_error
        self._live: dict[str, PassSource] = {}
        self._on_disk: dict[str, PassSource] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self.consumers = 0
        self.bound_endpoint = endpoint
        self.errors = 0

    # -- thread-safe API -------------------------------------------------------------------
    def start(self) -> None:
        """Bind (raises zmq.ZMQError if the endpoint is taken) and start serving."""
        before = _task_ids()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        _lower_new_zmq_threads(before)
        # An unroutable reply raises instead of vanishing; no HWM: the credit window bounds
        # what is queued per consumer.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        # Dead TCP peers are noticed by ZMTP heartbeats even if the consumer host vanished.
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(0)
            self._ctx.term()
            raise
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="event-stream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for src in list(self._live.values()) + list(self._on_disk.values()):
            src.close_file()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        with self._lock:
            # A late notify() must never write into a reused descriptor number.
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
        if wake_w >= 0:
            os.close(wake_r)
            os.close(wake_w)

    def register(self, source: PassSource) -> None:
        """A pass starts recording: follow-mode consumers get it."""
        with self._lock:
            self._live[source.pass_id] = source
            self._on_disk.pop(source.pass_id, None)
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
        sock = self._sock
        assert sock is not None
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
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                self._pump()
                self._expire()
            except Exception as exc:  # the stream must never take the daemon down
                self.errors += 1
                log.exception("event stream server: %s", exc)
                if self._on_error is not None:
                    self._on_error(str(exc))
                time.sleep(0.1)  # don't spin if the fault persists

    def _send(self, identity: bytes, frames: list[object]) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([identity, *frames], copy=False)  # type: ignore[list-item]
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the consumer has gone
            log.info("stream consumer %r unreachable (%s); dropping its session", identity, exc)
            self._sessions.pop(identity, None)
            return False

    def _error(self, identity: bytes, code: ErrorCode, message: str, pass_id: str | None = None) -> None:
        log.warning("stream consumer %r: %s: %s", identity, code, message)
        self._send(identity, [encode(Error(code=code, message=message, pass_id=pass_id))])

    def _handle(self, frames: list[bytes]) -> None:
        identity = frames[0]
        if len(frames) < 2:
            return
        try:
            msg = parse_consumer(frames[1])
        except ProtocolError as exc:
            self._error(identity, "bad_request", f"not a valid message: {exc}")
            return
        now = time.monotonic()  # liveness of a peer is an I/O timeout, not domain time
        session = self._sessions.get(identity)
        if session is not None:
            session.last_seen_s = now
        if session is None and isinstance(msg, Ack | Ping):
            # The station restarted (or the session timed out): the consumer must say hello
            # again, with the sequence number it holds.
            self._error(identity, "no_session", "no session for this connection (the station "
                        "restarted or the consumer was silent too long): send hello again")
            return
        if isinstance(msg, Hello):
            self._hello(identity, msg, now)
        elif isinstance(msg, Ack):
            assert session is not None
            if session.source is None or msg.pass_id != session.source.pass_id:
                return  # a late ack for an earlier pass of this session: harmless
            if msg.seq >= session.next_seq:
                self._error(identity, "bad_request",
                            f"ack of seq {msg.seq} but only up to {session.next_seq - 1} was sent",
                            msg.pass_id)
                return
            session.acked_seq = max(session.acked_seq, msg.seq)
            src = session.source
            src.acked_seq = max(src.acked_seq, msg.seq)
        elif isinstance(msg, Ping):
            self._send(identity, [encode(Pong(consumer_timeout_s=self.consumer_timeout_s))])
        elif isinstance(msg, ListPasses):
            self._send(identity, [encode(self._list())])
        elif isinstance(msg, Bye):
            self._sessions.pop(identity, None)
        self._count()

    def _hello(self, identity: bytes, msg: Hello, now: float) -> None:
        if msg.protocol != PROTOCOL_VERSION:
            self._error(identity, "protocol_version",
                        f"this station speaks protocol {PROTOCOL_VERSION}, not {msg.protocol}")
            return
        window = min(msg.window, self.max_window_batches)
        old = self._sessions.get(identity)
        session = _Session(identity, follow=msg.pass_id is None, window=window,
                           name=msg.consumer, last_seen_s=now,
                           done=old.done if old is not None else set())
        if msg.pass_id is not None:
            src = self._find(msg.pass_id)
            if src is None:
                self._error(identity, "unknown_pass",
                            f"no pass '{msg.pass_id}' is recorded in {self.passes_dir}", msg.pass_id)
                return
            if msg.resume_seq > len(src.entries) and not src.recording:
                self._error(identity, "bad_resume",
                            f"pass '{msg.pass_id}' has {len(src.entries)} batches; cannot resume "
                            f"from seq {msg.resume_seq}", msg.pass_id)
                return
            # Another session of this consumer name on the same pass is a restarted
            # consumer whose old socket is gone: end the stale one.
            for other in list(self._sessions.values()):
                if other.identity != identity and other.name and other.name == msg.consumer:
                    self._sessions.pop(other.identity, None)
                    self._error(other.identity, "superseded",
                                f"a newer connection of consumer '{msg.consumer}' took over")
            self._sessions[identity] = session
            self._begin(session, src, msg.resume_seq)
        else:
            self._sessions[identity] = session
        log.info("stream consumer %r (%s) asks for %s from seq %d, window %d", identity,
                 msg.consumer or "unnamed", msg.pass_id or "the current and next passes",
                 msg.resume_seq, window)

    def _begin(self, session: _Session, src: PassSource, resume_seq: int) -> None:
        session.source, session.next_seq = src, resume_seq
        session.acked_seq, session.end_sent = resume_seq - 1, False
        self._send(session.identity, [encode(PassBegin(
            pass_id=src.pass_id, resume_seq=resume_seq, recording=src.recording,
            batches_available=len(src.entries), header=src.header))])

    def _find(self, pass_id: str) -> PassSource | None:
        with self._lock:
            src = self._live.get(pass_id) or self._on_disk.get(pass_id)
        if src is not None:
            return src
        path = self.passes_dir / f"{pass_id}{passfile.SUFFIX}"
        if "/" in pass_id or not path.is_file():
            return None
        try:
            src = PassSource.from_file(path)
        except (OSError, ValueError) as exc:
            log.warning("cannot serve %s: %s", path, exc)
            return None
        with self._lock:
            self._on_disk[pass_id] = src
        return src

    def _list(self) -> Passes:
        with self._lock:
            live = dict(self._live)
        out = [PassInfo(pass_id=s.pass_id, recording=s.recording, batches=len(s.entries),
                        events=s.entries[-1].cum_events if s.entries else 0) for s in live.values()]
        for path in sorted(self.passes_dir.glob(f"*{passfile.SUFFIX}")):
            if path.stem in live:
                continue
            side = passfile.read_sidecar(path) or {}
            totals = side.get("totals") or {}
            out.append(PassInfo(pass_id=path.stem, recording=False,
                                batches=int(totals.get("batches_recorded", -1)),
                                events=int(totals.get("events_recorded", -1))))
        return Passes(passes=out)

    def _next_live(self, session: _Session) -> PassSource | None:
        with self._lock:
            for src in self._live.values():
                if src.pass_id not in session.done:
                    return src
        return None

    def _pump(self) -> None:
        for session in list(self._sessions.values()):
            if session.source is None:
                if not session.follow:
                    continue
                src = self._next_live(session)
                if src is None:
                    if not session.waiting_sent:
                        session.waiting_sent = self._send(session.identity, [encode(Waiting())])
                    continue
                self._begin(session, src, 0)
            self._pump_one(session)

    def _pump_one(self, s: _Session) -> None:
        src = s.source
        assert src is not None
        available = len(src.entries)
        while s.next_seq < available and s.next_seq - s.acked_seq <= s.window:
            seq = s.next_seq
            entry = src.entries[seq]
            ts, ch = src.get(seq)
            hdr = entry.header(src.pass_id, seq).model_dump_json().encode()
            if not self._send(s.identity, [hdr, ts, ch]):
                return
            s.next_seq += 1
        end = src.end
        if end is not None and not s.end_sent and s.next_seq >= end.batches:
            s.end_sent = self._send(s.identity, [encode(end)])
            if s.follow and s.end_sent:
                s.done.add(src.pass_id)
                s.source, s.waiting_sent = None, False
        if end is not None and not src.recording:
            with self._lock:
                if self._live.get(src.pass_id) is src and all(
                        x.source is not src for x in self._sessions.values()):
                    # Finished and nobody is reading it live any more: serve it from disk.
                    self._live.pop(src.pass_id)
                    self._on_disk[src.pass_id] = src

    def _expire(self) -> None:
        now = time.monotonic()
        for ident, s in list(self._sessions.items()):
            if now - s.last_seen_s > self.consumer_timeout_s:
                log.warning("stream consumer %r (%s) silent for %.0f s; session closed "
                            "(it resumes from the pass file when it comes back)",
                            ident, s.name or "unnamed", now - s.last_seen_s)
                self._sessions.pop(ident)
        self._count()

    def _count(self) -> None:
        self.consumers = len(self._sessions)
