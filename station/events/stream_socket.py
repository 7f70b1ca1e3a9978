"""The event stream's ROUTER socket: binding it (CURVE or loopback), and sending on it.

:func:`open_router` sets up the one socket the stream server uses, with its limits and,
with a secret key, CURVE and a ZAP handler that admits only the configured consumer keys
(:class:`AllowedKeys`). :class:`Wire` is everything sent on it: batches as they come, and
every other reply within a per-connection rate (:data:`REPLIES_PER_S`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from station.events import curve
from station.events.protocol import MAX_CONSUMER_FRAME_BYTES, Error, ErrorCode, encode

log = logging.getLogger("station.events.stream_server")

#: Replies other than batches (errors, pongs, pass lists) one connection may get per
#: second; a consumer flooding the station with requests gets no more, so it cannot make
#: the station queue replies without end.
REPLIES_PER_S = 200
#: Connections remembered for no_session suppression and reply limiting.
MAX_REMEMBERED = 4096
_ZAP_DOMAIN = "qkd-stream"


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


class AllowedKeys:
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


@dataclass
class Router:
    """The bound socket with its context and, under CURVE, its ZAP authenticator."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    sock: zmq.Socket[bytes]
    auth: ThreadAuthenticator | None
    keys: AllowedKeys | None
    bound_endpoint: str

    def close(self) -> None:
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.term()


def _check_keys(endpoint: str, secret_file: Path | None,
                consumer_files: list[Path]) -> tuple[curve.KeyPair | None, AllowedKeys | None]:
    """The server's key pair and the allowed consumer keys, or (None, None) on loopback."""
    curve.check_endpoint(endpoint)
    if secret_file is None:
        if not curve.is_loopback(endpoint):
            raise ValueError(f"{endpoint}: the stream without CURVE keys binds loopback "
                             "only (anyone else could read the raw detections)")
        return None, None
    keypair = curve.load_keypair(secret_file)
    allowed = curve.load_allowed_keys(consumer_files)
    if not allowed:
        raise curve.CurveKeyError("CURVE without any allowed consumer key: nobody "
                                  "could connect (curve_consumer_key_files)")
    return keypair, AllowedKeys(allowed)


def _set_limits(sock: zmq.Socket[bytes]) -> None:
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


def open_router(endpoint: str, secret_file: Path | None, consumer_files: list[Path]) -> Router:
    """Bind the stream's ROUTER socket. Raises ``zmq.ZMQError`` if the endpoint is taken,
    ``ValueError`` (a :class:`~station.events.curve.CurveKeyError` for a key file) if the
    keys cannot be used or a non-loopback endpoint has none."""
    keypair, keys = _check_keys(endpoint, secret_file, consumer_files)
    before = _task_ids()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    _lower_new_zmq_threads(before)
    _set_limits(sock)
    auth: ThreadAuthenticator | None = None
    try:
        if keypair is not None:
            assert keys is not None
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("station.events.stream_server.zap"))
            auth.start()
            auth.configure_curve_callback(_ZAP_DOMAIN, credentials_provider=keys)
            sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
            # No ZAP handler must mean no access, never open access.
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.bind(endpoint)
    except (zmq.ZMQError, ValueError):
        Router(ctx, sock, auth, keys, endpoint).close()
        raise
    return Router(ctx, sock, auth, keys, sock.getsockopt_string(zmq.LAST_ENDPOINT))


class Wire:
    """What the server thread sends. ``on_gone`` is told of a consumer found unreachable."""

    def __init__(self, on_gone: Callable[[bytes], None]):
        self.sock: zmq.Socket[bytes] | None = None
        self.replies_dropped = 0
        self._on_gone = on_gone
        self._replies: OrderedDict[bytes, list[float]] = OrderedDict()

    def send(self, identity: bytes, frames: list[object]) -> bool:
        """Send one message to a connection; False (and the session dropped) if it is gone."""
        assert self.sock is not None
        try:
            self.sock.send_multipart([identity, *frames], copy=False)  # type: ignore[list-item]
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the consumer has gone
            log.info("stream consumer %r unreachable (%s); dropping its session", identity, exc)
            self._on_gone(identity)
            return False

    def reply(self, identity: bytes, frame: bytes) -> bool:
        """A non-batch message, within the per-connection reply limit."""
        now = time.monotonic()
        slot = self._replies.get(identity)
        if slot is None or now - slot[0] >= 1.0:
            slot = [now, 0.0]
            self._replies[identity] = slot
            self._replies.move_to_end(identity)
            while len(self._replies) > MAX_REMEMBERED:
                self._replies.popitem(last=False)
        slot[1] += 1
        if slot[1] > REPLIES_PER_S:
            self.replies_dropped += 1
            if slot[1] == REPLIES_PER_S + 1:
                log.warning("stream consumer %r sends more than %d requests a second; "
                            "further replies this second are dropped", identity, REPLIES_PER_S)
            return False
        return self.send(identity, [frame])

    def error(self, identity: bytes, code: ErrorCode, message: str, pass_id: str | None = None) -> None:
        """An ``error`` reply (logged only when answered: a flood is bounded in the log too)."""
        if self.reply(identity, encode(Error(code=code, message=message, pass_id=pass_id))):
            log.warning("stream consumer %r: %s: %s", identity, code, message)
