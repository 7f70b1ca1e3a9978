"""Delayed authentication end to end: a man in the middle alters the untagged messages
inside a Cascade session of the Micius pass (flips a byte of a reply, replays, drops,
reorders); every attack ends with the pass's key discarded at both ends with a clear
reason, nothing stored, no checkpoint left, and no bit of the session used.

The attacks that keep both ends' own consistency checks happy (a flipped parity, a
replayed request answered from the satellite's replay cache, a dropped exchange with a
forged answer and renumbered requests, two requests swapped) are caught by the session's
transcript tags at ``cascade_finish``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from tests.conftest import free_port
from tests.postprocessing.conftest import (
    MICIUS,
    STATION,
    ground_settings,
    provision_pools,
    running_satellite,
    satellite_config,
)

pytestmark = pytest.mark.slow

K = 6  # the parity request the attacks start at (mid-session: ~100 per session)
Frames = list[bytes]


def _env(frames: Frames) -> dict[str, Any]:
    return json.loads(frames[0])


def _parity_index(frames: Frames) -> int | None:
    """The request_index of a session-0 parity request or reply, else None."""
    env = _env(frames)
    body = env.get("body", {})
    if env.get("type") not in ("ec", "ec_reply") or body.get("op") != "cascade_parities" or body.get("session"):
        return None
    inner = body.get("request") or body.get("reply") or {}
    return int(inner.get("request_index", -1))


def _renumber(frames: Frames, index: int) -> Frames:
    env = _env(frames)
    key = "request" if env["type"] == "ec" else "reply"
    env["body"][key]["request_index"] = index
    return [json.dumps(env, separators=(",", ":")).encode(), *frames[1:]]


def _forged_reply(request: Frames, like: Frames) -> Frames:
    """An untagged parity reply to ``request`` that Eve makes up (all parities 0)."""
    req, env = _env(request)["body"]["request"], _env(like)
    n = int(req["range_count"])
    env["body"]["reply"] = {"request_index": req["request_index"], "range_count": n, "parities": {"$frame": 0}}
    return [json.dumps(env, separators=(",", ":")).encode(), bytes((n + 7) // 8), b""]


class Mitm:
    """Ground ↔ satellite relay; ``attack(request, mitm)`` returns the reply for the ground
    and may talk to the satellite (``await mitm.upstream(frames)``) as often as it likes."""

    def __init__(self, upstream: str, attack: Callable[[Frames, Mitm], Awaitable[Frames]]) -> None:
        self.ctx = zmq.asyncio.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.front.bind(self.endpoint)
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.connect(upstream)
        self.attack = attack
        self.requests: dict[int, Frames] = {}  # session-0 parity requests as the ground sent them
        self.replies: dict[int, Frames] = {}  # and the satellite's replies
        self.held: Frames | None = None
        self.attacked = False

    async def upstream(self, frames: Frames) -> Frames:
        await self.back.send_multipart(frames)
        return await self.back.recv_multipart()

    async def run(self) -> None:
        while True:
            ident, *frames = await self.front.recv_multipart()
            i = _parity_index(frames)
            if i is not None:
                self.requests.setdefault(i, frames)
            reply = await self.attack(frames, self)
            j = _parity_index(reply)
            if j is not None:
                self.replies.setdefault(j, reply)
            await self.front.send_multipart([ident, *reply])

    def close(self) -> None:
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


async def flip_reply(req: Frames, m: Mitm) -> Frames:
    reply = await m.upstream(req)
    if _parity_index(req) == K:
        data = bytearray(reply[1])
        data[0] ^= 0x80  # the first parity (never a padding bit)
        reply = [reply[0], bytes(data), *reply[2:]]
        m.attacked = True
    return reply


async def replay_request(req: Frames, m: Mitm) -> Frames:
    if _parity_index(req) == K:  # the satellite sees request K-1 again first (its replay cache answers)
        await m.upstream(m.requests[K - 1])
        m.attacked = True
    return await m.upstream(req)


async def replay_reply(req: Frames, m: Mitm) -> Frames:
    reply = await m.upstream(req)
    if _parity_index(req) == K:
        m.attacked = True
        return m.replies[K - 1]  # the ground gets an earlier reply instead
    return reply


async def drop_exchange(req: Frames, m: Mitm) -> Frames:
    """Request K never reaches the satellite; Eve answers it herself and renumbers every
    later request so the satellite's own order check passes."""
    i = _parity_index(req)
    if i == K:
        m.attacked = True
        return _forged_reply(req, m.replies[K - 1])
    if i is not None and i > K:
        reply = await m.upstream(_renumber(req, i - 1))
        return _renumber(reply, i)
    return await m.upstream(req)


async def reorder(req: Frames, m: Mitm) -> Frames:
    """The satellite gets requests K and K+1 in swapped order (renumbered to pass its
    order check); the ground gets a forged answer to K and the real answer to K+1."""
    i = _parity_index(req)
    if i == K:
        m.held = req
        return _forged_reply(req, m.replies[K - 1])
    if i == K + 1 and m.held is not None:
        m.attacked = True
        real = await m.upstream(_renumber(req, K))
        await m.upstream(_renumber(m.held, K + 1))
        return _renumber(real, K + 1)
    return await m.upstream(req)


@pytest.mark.parametrize(("attack", "expect"), [
    pytest.param(flip_reply, "transcript", id="flip-a-reply-byte"),
    pytest.param(replay_request, "transcript", id="replay-an-earlier-request"),
    pytest.param(replay_reply, "parity reply", id="replay-an-earlier-reply"),
    pytest.param(drop_exchange, "transcript", id="drop-one-exchange"),
    pytest.param(reorder, "transcript", id="reorder-two-requests"),
])
async def test_an_altered_session_message_discards_the_pass(
        attack: Any, expect: str, micius_pass_file: Path, tmp_path: Path) -> None:
    from postprocessing.ground import PassAborted, distill_pass_file
    from postprocessing.keystore import KeyStore
    from postprocessing.satellite.service import SatelliteService

    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    async with running_satellite(service) as endpoint:
        mitm = Mitm(endpoint, attack)
        relay = asyncio.create_task(mitm.run())
        # Short sessions, so the first one (the one attacked) comes early in the pass.
        settings = ground_settings(tmp_path, ground_pool, mitm.endpoint, cascade_segment_bits=100_000)
        sessions_done: list[int] = []
        try:
            with pytest.raises(PassAborted) as err:
                await distill_pass_file(micius_pass_file, settings,
                                        on_chunk=lambda d: sessions_done.append(d.p.ec_sessions))
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            mitm.close()
        state = service.pass_state(STATION, MICIUS)
    assert mitm.attacked, "the attack never ran"
    report = err.value.report
    assert report.outcome == "aborted" and report.final_bits == 0 and report.stored_bits == 0
    assert "EC session 0" in report.reason and expect in report.reason, report.reason
    # The attacked session never counted: no bit of it was used.
    assert not any(sessions_done) and report.ec.sessions == 0
    assert state is not None and state[0] == "aborted", state
    # Nothing half-written: no key at either end, no checkpoint (raw bits) left behind.
    with KeyStore(settings.keystore_dir) as store:
        assert not store.has_pass("micius-sim", MICIUS)
    with KeyStore(tmp_path / "sat" / "keys") as store:
        assert not store.has_pass(STATION, MICIUS)
    assert not (settings.work_dir / MICIUS).exists()
