"""The classical channel over real ZeroMQ sockets on loopback: framing, limits, and
Wegman–Carter authentication against tampering, replay and unknown peers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from postprocessing.auth import AuthenticationError, Direction, KeyPool, WegmanCarterMac
from postprocessing.channel import ChannelError, ChannelServer, PeerRefused, SatelliteLink
from postprocessing.channel.framing import (
    MAX_FRAMES,
    decode,
    dump_model,
    encode,
    lift_bytes,
    lower_bytes,
)
from postprocessing.channel.link import Refusal
from postprocessing.channel.messages import (
    Abort,
    AbortReply,
    Counters,
    Hello,
    HelloReply,
    Sift,
    SiftReply,
)
from tests.conftest import free_port
from tests.postprocessing.conftest import provision_pools

STATION = "xinglong-sim"


class Echo:
    """A handler answering hello and sift like a satellite would (shape only)."""

    def __init__(self, pool: KeyPool) -> None:
        self.pool = pool
        self.seen: list[str] = []
        self.auth_failures: list[str] = []

    async def __call__(self, station: str, msg: Any) -> tuple[Any, Any, tuple[bytes, ...]]:
        self.seen.append(msg.envelope.type)
        if isinstance(msg.body, Hello):
            return HelloReply(state="new", chunks_answered=0, sifted_bits=0, next_ec_session=0,
                              counters=Counters(ground_to_satellite=0, satellite_to_ground=0)), None, ()
        if isinstance(msg.body, Sift):
            n = msg.body.detections
            if n > 10:
                raise Refusal("refused", "too many for this test")
            return (SiftReply(chunk=msg.body.chunk, detections=n, sifted_bits_total=0),
                    {"basis": msg.frames["basis"], "intensity_class": bytes(n)}, ())
        return AbortReply(discarded=True), None, ()

    def failed(self, station: str, pass_id: str, reason: str) -> None:
        self.auth_failures.append(reason)


class Proxy:
    """A man in the middle between ground and satellite that can alter messages."""

    def __init__(self, upstream: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.front.bind(self.endpoint)
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.connect(upstream)
        self.up: list[list[bytes]] = []
        self.tamper_up: Any = None  # (index, frames) -> frames to send instead
        self.tamper_down: Any = None
        self.down = 0
        self._identity = b""

    async def run(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if self.front in ready:
                ident, *frames = await self.front.recv_multipart()
                self._identity = ident
                self.up.append(frames)
                if self.tamper_up is not None:
                    frames = self.tamper_up(len(self.up) - 1, frames)
                await self.back.send_multipart(frames)
            if self.back in ready:
                frames = await self.back.recv_multipart()
                if self.tamper_down is not None:
                    frames = self.tamper_down(self.down, frames)
                self.down += 1
                await self.front.send_multipart([self._identity, *frames])

    def close(self) -> None:
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


async def _pair(tmp_path: Path, *, proxy: bool = False) -> tuple[Any, ...]:
    sat_pool_path, ground_pool_path = provision_pools(tmp_path, bits=256 + 256 * 64)
    sat_pool, ground_pool = KeyPool(sat_pool_path), KeyPool(ground_pool_path)
    handler = Echo(sat_pool)
    server = ChannelServer(f"tcp://127.0.0.1:{free_port()}", pools={STATION: sat_pool},
                           handler=handler, on_auth_failure=handler.failed)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(stop))
    mitm = Proxy(server.bound_endpoint) if proxy else None
    relay = asyncio.create_task(mitm.run()) if mitm else None
    link = SatelliteLink(mitm.endpoint if mitm else server.bound_endpoint, station=STATION,
                         pool=ground_pool, timeout_s=5.0)

    async def close() -> None:
        link.close()
        if relay is not None:
            relay.cancel()
            with contextlib_suppress():
                await relay
            mitm.close()  # type: ignore[union-attr]
        stop.set()
        await serving
        server.close()
        sat_pool.close()
        ground_pool.close()

    return link, handler, mitm, close, ground_pool, sat_pool


def contextlib_suppress():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.suppress(asyncio.CancelledError)


def _hello(pool: KeyPool) -> Hello:
    return Hello(rep_rate_hz=100e6, sync_rate_hz=10e3,
                 counters=Counters(ground_to_satellite=pool.next_counter(Direction.GROUND_TO_SATELLITE),
                                   satellite_to_ground=pool.next_counter(Direction.SATELLITE_TO_GROUND)))


def _sift(n: int = 3, chunk: int = 0) -> tuple[Sift, dict[str, bytes]]:
    idx = np.arange(10, 10 + n, dtype="<i8")
    return (Sift(chunk=chunk, first_batch=0, last_batch=0, detections=n),
            {"pulse_index": idx.tobytes(), "basis": np.packbits(np.ones(n, np.uint8)).tobytes()})


async def test_request_reply_consumes_one_pad_each_way(tmp_path: Path) -> None:
    link, handler, _, close, gpool, spool = await _pair(tmp_path)
    try:
        reply = await link.request("41731-20161219T164844Z", _hello(gpool))
        assert isinstance(reply.body, HelloReply)
        body, frames = _sift()
        reply = await link.request("41731-20161219T164844Z", body, frames)
        assert isinstance(reply.body, SiftReply) and reply.message.frames["intensity_class"] == bytes(3)
        for pool in (gpool, spool):
            assert pool.next_counter(Direction.GROUND_TO_SATELLITE) == 2
            assert pool.next_counter(Direction.SATELLITE_TO_GROUND) == 2
        assert handler.seen == ["hello", "sift"]
    finally:
        await close()


async def test_a_handler_refusal_is_an_authenticated_error(tmp_path: Path) -> None:
    link, _, _, close, gpool, _ = await _pair(tmp_path)
    try:
        body, frames = _sift(n=11)
        with pytest.raises(PeerRefused, match="too many") as err:
            await link.request("p1", body, frames)
        assert err.value.authenticated and err.value.code == "refused"
    finally:
        await close()


async def test_a_tampered_request_is_rejected_and_reported(tmp_path: Path) -> None:
    link, handler, mitm, close, gpool, spool = await _pair(tmp_path, proxy=True)

    def flip(i: int, frames: list[bytes]) -> list[bytes]:
        if i == 1:  # the sift's pulse indices
            data = bytearray(frames[1])
            data[0] ^= 0x01
            frames = [frames[0], bytes(data), *frames[2:]]
        return frames

    mitm.tamper_up = flip
    try:
        await link.request("p1", _hello(gpool))
        body, frames = _sift()
        with pytest.raises(PeerRefused, match="tag does not match") as err:
            await link.request("p1", body, frames)
        assert not err.value.authenticated and err.value.code == "auth_failed"
        assert handler.seen == ["hello"], "a tampered message reached the handler"
        assert handler.auth_failures and "tampered" in handler.auth_failures[0]
    finally:
        await close()


async def test_a_replayed_request_is_rejected(tmp_path: Path) -> None:
    link, handler, mitm, close, gpool, _ = await _pair(tmp_path, proxy=True)
    mitm.tamper_up = lambda i, frames: mitm.up[1] if i == 2 else frames  # resend message 1
    try:
        await link.request("p1", _hello(gpool))
        body, frames = _sift()
        await link.request("p1", body, frames)
        body2, frames2 = _sift(chunk=1)
        with pytest.raises(PeerRefused, match="replay"):
            await link.request("p1", body2, frames2)
        assert handler.seen == ["hello", "sift"]
    finally:
        await close()


async def test_a_tampered_reply_fails_authentication_at_the_ground(tmp_path: Path) -> None:
    link, _, mitm, close, gpool, _ = await _pair(tmp_path, proxy=True)

    def flip(i: int, frames: list[bytes]) -> list[bytes]:
        if i == 1:
            return [frames[0], frames[1][:-1] + bytes([frames[1][-1] ^ 0x80]), *frames[2:]]
        return frames

    mitm.tamper_down = flip
    try:
        await link.request("p1", _hello(gpool))
        body, frames = _sift()
        with pytest.raises(AuthenticationError, match="tag does not match"):
            await link.request("p1", body, frames)
    finally:
        await close()


async def test_unknown_station_and_garbage_get_clear_unauthenticated_errors(tmp_path: Path) -> None:
    link, handler, _, close, gpool, _ = await _pair(tmp_path)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(link.endpoint)
    try:
        for frames, expect in (
            ([b"not json", b""], "not a valid envelope"),
            ([b"{" * 10_000 + b"}" * 10_000, b""], "not a valid envelope"),
            ([b"x"] * (MAX_FRAMES + 1), "frames"),
            ([b'{"v":1,"type":"abort","station":"mallory","pass_id":"p","counter":0,'
              b'"body":{"reason":"x"}}', b""],
             "no pre-shared key with station 'mallory'"),
            ([b'{"v":1,"type":"nonsense","station":"xinglong-sim","pass_id":"p","counter":0,"body":{}}', b""],
             "unknown message type"),
        ):
            await sock.send_multipart(frames)
            reply = decode(await asyncio.wait_for(sock.recv_multipart(), 5), replies=True)
            assert reply.tag == b"" and expect in reply.body.message  # type: ignore[attr-defined]
        assert handler.seen == []
        # ... and the real station still talks.
        assert isinstance((await link.request("p1", _hello(gpool))).body, HelloReply)
    finally:
        sock.close(0)
        ctx.term()
        await close()


async def test_a_resumed_ground_that_burnt_pads_resyncs_on_hello(tmp_path: Path) -> None:
    link, _, _, close, gpool, spool = await _pair(tmp_path)
    try:
        await link.request("p1", _hello(gpool))
        for c in (1, 2, 3):  # a crash after taking pads, before sending
            gpool.take_pad(Direction.GROUND_TO_SATELLITE, c)
        await link.request("p1", _hello(gpool))
        assert spool.next_counter(Direction.GROUND_TO_SATELLITE) == 5
        # A gap anywhere else is refused.
        gpool.take_pad(Direction.GROUND_TO_SATELLITE, 5)
        with pytest.raises(PeerRefused, match="out of order"):
            await link.request("p1", Abort(reason="test"))
    finally:
        await close()


def test_binary_fields_travel_as_frames_and_every_frame_is_referenced() -> None:
    from postprocessing.reconciliation import BlockSyndrome, SyndromeReply

    reply = SyndromeReply(blocks=[BlockSyndrome(block_index=3, syndrome_bits=12, syndrome=b"\xab\xc0")])
    body, frames = dump_model(reply)
    assert frames == (b"\xab\xc0",) and body["blocks"][0]["syndrome"] == {"$frame": 0}
    assert SyndromeReply.model_validate(lower_bytes(body, frames)) == reply
    with pytest.raises(ChannelError, match="not referenced"):
        lower_bytes(body, frames + (b"x",))
    with pytest.raises(ChannelError, match="out of range"):
        lower_bytes({"a": {"$frame": 5}}, frames)
    with pytest.raises(ChannelError, match="repeated"):
        lower_bytes({"a": {"$frame": 0}, "b": {"$frame": 0}}, frames)
    assert lift_bytes([b"q", {"k": b"r"}], out := []) == [{"$frame": 0}, {"k": {"$frame": 1}}] and out == [b"q", b"r"]


def test_encode_signs_every_frame_and_decode_checks_the_shape(tmp_path: Path) -> None:
    _, ground = provision_pools(tmp_path, bits=512)
    with KeyPool(ground) as pool:
        body, frames = _sift()
        parts = encode(body, station=STATION, pass_id="p1", mac=WegmanCarterMac(pool),
                       direction=Direction.GROUND_TO_SATELLITE, frames=frames)
    assert len(parts) == 4 and len(parts[-1]) == 16
    msg = decode(parts, replies=False)
    assert msg.frames["pulse_index"] == frames["pulse_index"] and "pulse_index" not in repr(msg)
    with pytest.raises(ChannelError, match="needs 2"):
        decode([parts[0], parts[-1]], replies=False)
    with pytest.raises(ChannelError, match="detections"):
        decode([parts[0].replace(b'"detections":3', b'"detections":-1'), *parts[1:]], replies=False)
