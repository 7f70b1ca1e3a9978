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
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from station.events import curve, passfile
from station.events.protocol import (
    MAX_CONSUMER_FRAME_BYTES,
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


#: Replies other than batches (errors, pongs, pass lists) one connection may get per
#: second; a consumer flooding the station with requests gets no more, so it cannot make
#: the station queue replies without end.
REPLIES_PER_S = 200
#: Connections remembered for no_session suppression and reply limiting.
_MAX_REMEMBERED = 4096
_ZAP_DOMAIN = "qkd-stream"


class _Pending:
    """A pass named (reserved) but whose recorder has not registered its source yet."""


_PENDING = _Pending()


@dataclass
class _Session:
    identity: bytes
    follow: bool
    window: int
    name: str
    last_seen_s: float
    queue: deque[tuple[str, int]] = field(default_factory=deque)
    opened_idx: int = 0
    source: PassSource | None = None
    next_seq: int = 0
    acked_seq: int = -1
    end_sent: bool = False
    served: set[str] = field(default_factory=set)
    waiting_sent: bool = False
    prev_source: PassSource | None = None


class _AllowedKeys:
    """ZAP credentials provider: the consumer public keys from the config files."""

    def __init__(self, allowed: dict[bytes, str]):
        self.allowed = allowed
        self.denied = 0
        self._logged: OrderedDict[bytes, None] = OrderedDict()

    def callback(self, domain: str, key: bytes) -> bool:
        import zmq.utils.z85 as z85

        z = z85.encode(key) if len(key) == 32 else key
        if z in self.allowed:
            return True
        self.denied += 1
        if z not in self._logged:  # one line per unknown key, not one per attempt
            self._logged[z] = None
            if len(self._logged) > 1000:
                self._logged.popitem(last=False)
            log.warning("event stream: refused a consumer with CURVE key %s (not in "
                        "[events] curve_consumer_key_files)", z.decode(errors="replace"))
        return False


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
        self._live: dict[str, PassSource] = {}
        self._reserved: set[str] = set()
        self._opened: list[str] = []  # every pass reserved/registered, in opening order
        self._opened_set: set[str] = set()
        self._on_disk: dict[str, PassSource] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._no_session_sent: OrderedDict[bytes, None] = OrderedDict()
        self._replies: OrderedDict[bytes, list[float]] = OrderedDict()
        self._nonce = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._keys: _AllowedKeys | None = None
        self.consumers = 0
        self.bound_endpoint = endpoint
        self.errors = 0
        self.replies_dropped = 0
        self.frames_refused = 0

    @property
    def curve(self) -> bool:
        """Whether the stream is authenticated and encrypted (CURVE)."""
        return self._curve_secret_file is not None

    @property
    def consumers_denied(self) -> int:
        """Connections refused for a CURVE key not on the allowed list."""
        return self._keys.denied if self._keys is not None else 0

    # -- thread-safe API -------------------------------------------------------------------
    def start(self) -> None:
        """Bind and start serving. Raises ``zmq.ZMQError`` if the endpoint is taken,
        ``ValueError`` (a :class:`~station.events.curve.CurveKeyError` for a key file) if
        the keys cannot be used or a non-loopback endpoint has none."""
        curve.check_endpoint(self.endpoint)
        keypair = None
        if self._curve_secret_file is not None:
            keypair = curve.load_keypair(self._curve_secret_file)
            allowed = curve.load_allowed_keys(self._curve_consumer_files)
            if not allowed:
                raise curve.CurveKeyError("CURVE without any allowed consumer key: nobody "
                                          "could connect (curve_consumer_key_files)")
            self._keys = _AllowedKeys(allowed)
        elif not curve.is_loopback(self.endpoint):
            raise ValueError(f"{self.endpoint}: the stream without CURVE keys binds loopback "
                             "only (anyone else could read the raw detections)")
        before = _task_ids()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        _lower_new_zmq_threads(before)
        # An unroutable reply raises instead of vanishing; no send HWM: the credit window
        # bounds what is queued per consumer. The receive side is bounded: a consumer
        # sends a few small messages per window, and past the HWM libzmq stops reading
        # that connection (TCP backpressure) instead of buffering without end.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.setsockopt(zmq.LINGER, 0)
        # A frame over the limit makes libzmq drop the connection from its length header,
        # before the frame is read or allocated: it never reaches the parser.
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONSUMER_FRAME_BYTES)
        # Dead TCP peers are noticed by ZMTP heartbeats even if the consumer host vanished.
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        try:
            if keypair is not None:
                assert self._keys is not None
                self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(f"{__name__}.zap"))
                self._auth.start()
                self._auth.configure_curve_callback(_ZAP_DOMAIN, credentials_provider=self._keys)
                sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
                # No ZAP handler must mean no access, never open access.
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
                sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.bind(self.endpoint)
        except (zmq.ZMQError, ValueError):
            sock.close(0)
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            self._ctx.term()
            raise
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
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
        for src in list(self._live.values()) + list(self._on_disk.values()):
            src.close_file()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
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

    def reserve(self, pass_id: str) -> None:
        """A pass is about to open (before its file exists): from now on ``list`` shows it
        recording and a ``hello`` for it waits for its first batches, never sees it as a
        finished, empty file."""
        with self._lock:
            self._reserved.add(pass_id)
            self._on_disk.pop(pass_id, None)
            self._note_opened(pass_id)
        self.notify()

    def unreserve(self, pass_id: str) -> None:
        """The pass could not be opened after all."""
        with self._lock:
            self._reserved.discard(pass_id)
        self.notify()

    def register(self, source: PassSource) -> None:
        """A pass starts recording: follow-mode consumers get it."""
        with self._lock:
            self._live[source.pass_id] = source
            self._reserved.discard(source.pass_id)
            self._on_disk.pop(source.pass_id, None)
            self._note_opened(source.pass_id)
        self.notify()

    def _note_opened(self, pass_id: str) -> None:
        if pass_id not in self._opened_set:
            self._opened_set.add(pass_id)
            self._opened.append(pass_id)

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
                        got = self._recv(sock)
                        if got is None:
                            break
                        self._handle(*got)
                self._pump()
                self._expire()
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

    def _send(self, identity: bytes, frames: list[object]) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([identity, *frames], copy=False)  # type: ignore[list-item]
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the consumer has gone
            log.info("stream consumer %r unreachable (%s); dropping its session", identity, exc)
            self._sessions.pop(identity, None)
            return False

    def _reply(self, identity: bytes, frame: bytes) -> bool:
        """A non-batch message, within the per-connection reply limit."""
        now = time.monotonic()
        slot = self._replies.get(identity)
        if slot is None or now - slot[0] >= 1.0:
            slot = [now, 0.0]
            self._replies[identity] = slot
            self._replies.move_to_end(identity)
            while len(self._replies) > _MAX_REMEMBERED:
                self._replies.popitem(last=False)
        slot[1] += 1
        if slot[1] > REPLIES_PER_S:
            self.replies_dropped += 1
            if slot[1] == REPLIES_PER_S + 1:
                log.warning("stream consumer %r sends more than %d requests a second; "
                            "further replies this second are dropped", identity, REPLIES_PER_S)
            return False
        return self._send(identity, [frame])

    def _error(self, identity: bytes, code: ErrorCode, message: str, pass_id: str | None = None) -> None:
        # Logged only when answered: a flood is bounded in the log as on the wire.
        if self._reply(identity, encode(Error(code=code, message=message, pass_id=pass_id))):
            log.warning("stream consumer %r: %s: %s", identity, code, message)

    def _handle(self, identity: bytes, frame: bytes | None, n_frames: int) -> None:
        if n_frames != 1 or frame is None:
            self.frames_refused += 1
            self._error(identity, "bad_request",
                        f"a consumer message is exactly one frame, this one had {n_frames}")
            return
        try:
            msg = parse_consumer(frame)
        except ProtocolError as exc:
            self.frames_refused += 1
            if exc.msg_type == "hello":
                self._sessions.pop(identity, None)  # a refused hello leaves no session
                self._count()
            self._error(identity, "bad_request", f"not a valid message: {exc}")
            return
        now = time.monotonic()  # liveness of a peer is an I/O timeout, not domain time
        session = self._sessions.get(identity)
        if session is not None:
            session.last_seen_s = now
        if session is None and isinstance(msg, Ack | Ping):
            # The station restarted (or the session timed out): the consumer must say hello
            # again. Once per connection: the acks it had in flight need no answer each.
            if identity not in self._no_session_sent:
                self._no_session_sent[identity] = None
                while len(self._no_session_sent) > _MAX_REMEMBERED:
                    self._no_session_sent.popitem(last=False)
                self._error(identity, "no_session", "no session for this connection (the "
                            "station restarted or the consumer was silent longer than "
                            f"{self.consumer_timeout_s:g} s): send hello again")
            return
        if isinstance(msg, Hello):
            self._no_session_sent.pop(identity, None)
            self._hello(identity, msg, now)
        elif isinstance(msg, Ack):
            assert session is not None
            self._ack(session, msg)
        elif isinstance(msg, Ping):
            self._reply(identity, encode(Pong(consumer_timeout_s=self.consumer_timeout_s)))
        elif isinstance(msg, ListPasses):
            self._reply(identity, encode(self._list()))
        elif isinstance(msg, Bye):
            self._sessions.pop(identity, None)
        self._count()

    def _ack(self, s: _Session, msg: Ack) -> None:
        src = s.source
        if src is None or msg.pass_id != src.pass_id:
            if msg.pass_id in s.served:
                # A late ack for an earlier pass of this connection: harmless; it still
                # counts for that pass's progress figure (events_streamed).
                prev = s.prev_source
                if prev is not None and prev.pass_id == msg.pass_id and msg.seq < len(prev.entries):
                    prev.acked_seq = max(prev.acked_seq, msg.seq)
                return
            self._error(s.identity, "bad_request", f"ack for pass '{msg.pass_id}', which this "
                        "connection is not receiving", msg.pass_id)
            return
        available = len(src.entries)
        if msg.seq >= available:
            self._error(s.identity, "bad_request", f"ack of seq {msg.seq} but pass "
                        f"'{src.pass_id}' has {available} batches so far", msg.pass_id)
            return
        # An ack is the consumer's word that it holds every batch up to seq: free the
        # window, and do not send it what it already holds (batches that were in flight
        # before a re-hello may be acked before this session sent them).
        s.acked_seq = max(s.acked_seq, msg.seq)
        s.next_seq = max(s.next_seq, msg.seq + 1)
        src.acked_seq = max(src.acked_seq, msg.seq)

    def _hello(self, identity: bytes, msg: Hello, now: float) -> None:
        if msg.protocol != PROTOCOL_VERSION:
            self._error(identity, "protocol_version",
                        f"this station speaks protocol {PROTOCOL_VERSION}, not {msg.protocol}")
            return
        window = min(msg.window, self.max_window_batches)
        # A hello replaces this connection's session, also when it is refused.
        old = self._sessions.pop(identity, None)
        session = _Session(identity, follow=msg.pass_id is None, window=window,
                           name=msg.consumer, last_seen_s=now,
                           served=old.served if old is not None else set())
        if msg.pass_id is not None:
            if msg.catch_up or msg.cursor is not None:
                self._error(identity, "bad_request", "catch_up and cursor belong to follow "
                            "mode (pass_id null)", msg.pass_id)
                return
            if self._check_resume(identity, msg.pass_id, msg.resume_seq) is not True:
                return
            session.queue.append((msg.pass_id, msg.resume_seq))
        else:
            if msg.resume_seq != 0:
                self._error(identity, "bad_request", "follow mode (pass_id null) resumes "
                            "through catch_up, not resume_seq: list, then hello with "
                            "catch_up=[{pass_id, resume_seq}] and the list's cursor")
                return
            queued: set[str] = set()
            for c in msg.catch_up:
                if c.pass_id in queued:
                    self._error(identity, "bad_request",
                                f"pass '{c.pass_id}' is twice in catch_up", c.pass_id)
                    return
                ok = self._check_resume(identity, c.pass_id, c.resume_seq)
                if ok is None:
                    continue  # unknown: said so, and skipped (it cannot be served)
                if not ok:
                    return
                queued.add(c.pass_id)
                session.queue.append((c.pass_id, c.resume_seq))
            with self._lock:
                opened = list(self._opened)
                now_recording = [p for p in opened if p in self._reserved
                                 or (p in self._live and self._live[p].recording)]
            if msg.cursor is not None:
                start = self._cursor_index(msg.cursor, len(opened))
                if start is None:
                    self._error(identity, "stale_cursor", f"cursor {msg.cursor!r} is not from "
                                "this run of the station (it restarted): list again")
                    return
                later = opened[start:]
            else:
                later = now_recording  # no cursor: from the pass being recorded on
            session.queue.extend((p, 0) for p in later if p not in queued)
            session.opened_idx = len(opened)
        # A newer session of the same consumer name is a restarted consumer whose old
        # socket is gone (or a duplicate): end the stale one.
        for other in list(self._sessions.values()):
            if other.identity != identity and other.name and other.name == msg.consumer:
                self._sessions.pop(other.identity, None)
                self._error(other.identity, "superseded",
                            f"a newer connection of consumer '{msg.consumer}' took over")
        self._sessions[identity] = session
        log.info("stream consumer %r (%s) asks for %s, window %d", identity,
                 msg.consumer or "unnamed",
                 f"{msg.pass_id} from seq {msg.resume_seq}" if msg.pass_id else
                 f"follow mode: {len(session.queue)} pass(es) queued", window)
        self._start_next(session)

    def _check_resume(self, identity: bytes, pass_id: str, resume_seq: int) -> bool | None:
        """True if the pass can be served from ``resume_seq``; None (said so) if there is
        no such pass; False (said so) if it has fewer batches."""
        src = self._find(pass_id)
        if src is None:
            self._error(identity, "unknown_pass",
                        f"no pass '{pass_id}' is recorded in {self.passes_dir} (or its file "
                        "cannot be read)", pass_id)
            return None
        available = 0 if src is _PENDING else len(src.entries)  # type: ignore[union-attr]
        if resume_seq > available:
            self._error(identity, "bad_resume",
                        f"pass '{pass_id}' has {available} batches; cannot resume from seq "
                        f"{resume_seq} (resume_seq may be at most the number of batches)", pass_id)
            return False
        return True

    def _cursor_index(self, cursor: str, n_opened: int) -> int | None:
        nonce, _, count = cursor.partition(":")
        if nonce != self._nonce or not count.isdigit() or int(count) > n_opened:
            return None
        return int(count)

    def _start_next(self, s: _Session) -> None:
        """Begin the next queued pass of an idle session (or say it is waiting)."""
        while s.source is None and s.queue:
            pass_id, resume = s.queue[0]
            src = self._find(pass_id)
            if src is _PENDING:
                return  # named, its recorder registers in a moment
            s.queue.popleft()
            if src is None or not isinstance(src, PassSource):
                self._error(s.identity, "unknown_pass", f"pass '{pass_id}' is no longer on the "
                            f"station ({self.passes_dir}); going on with the next", pass_id)
                continue
            if resume > len(src.entries):
                self._error(s.identity, "bad_resume", f"pass '{pass_id}' has "
                            f"{len(src.entries)} batches; cannot resume from seq {resume}", pass_id)
                continue
            self._begin(s, src, resume)
        if s.source is None and s.follow and not s.queue and not s.waiting_sent:
            s.waiting_sent = self._reply(s.identity, encode(Waiting()))

    def _begin(self, session: _Session, src: PassSource, resume_seq: int) -> None:
        session.source, session.next_seq = src, resume_seq
        session.acked_seq, session.end_sent = resume_seq - 1, False
        session.served.add(src.pass_id)
        session.waiting_sent = False
        self._send(session.identity, [encode(PassBegin(
            pass_id=src.pass_id, resume_seq=resume_seq, recording=src.recording,
            batches_available=len(src.entries), header=src.header, window=session.window,
            follow=session.follow))])

    def _find(self, pass_id: str) -> PassSource | _Pending | None:
        with self._lock:
            src = self._live.get(pass_id) or self._on_disk.get(pass_id)
            if src is None and pass_id in self._reserved:
                return _PENDING
        if src is not None:
            return src
        path = self.passes_dir / f"{pass_id}{passfile.SUFFIX}"
        if "/" in pass_id or pass_id.startswith(".") or not path.is_file():
            return None
        try:
            disk = PassSource.from_file(path)
        except (OSError, ValueError) as exc:
            log.warning("cannot serve %s: %s", path, exc)
            return None
        with self._lock:
            # reserve() comes before a recorder creates its file: a file found above that
            # is being recorded is known here by now, and never served as a finished one.
            if pass_id in self._reserved:
                return _PENDING
            src = self._live.get(pass_id) or self._on_disk.get(pass_id)
            if src is None:
                src = self._on_disk[pass_id] = disk
        return src

    def _list(self) -> Passes:
        with self._lock:
            live = dict(self._live)
            reserved = set(self._reserved)
            on_disk = dict(self._on_disk)
            cursor = f"{self._nonce}:{len(self._opened)}"
        out = [PassInfo(pass_id=p, recording=True, batches=0, events=0) for p in sorted(reserved)]
        out += [PassInfo(pass_id=s.pass_id, recording=s.recording, batches=len(s.entries),
                         events=s.entries[-1].cum_events if s.entries else 0)
                for s in live.values()]
        for path in sorted(self.passes_dir.glob(f"*{passfile.SUFFIX}")):
            stem = path.stem
            if stem in live or stem in reserved:
                continue
            known = on_disk.get(stem)
            if known is not None:
                out.append(PassInfo(pass_id=stem, recording=False, batches=len(known.entries),
                                    events=known.entries[-1].cum_events if known.entries else 0))
                continue
            side = passfile.read_sidecar(path) or {}
            totals = side.get("totals") or {}
            out.append(PassInfo(pass_id=stem, recording=False,
                                batches=_int(totals.get("batches_recorded", -1)),
                                events=_int(totals.get("events_recorded", -1))))
        return Passes(passes=out, cursor=cursor)

    def _pump(self) -> None:
        with self._lock:
            opened = list(self._opened)
        for session in list(self._sessions.values()):
            if session.follow and session.opened_idx < len(opened):
                # Passes opened since: queued, in order, whatever becomes of them before
                # this consumer gets to them (a pass that opens and closes meanwhile is
                # served from its file).
                queued = {p for p, _ in session.queue}
                cur = session.source.pass_id if session.source else None
                for p in opened[session.opened_idx:]:
                    if p not in queued and p != cur and p not in session.served:
                        session.queue.append((p, 0))
                session.opened_idx = len(opened)
            if session.source is None:
                self._start_next(session)
                if session.source is None:
                    continue
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
            if s.end_sent:
                s.source, s.prev_source = None, src  # follow mode: on to the next queued pass
                self._start_next(s)
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


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1
