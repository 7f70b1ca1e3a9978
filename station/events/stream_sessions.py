"""The event stream's protocol rules: one session per consumer connection.

:class:`StreamSessions` runs on the stream server's thread. It takes each consumer message
(:meth:`StreamSessions.handle`: ``hello``, ``ack``, ``ping``, ``list``, ``bye``), keeps the
sessions with their queue of passes, resume points and credit window; its
:class:`Delivery` (:meth:`Delivery.pump`) sends each session the batches its window
allows, the ``end`` of a pass, and the next queued pass. ``docs/stream-protocol.md`` is the spec.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from station.events.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Hello,
    ListPasses,
    PassBegin,
    Ping,
    Pong,
    ProtocolError,
    Waiting,
    encode,
    parse_consumer,
)
from station.events.source import PassSource
from station.events.stream_catalog import PENDING, StreamCatalog
from station.events.stream_socket import MAX_REMEMBERED, Wire

log = logging.getLogger("station.events.stream_server")


@dataclass
class Session:
    """One consumer connection: what it wants, and how far it has got."""

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


class StreamSessions:
    """Every consumer session of the stream server. See the module docstring."""

    def __init__(self, catalog: StreamCatalog, *, max_window_batches: int, consumer_timeout_s: float):
        self.catalog = catalog
        self.max_window_batches = max_window_batches
        self.consumer_timeout_s = consumer_timeout_s
        self.wire = Wire(on_gone=self.drop)
        self.sessions: dict[bytes, Session] = {}
        self.delivery = Delivery(catalog, self.wire, self.sessions)
        self.consumers = 0
        self.frames_refused = 0
        self._no_session_sent: OrderedDict[bytes, None] = OrderedDict()

    def drop(self, identity: bytes) -> None:
        """Forget a connection's session (it is gone, or said bye)."""
        self.sessions.pop(identity, None)

    # -- requests --------------------------------------------------------------------------
    def handle(self, identity: bytes, frame: bytes | None, n_frames: int) -> None:
        """One consumer message: ``n_frames`` frames, the first of them ``frame``."""
        if n_frames != 1 or frame is None:
            self.frames_refused += 1
            self.wire.error(identity, "bad_request",
                            f"a consumer message is exactly one frame, this one had {n_frames}")
            return
        try:
            msg = parse_consumer(frame)
        except ProtocolError as exc:
            self.frames_refused += 1
            if exc.msg_type == "hello":
                self.sessions.pop(identity, None)  # a refused hello leaves no session
                self._count()
            self.wire.error(identity, "bad_request", f"not a valid message: {exc}")
            return
        now = time.monotonic()  # liveness of a peer is an I/O timeout, not domain time
        session = self.sessions.get(identity)
        if session is not None:
            session.last_seen_s = now
        if session is None and isinstance(msg, Ack | Ping):
            self._no_session(identity)
            return
        if isinstance(msg, Hello):
            self._no_session_sent.pop(identity, None)
            self._hello(identity, msg, now)
        elif isinstance(msg, Ack):
            assert session is not None
            self._ack(session, msg)
        elif isinstance(msg, Ping):
            self.wire.reply(identity, encode(Pong(consumer_timeout_s=self.consumer_timeout_s)))
        elif isinstance(msg, ListPasses):
            self.wire.reply(identity, encode(self.catalog.list()))
        elif isinstance(msg, Bye):
            self.sessions.pop(identity, None)
        self._count()

    def _no_session(self, identity: bytes) -> None:
        # The station restarted (or the session timed out): the consumer must say hello
        # again. Once per connection: the acks it had in flight need no answer each.
        if identity not in self._no_session_sent:
            self._no_session_sent[identity] = None
            while len(self._no_session_sent) > MAX_REMEMBERED:
                self._no_session_sent.popitem(last=False)
            self.wire.error(identity, "no_session", "no session for this connection (the "
                            "station restarted or the consumer was silent longer than "
                            f"{self.consumer_timeout_s:g} s): send hello again")

    def _ack(self, s: Session, msg: Ack) -> None:
        src = s.source
        if src is None or msg.pass_id != src.pass_id:
            if msg.pass_id in s.served:
                # A late ack for an earlier pass of this connection: harmless; it still
                # counts for that pass's progress figure (events_streamed).
                prev = s.prev_source
                if prev is not None and prev.pass_id == msg.pass_id and msg.seq < len(prev.entries):
                    prev.acked_seq = max(prev.acked_seq, msg.seq)
                return
            self.wire.error(s.identity, "bad_request", f"ack for pass '{msg.pass_id}', which this "
                            "connection is not receiving", msg.pass_id)
            return
        available = len(src.entries)
        if msg.seq >= available:
            self.wire.error(s.identity, "bad_request", f"ack of seq {msg.seq} but pass "
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
            self.wire.error(identity, "protocol_version",
                            f"this station speaks protocol {PROTOCOL_VERSION}, not {msg.protocol}")
            return
        window = min(msg.window, self.max_window_batches)
        # A hello replaces this connection's session, also when it is refused.
        old = self.sessions.pop(identity, None)
        session = Session(identity, follow=msg.pass_id is None, window=window,
                          name=msg.consumer, last_seen_s=now,
                          served=old.served if old is not None else set())
        if msg.pass_id is not None:
            if not self._queue_one_pass(session, msg):
                return
        elif not self._queue_follow(session, msg):
            return
        # A newer session of the same consumer name is a restarted consumer whose old
        # socket is gone (or a duplicate): end the stale one.
        for other in list(self.sessions.values()):
            if other.identity != identity and other.name and other.name == msg.consumer:
                self.sessions.pop(other.identity, None)
                self.wire.error(other.identity, "superseded",
                                f"a newer connection of consumer '{msg.consumer}' took over")
        self.sessions[identity] = session
        log.info("stream consumer %r (%s) asks for %s, window %d", identity,
                 msg.consumer or "unnamed",
                 f"{msg.pass_id} from seq {msg.resume_seq}" if msg.pass_id else
                 f"follow mode: {len(session.queue)} pass(es) queued", window)
        self.delivery.start_next(session)

    def _queue_one_pass(self, session: Session, msg: Hello) -> bool:
        """A hello for one pass: queue it; False (said why) if it cannot be served."""
        assert msg.pass_id is not None
        if msg.catch_up or msg.cursor is not None:
            self.wire.error(session.identity, "bad_request", "catch_up and cursor belong to "
                            "follow mode (pass_id null)", msg.pass_id)
            return False
        if self._check_resume(session.identity, msg.pass_id, msg.resume_seq) is not True:
            return False
        session.queue.append((msg.pass_id, msg.resume_seq))
        return True

    def _queue_follow(self, session: Session, msg: Hello) -> bool:
        """A follow-mode hello: queue its catch-up passes, then every pass opened after its
        cursor (or, without one, from the pass being recorded on); False (said why) if the
        hello is refused."""
        identity = session.identity
        if msg.resume_seq != 0:
            self.wire.error(identity, "bad_request", "follow mode (pass_id null) resumes "
                            "through catch_up, not resume_seq: list, then hello with "
                            "catch_up=[{pass_id, resume_seq}] and the list's cursor")
            return False
        queued: set[str] = set()
        for c in msg.catch_up:
            if c.pass_id in queued:
                self.wire.error(identity, "bad_request",
                                f"pass '{c.pass_id}' is twice in catch_up", c.pass_id)
                return False
            ok = self._check_resume(identity, c.pass_id, c.resume_seq)
            if ok is None:
                continue  # unknown: said so, and skipped (it cannot be served)
            if not ok:
                return False
            queued.add(c.pass_id)
            session.queue.append((c.pass_id, c.resume_seq))
        opened, now_recording = self.catalog.opened_and_recording()
        if msg.cursor is not None:
            start = self.catalog.cursor_index(msg.cursor, len(opened))
            if start is None:
                self.wire.error(identity, "stale_cursor", f"cursor {msg.cursor!r} is not from "
                                "this run of the station (it restarted): list again")
                return False
            later = opened[start:]
        else:
            later = now_recording  # no cursor: from the pass being recorded on
        session.queue.extend((p, 0) for p in later if p not in queued)
        session.opened_idx = len(opened)
        return True

    def _check_resume(self, identity: bytes, pass_id: str, resume_seq: int) -> bool | None:
        """True if the pass can be served from ``resume_seq``; None (said so) if there is
        no such pass; False (said so) if it has fewer batches."""
        src = self.catalog.find(pass_id)
        if src is None:
            self.wire.error(identity, "unknown_pass",
                            f"no pass '{pass_id}' is recorded in {self.catalog.passes_dir} (or "
                            "its file cannot be read)", pass_id)
            return None
        available = 0 if src is PENDING else len(src.entries)  # type: ignore[union-attr]
        if resume_seq > available:
            self.wire.error(identity, "bad_resume",
                            f"pass '{pass_id}' has {available} batches; cannot resume from seq "
                            f"{resume_seq} (resume_seq may be at most the number of batches)", pass_id)
            return False
        return True

    def expire(self) -> None:
        """Close the sessions of consumers silent longer than ``consumer_timeout_s``."""
        now = time.monotonic()
        for ident, s in list(self.sessions.items()):
            if now - s.last_seen_s > self.consumer_timeout_s:
                log.warning("stream consumer %r (%s) silent for %.0f s; session closed "
                            "(it resumes from the pass file when it comes back)",
                            ident, s.name or "unnamed", now - s.last_seen_s)
                self.sessions.pop(ident)
        self._count()

    def _count(self) -> None:
        self.consumers = len(self.sessions)


class Delivery:
    """The sending side of the sessions: batches within each credit window, the ``end`` of
    a pass, and the next queued pass. Shares the sessions dict of :class:`StreamSessions`."""

    def __init__(self, catalog: StreamCatalog, wire: Wire, sessions: dict[bytes, Session]):
        self.catalog = catalog
        self.wire = wire
        self.sessions = sessions

    def start_next(self, s: Session) -> None:
        """Begin the next queued pass of an idle session (or say it is waiting)."""
        while s.source is None and s.queue:
            pass_id, resume = s.queue[0]
            src = self.catalog.find(pass_id)
            if src is PENDING:
                return  # named, its recorder registers in a moment
            s.queue.popleft()
            if src is None or not isinstance(src, PassSource):
                self.wire.error(s.identity, "unknown_pass", f"pass '{pass_id}' is no longer on "
                                f"the station ({self.catalog.passes_dir}); going on with the next",
                                pass_id)
                continue
            if resume > len(src.entries):
                self.wire.error(s.identity, "bad_resume", f"pass '{pass_id}' has "
                                f"{len(src.entries)} batches; cannot resume from seq {resume}", pass_id)
                continue
            self._begin(s, src, resume)
        if s.source is None and s.follow and not s.queue and not s.waiting_sent:
            s.waiting_sent = self.wire.reply(s.identity, encode(Waiting()))

    def _begin(self, session: Session, src: PassSource, resume_seq: int) -> None:
        session.source, session.next_seq = src, resume_seq
        session.acked_seq, session.end_sent = resume_seq - 1, False
        session.served.add(src.pass_id)
        session.waiting_sent = False
        self.wire.send(session.identity, [encode(PassBegin(
            pass_id=src.pass_id, resume_seq=resume_seq, recording=src.recording,
            batches_available=len(src.entries), header=src.header, window=session.window,
            follow=session.follow))])

    def pump(self) -> None:
        """Send every session what its window allows (and follow-mode ones new passes)."""
        opened = self.catalog.opened()
        for session in list(self.sessions.values()):
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
                self.start_next(session)
                if session.source is None:
                    continue
            self._pump_one(session)

    def _pump_one(self, s: Session) -> None:
        src = s.source
        assert src is not None
        available = len(src.entries)
        while s.next_seq < available and s.next_seq - s.acked_seq <= s.window:
            seq = s.next_seq
            entry = src.entries[seq]
            ts, ch = src.get(seq)
            hdr = entry.header(src.pass_id, seq).model_dump_json().encode()
            if not self.wire.send(s.identity, [hdr, ts, ch]):
                return
            s.next_seq += 1
        end = src.end
        if end is not None and not s.end_sent and s.next_seq >= end.batches:
            s.end_sent = self.wire.send(s.identity, [encode(end)])
            if s.end_sent:
                s.source, s.prev_source = None, src  # follow mode: on to the next queued pass
                self.start_next(s)
        if end is not None and not src.recording and all(
                x.source is not src for x in self.sessions.values()):
            # Finished and nobody is reading it live any more: serve it from disk.
            self.catalog.retire(src)
