"""The reference consumer of the event stream: the template integrators start from.

:class:`StreamClient` connects a DEALER socket to the station (CURVE-authenticated when
given the station's public key and its own key pair), asks for a pass (or follows: every
pass it does not hold yet, then each one the station opens), checks every batch (sequence continuity, event count and
per-channel counts against the batch header), stores it in ``<out>/<pass_id>.arrows``
(the pass-file format, readable by ``qkd-station inspect``), acknowledges it, and at the end
checks the totals of the end-of-pass message. A restarted client resumes from what its own
file holds, so every event arrives exactly once and in order.

Blocking and single-threaded on purpose: a consumer in C++ or Rust has the same shape.
The protocol side is this module; what is stored and checked on disk is
``received.py`` (:class:`~station.events.received.ReceivedStore`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from station.events.curve import KeyPair
from station.events.protocol import (
    MAX_CATCH_UP,
    Ack,
    BatchHeader,
    Bye,
    Error,
    Hello,
    ListPasses,
    PassBegin,
    PassEnd,
    Passes,
    Ping,
    Pong,
    ProtocolError,
    Waiting,
    encode,
    parse_station,
)
from station.events.received import ReceivedPass, ReceivedStore, StreamError

__all__ = ["ReceivedPass", "StreamClient", "StreamError", "default_out_dir"]

log = logging.getLogger(__name__)


class StreamClient:
    """Receive passes from a station's event stream into ``out_dir``."""

    def __init__(self, endpoint: str, out_dir: Path | str, *, consumer: str = "",
                 window: int = 64, flush_interval_s: float = 1.0, heartbeat_s: float = 1.0,
                 timeout_s: float = 10.0, compression: str = "lz4",
                 on_batch: Callable[[BatchHeader, np.ndarray, np.ndarray], None] | None = None,
                 server_public_key: bytes | str | None = None, keypair: KeyPair | None = None):
        """``server_public_key`` (Z85, the station's ``.key``) and ``keypair`` (this
        consumer's, from its ``.key_secret``; ``curve.load_keypair``) switch CURVE on."""
        self.endpoint = endpoint
        self.out_dir = Path(out_dir)
        self.store = ReceivedStore(self.out_dir, compression=compression,
                                   flush_interval_s=flush_interval_s, on_batch=on_batch)
        self.consumer = consumer or f"qkd-station-receive-{uuid.uuid4().hex[:8]}"
        self.window = window
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        if (server_public_key is None) != (keypair is None):
            raise ValueError("CURVE needs both the station's public key and this consumer's "
                             "key pair")
        self.server_public_key = (server_public_key.encode() if isinstance(server_public_key, str)
                                  else server_public_key)
        self.keypair = keypair
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._last_heard_s = 0.0
        self._follow = False
        self._catch_up = True
        self._await_answer = False  # a hello is out and its answer not yet seen
        self._await_list = False  # follow mode: a list is out to make the catch-up from
        self._skip: set[str] = set()  # listed passes the station could not serve
        self._capped = False  # the last catch-up list left passes out
        self.reconnects = 0

    # -- public ----------------------------------------------------------------------------
    def receive_pass(self, pass_id: str, *, stop: threading.Event | None = None) -> ReceivedPass:
        """Receive one pass completely (resuming from ``out_dir``) and check it."""
        done: list[ReceivedPass] = []
        self._loop(pass_id, lambda rp: done.append(rp) or True, stop)
        if not done:
            raise StreamError(f"stopped before pass {pass_id} was complete", "stopped", pass_id)
        return done[0]

    def follow(self, on_pass: Callable[[ReceivedPass], bool | None] | None = None, *,
               stop: threading.Event | None = None, max_passes: int | None = None,
               catch_up: bool = True) -> list[ReceivedPass]:
        """Receive every pass the station holds that ``out_dir`` does not hold complete
        (``catch_up``; else only those already begun there), then the pass being recorded
        and every later one, until ``stop`` is set, or ``max_passes`` are complete, or
        ``on_pass`` returns True. Nothing opened while the client was away is missed."""
        done: list[ReceivedPass] = []
        self._catch_up = catch_up

        def finished(rp: ReceivedPass) -> bool:
            done.append(rp)
            quit_ = bool(on_pass(rp)) if on_pass is not None else False
            return quit_ or (max_passes is not None and len(done) >= max_passes)

        self._loop(None, finished, stop)
        return done

    def list_passes(self) -> Passes:
        """The passes the station can serve."""
        sock = self._connect()
        try:
            sock.send(encode(ListPasses()))
            if not sock.poll(int(self.timeout_s * 1000)):
                raise StreamError(f"no answer from {self.endpoint} within {self.timeout_s:g} s "
                                  "(station down, or it does not accept our CURVE key)", "timeout")
            msg = parse_station(sock.recv())
            if isinstance(msg, Error):
                raise StreamError(msg.message, msg.code)
            if not isinstance(msg, Passes):
                raise StreamError(f"expected a pass list, got {msg.type}")
            return msg
        finally:
            self._disconnect()

    def close(self) -> None:
        self._disconnect()
        self.store.close_current(end_of_stream=False)
        self._ctx.term()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> zmq.Socket[bytes]:
        curve = None
        if self.server_public_key is not None and self.keypair is not None:
            curve = (self.server_public_key, self.keypair)
        sock = self._sock = _dealer(self._ctx, self.endpoint, curve)
        self._last_heard_s = time.monotonic()
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.send(encode(Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(0)
            self._sock = None

    def _hello(self, pass_id: str | None) -> None:
        """Named mode: ask for ``pass_id`` from what we hold. Follow mode: resynchronise
        (list, then a hello with the catch-up list made from it)."""
        assert self._sock is not None
        if pass_id is None:
            self._sock.send(encode(ListPasses()))
            self._await_list = True
            return
        resume = self.store.stored_batches(pass_id)
        self._sock.send(encode(Hello(pass_id=pass_id, resume_seq=resume, window=self.window,
                                     consumer=self.consumer)))
        self._await_answer = True

    def _follow_hello(self, passes: Passes) -> None:
        """Follow mode: every listed pass not held complete, from what we hold of it."""
        assert self._sock is not None
        catch_up = self.store.catch_up(passes, skip=self._skip, everything=self._catch_up)
        # The station takes at most MAX_CATCH_UP: the rest after those (at `waiting`).
        self._capped = len(catch_up) > MAX_CATCH_UP
        catch_up = catch_up[:MAX_CATCH_UP]
        self._sock.send(encode(Hello(pass_id=None, window=self.window, consumer=self.consumer,
                                     catch_up=catch_up, cursor=passes.cursor or None)))
        self._await_answer = True

    # -- the receive loop ------------------------------------------------------------------
    def _loop(self, pass_id: str | None, finished: Callable[[ReceivedPass], bool],
              stop: threading.Event | None) -> None:
        self._follow = pass_id is None
        want = pass_id  # named mode: the pass; follow mode: None
        self._connect()
        self._hello(want)
        try:
            while stop is None or not stop.is_set():
                sock = self._sock
                assert sock is not None
                if not sock.poll(int(self.heartbeat_s * 1000)):
                    self.store.sync_if_due()
                    if time.monotonic() - self._last_heard_s > self.timeout_s:
                        log.warning("no word from %s for %.0f s (station down, or it does not "
                                    "accept our CURVE key); reconnecting", self.endpoint,
                                    self.timeout_s)
                        self._reconnect(want)
                    else:
                        sock.send(encode(Ping()))
                    continue
                frames = sock.recv_multipart(copy=False)
                self._last_heard_s = time.monotonic()
                try:
                    msg = parse_station(frames[0].bytes)
                except ProtocolError as exc:
                    if _unknown_type(frames[0].bytes):
                        continue  # a newer station's message we do not know: ignore it
                    raise StreamError(f"bad message from the station: {exc}", "bad_message") from exc
                if isinstance(msg, PassBegin):
                    self._await_answer = False
                    self._begin(msg)
                elif isinstance(msg, BatchHeader):
                    self._batch(msg, frames[1:])
                elif isinstance(msg, PassEnd):
                    rp = self._end(msg)
                    if rp is not None and (finished(rp) or not self._follow):
                        return
                elif isinstance(msg, Waiting):
                    self._await_answer = False
                    self.store.sync_if_due()
                    if self._capped and not self._await_list:
                        self._hello(None)  # the passes beyond the first catch-up list
                elif isinstance(msg, Passes):
                    if self._await_list:
                        self._await_list = False
                        self._follow_hello(msg)
                elif isinstance(msg, Error):
                    self._on_error(msg, want)
                elif isinstance(msg, Pong):
                    self.store.sync_if_due()
        finally:
            self._disconnect()

    def _on_error(self, msg: Error, want: str | None) -> None:
        if msg.code == "no_session":
            if self._await_answer or self._await_list:
                return  # it answers an ack or ping sent before our hello: stale
            log.info("the station has no session for us (it restarted?); hello again")
            self._hello(want)
        elif msg.code == "stale_cursor":
            self._hello(None)  # the station restarted between our list and our hello
        elif msg.code == "unknown_pass" and self._follow and msg.pass_id:
            # A listed pass the station cannot serve (unreadable, or deleted): say so, and
            # follow on without it rather than asking for it for ever.
            log.error("the station cannot serve pass %s: %s", msg.pass_id, msg.message)
            self._skip.add(msg.pass_id)
        else:
            raise StreamError(f"station refused: {msg.code}: {msg.message}", msg.code,
                              msg.pass_id)

    def _reconnect(self, want: str | None) -> None:
        self._disconnect()
        self.reconnects += 1
        if self.store.current is not None:
            self.store.current.rp.reconnects += 1
        self._await_answer = self._await_list = False
        self._connect()
        self._hello(want)

    def _resync(self) -> None:
        """Ask again from what we hold: by name, or (follow mode) list and catch up."""
        if self._follow:
            self._hello(None)
        elif self.store.current is not None:
            self._hello(self.store.current.rp.pass_id)

    def _begin(self, msg: PassBegin) -> None:
        cur = self.store.begin(msg, follow=self._follow)
        if msg.resume_seq > cur.expected:
            self._resync()  # it would skip batches we lack: ask again from what we hold
        # resume_seq < expected: duplicates come first; they are acked and dropped.

    def _batch(self, hdr: BatchHeader, payload: list[Any]) -> None:
        cur = self.store.current
        if cur is None or hdr.pass_id != cur.rp.pass_id:
            return  # left over from before a re-hello
        assert self._sock is not None
        if hdr.seq < cur.expected:
            # A duplicate (after a resume): dropped, but acked, since it holds window
            # credit at the station until it is.
            cur.rp.duplicates_dropped += 1
            self._sock.send(encode(Ack(pass_id=hdr.pass_id, seq=hdr.seq)))
            return
        if hdr.seq > cur.expected:
            log.warning("pass %s: batch %d arrived, expected %d; asking again from %d",
                        hdr.pass_id, hdr.seq, cur.expected, cur.expected)
            self._resync()
            return
        self.store.append(cur, hdr, payload)
        self.store.sync_if_due()
        self._sock.send(encode(Ack(pass_id=hdr.pass_id, seq=hdr.seq)))

    def _end(self, end: PassEnd) -> ReceivedPass | None:
        cur = self.store.current
        if cur is None or end.pass_id != cur.rp.pass_id:
            return None
        if cur.expected < end.batches:
            self._resync()  # batches still missing (should not happen): ask again
            return None
        if cur.already_complete:
            self.store.close_current(end_of_stream=True)
            return None  # a catch-up raced with its end: received and reported once already
        return self.store.finish(cur, end)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str,
            curve: tuple[bytes, KeyPair] | None) -> zmq.Socket[bytes]:
    """A DEALER connected to the station (CURVE with (station key, our key pair))."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    # Retry soon when the station is not up yet, backing off to 1 s.
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if curve is not None:
        server_key, keypair = curve
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
    sock.connect(endpoint)
    return sock


_KNOWN = {"pass_begin", "batch", "pass_end", "waiting", "pong", "passes", "error"}


def _unknown_type(frame: bytes) -> bool:
    try:
        obj = json.loads(frame)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and obj["type"] not in _KNOWN


def default_out_dir() -> Path:
    return Path(os.environ.get("QKD_RECEIVE_DIR", "received"))
