"""Both ends of the classical channel over ZeroMQ.

The satellite binds a ROUTER (:class:`ChannelServer`), serving every ground station it
holds a pool for; a ground station connects a DEALER (:class:`SatelliteLink`) and asks,
one request at a time, each answered by exactly one reply. Both are asyncio (pyzmq's
``zmq.asyncio``); the handlers' heavy work runs in threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from postprocessing.auth import (
    AuthenticationError,
    Direction,
    KeyPool,
    KeyPoolError,
    Transcript,
    WegmanCarterMac,
)
from postprocessing.channel.framing import ChannelError, Message, decode, encode, verify
from postprocessing.channel.messages import (
    NAME_PATTERN,
    PASS_ID_PATTERN,
    REPLY_OF,
    TRANSCRIPT_CLOSING,
    TRANSCRIPT_OPENING,
    TRANSCRIPT_OPS,
    Body,
    EcOp,
    ErrorReply,
    Hello,
)

log = logging.getLogger(__name__)

G2S = Direction.GROUND_TO_SATELLITE
S2G = Direction.SATELLITE_TO_GROUND


class PeerRefused(ChannelError):
    """The satellite answered with an error (``code``, its message), or a refusal that
    could not be authenticated (``authenticated`` False)."""

    def __init__(self, message: str, code: str, *, authenticated: bool) -> None:
        super().__init__(message, code)
        self.authenticated = authenticated


@dataclass(frozen=True)
class Reply:
    body: Body
    message: Message


def _socket_options(sock: zmq.asyncio.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)  # libzmq drops the peer above this
    sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)


class SatelliteLink:
    """The ground station's side: authenticated requests to the satellite.

    Every request and reply consumes one pad of its direction from ``pool``, except the
    untagged messages inside a reconciliation session (their transcript is authenticated
    by the session's closing exchange). A reply that
    fails authentication raises :class:`~postprocessing.auth.AuthenticationError`; an
    error reply raises :class:`PeerRefused`; silence beyond ``timeout_s`` raises
    :class:`ChannelError` (code ``timeout``). After any of these the session is over.
    """

    def __init__(self, endpoint: str, *, station: str, pool: KeyPool, timeout_s: float = 60.0,
                 context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self.station = station
        self.pool = pool
        self.mac = WegmanCarterMac(pool)
        self.timeout_s = timeout_s
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self.requests = 0
        self.tagged = 0  # requests that carried a tag (each: one pad each way)

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            _socket_options(sock)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    async def request(self, pass_id: str, body: Body, frames: dict[str, bytes] | None = None,
                      extra_frames: tuple[bytes, ...] = (), *, transcript: Transcript | None = None,
                      untagged: bool = False) -> Reply:
        """Send ``body`` and return the satellite's verified reply of the matching type.

        ``untagged`` (with ``transcript``): a message inside a reconciliation session: sent
        without a tag, its reply accepted without one, both recorded in ``transcript``; no
        pad is consumed. ``transcript`` alone: the session's closing request, whose tag and
        whose reply's tag cover the transcript (a mismatch raises AuthenticationError)."""
        if untagged and transcript is None:
            raise ChannelError("an untagged request needs the session's transcript", "internal")
        async with self._lock:
            sock = self._socket()
            if untagged:
                assert transcript is not None
                parts = encode(body, station=self.station, pass_id=pass_id, mac=None, direction=G2S,
                               frames=frames, extra_frames=extra_frames,
                               counter=self.pool.next_counter(G2S))
                transcript.record(G2S, parts[:-1])
            else:
                parts = encode(body, station=self.station, pass_id=pass_id, mac=self.mac,
                               direction=G2S, frames=frames, extra_frames=extra_frames,
                               transcript=transcript)
                self.tagged += 1
            self.requests += 1
            await sock.send_multipart(parts, copy=False)
            try:
                raw = await asyncio.wait_for(sock.recv_multipart(), self.timeout_s)
            except TimeoutError:
                self._reset()
                raise ChannelError(f"no reply to {body.TYPE} from the satellite at "
                                   f"{self.endpoint} within {self.timeout_s:g} s", "timeout") from None
            msg = decode(raw, replies=True)
            if isinstance(msg.body, ErrorReply) and not msg.tag:
                raise PeerRefused(f"the satellite refused {body.TYPE} (unauthenticated notice): "
                                  f"{msg.body.code}: {msg.body.message}", msg.body.code,
                                  authenticated=False)
            if msg.envelope.station != self.station or msg.envelope.pass_id != pass_id:
                raise ChannelError(f"a reply for {msg.envelope.station}/{msg.envelope.pass_id} "
                                   f"arrived at {self.station}/{pass_id}")
            if untagged:
                assert transcript is not None
                if msg.tag:
                    raise AuthenticationError(f"a reply inside reconciliation session {transcript.label} "
                                              "carries a tag (session messages travel untagged)")
                transcript.record(S2G, msg.parts)
            else:
                verify(msg, self.mac, S2G, allow_skip=isinstance(body, Hello), transcript=transcript)
            if isinstance(msg.body, ErrorReply):
                raise PeerRefused(f"the satellite refused {body.TYPE}: {msg.body.code}: "
                                  f"{msg.body.message}", msg.body.code, authenticated=True)
            if msg.envelope.type != REPLY_OF[body.TYPE]:
                raise ChannelError(f"{body.TYPE} was answered by {msg.envelope.type}")
            return Reply(msg.body, msg)

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        self._reset()
        if self._own_ctx:
            self._ctx.term()


Handler = Callable[[str, Message], Awaitable[tuple[Body, dict[str, bytes] | None, tuple[bytes, ...]]]]
AuthFailure = Callable[[str, str, str], None]


class Refusal(Exception):
    """A handler's refusal: sent back as an authenticated :class:`ErrorReply`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChannelServer:
    """The satellite's side: verifies every request with the station's pool, hands it to
    ``handler(station, message)``, signs and sends its reply.

    ``on_auth_failure(station, pass_id, reason)`` is told of every message that failed
    authentication (the pass it names is aborted by the satellite service).
    """

    def __init__(self, endpoint: str, *, pools: dict[str, KeyPool], handler: Handler,
                 on_auth_failure: AuthFailure | None = None,
                 context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self.macs = {name: WegmanCarterMac(pool) for name, pool in pools.items()}
        self.handler = handler
        self.on_auth_failure = on_auth_failure
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        _socket_options(self._sock)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.bind(endpoint)
        self.bound_endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.served = 0
        self.refused = 0
        # Per (station, pass): the open reconciliation session's (number, transcript).
        self._transcripts: dict[tuple[str, str], tuple[int, Transcript]] = {}

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer requests until ``stop`` is set."""
        poller = zmq.asyncio.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not stop.is_set():
            ready = dict(await poller.poll(200))
            if self._sock not in ready:
                continue
            raw = await self._sock.recv_multipart()
            identity, frames = raw[0], raw[1:]
            reply = await self._answer(frames)
            try:
                await self._sock.send_multipart([identity, *reply], copy=False)
            except zmq.ZMQError as exc:  # the peer vanished: its next hello resumes
                log.warning("could not deliver a reply: %s", exc)

    async def _answer(self, frames: list[bytes]) -> list[bytes]:
        try:
            msg = decode(frames, replies=False)
        except ChannelError as exc:
            self.refused += 1
            return self._unsigned("bad_message", str(exc))
        env = msg.envelope
        mac = self.macs.get(env.station)
        if mac is None:
            self.refused += 1
            return self._unsigned("unknown_station", f"no pre-shared key with station {env.station!r}",
                                  env.station, env.pass_id)
        body = msg.body
        if not msg.tag and isinstance(body, EcOp) and body.op in TRANSCRIPT_OPS:
            return await self._answer_in_session(msg, body, mac)
        transcript = None
        if isinstance(body, EcOp) and body.op == TRANSCRIPT_CLOSING:
            # The closing tag covers the session's transcript; without one (nothing was
            # recorded for this session) it covers an empty transcript, which the ground's
            # tag never does: the check fails.
            held = self._transcripts.pop((env.station, env.pass_id), None)
            transcript = (held[1] if held is not None and held[0] == body.session
                          else Transcript(mac.pool, f"{env.pass_id}/{body.session}"))
        try:
            verify(msg, mac, G2S, allow_skip=isinstance(body, Hello), transcript=transcript)
        except (AuthenticationError, KeyPoolError) as exc:
            self.refused += 1
            log.warning("station %s, pass %s: %s refused: %s", env.station, env.pass_id, env.type, exc)
            if self.on_auth_failure is not None:
                self.on_auth_failure(env.station, env.pass_id, str(exc))
            return self._unsigned("auth_failed", str(exc), env.station, env.pass_id)
        reply, named, extra = await self._handle(env.station, msg)
        self.served += 1
        return encode(reply, station=env.station, pass_id=env.pass_id, mac=mac, direction=S2G,
                      frames=named, extra_frames=extra, transcript=transcript)

    async def _answer_in_session(self, msg: Message, body: EcOp, mac: WegmanCarterMac) -> list[bytes]:
        """An untagged message inside a reconciliation session: recorded, answered untagged,
        the answer recorded; the session's closing exchange authenticates them all."""
        env = msg.envelope
        key = (env.station, env.pass_id)
        held = self._transcripts.get(key)
        if body.op == TRANSCRIPT_OPENING:
            # A (re)started session: a resumed ground re-runs it from its first op. A
            # replayed opening mid-session restarts only this end's transcript, so the
            # closing check fails.
            held = self._transcripts[key] = (body.session, Transcript(mac.pool, f"{env.pass_id}/{body.session}"))
        elif held is None or held[0] != body.session:
            self.refused += 1
            return self._unsigned("bad_state", f"EC session {body.session}: untagged {body.op} outside an "
                                               f"open session (it must follow {TRANSCRIPT_OPENING})",
                                  env.station, env.pass_id)
        transcript = held[1]
        try:
            transcript.record(G2S, msg.parts)
        except AuthenticationError as exc:
            self.refused += 1
            return self._unsigned("auth_failed", str(exc), env.station, env.pass_id)
        reply, named, extra = await self._handle(env.station, msg)
        self.served += 1
        parts = encode(reply, station=env.station, pass_id=env.pass_id, mac=None, direction=S2G,
                       frames=named, extra_frames=extra, counter=mac.pool.next_counter(S2G))
        try:
            transcript.record(S2G, parts[:-1])
        except AuthenticationError as exc:
            return self._unsigned("auth_failed", str(exc), env.station, env.pass_id)
        return parts

    async def _handle(self, station: str, msg: Message) -> tuple[Body, dict[str, bytes] | None, tuple[bytes, ...]]:
        try:
            return await self.handler(station, msg)
        except Refusal as exc:
            self.refused += 1
            return ErrorReply(code=exc.code, message=str(exc)[:2000]), None, ()  # type: ignore[arg-type]
        except Exception as exc:  # a fault of ours must not silence the service
            log.exception("station %s, pass %s: %s failed", station, msg.envelope.pass_id, msg.envelope.type)
            return ErrorReply(code="internal", message=f"{type(exc).__name__}: {exc}"[:2000]), None, ()  # type: ignore[arg-type]

    def _unsigned(self, code: str, message: str, station: str = "unknown",
                  pass_id: str = "unknown") -> list[bytes]:
        station = station if re.match(NAME_PATTERN, station) else "unknown"
        pass_id = pass_id if re.match(PASS_ID_PATTERN, pass_id) else "unknown"
        return encode(ErrorReply(code=code, message=message[:2000]), station=station,  # type: ignore[arg-type]
                      pass_id=pass_id, mac=None, direction=S2G)

    def close(self) -> None:
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()


__all__ = ["ChannelServer", "PeerRefused", "Refusal", "Reply", "SatelliteLink"]
