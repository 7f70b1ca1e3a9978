"""Relay events in each station's log and on its transitions topic, over a real Mosquitto:
every step as a ``kind: "relay"`` message, numbers and IDs only, never a key byte."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import numpy as np
import pytest

from postprocessing.relay import KeyRelayEvent, RelayError, RelayEvents, offer, receive
from tests.mqtt.helpers import collector
from tests.postprocessing.test_relay import RELAYED, SAT, A, B, World


@pytest.fixture
async def world(tmp_path):
    w = World(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(w.service.serve(stop))
    yield w
    stop.set()
    await asyncio.wait_for(task, 30)
    w.close()


def key_needles(world: World) -> list[bytes]:
    """Every 32-byte block of both link keys, raw, hex and base64."""
    out = []
    for bits in world.keys.values():
        packed = np.packbits(bits).tobytes()
        for i in range(0, len(packed), 32):
            c = packed[i:i + 32]
            out += [c, c.hex().encode(), base64.b64encode(c)]
    return out


async def relay_with_events(world: World, events: dict[str, RelayEvents]):
    la, lb = world.link(A), world.link(B)
    try:
        offered = await offer(la, world.stores[A], satellite=SAT, partner=B, blocks=RELAYED,
                              events=events[A])
        got = await receive(lb, world.stores[B], satellite=SAT, partner=A, events=events[B])
    finally:
        for lk in (la, lb):
            lk.close()
            lk.pool.close()
    return offered, got


async def test_each_station_publishes_its_relay_steps_without_key_bytes(world, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="postprocessing.relay")
    broker = (mosquitto.host, mosquitto.port)
    async with collector(mosquitto.host, mosquitto.port, "qkd/+/transitions") as col:
        async with RelayEvents(A, mqtt=broker) as ev_a, RelayEvents(B, mqtt=broker) as ev_b:
            offered, got = await relay_with_events(world, {A: ev_a, B: ev_b})
        async with asyncio.timeout(30):
            while len(col.messages) < 5:
                await asyncio.sleep(0.05)
    by_topic: dict[str, list[KeyRelayEvent]] = {}
    raw = []
    for msg in col.messages:
        payload = bytes(msg.payload)
        raw.append(payload)
        assert json.loads(payload)["kind"] == "relay"
        by_topic.setdefault(msg.topic.value, []).append(KeyRelayEvent.model_validate_json(payload))
    a_events, b_events = by_topic[f"qkd/{A}/transitions"], by_topic[f"qkd/{B}/transitions"]
    assert [e.step for e in a_events] == ["offered", "accepted"]
    assert [e.step for e in b_events] == ["requested", "announced", "recovered"]
    assert all(e.role == "offering" and e.partner == B and e.station_id == A for e in a_events)
    assert all(e.role == "receiving" and e.partner == A and e.satellite == SAT for e in b_events)
    assert (a_events[-1].key_ids, a_events[-1].bits) == (RELAYED, offered.bits)
    assert (b_events[-1].key_ids, b_events[-1].bits) == (got.blocks, got.bits) == (RELAYED,
                                                                                   RELAYED * 256)
    assert len({e.request_id for e in b_events}) == 1 and b_events[0].request_id
    assert ev_a.published == 2 and ev_b.published == 3
    # The logs name each step too, and neither logs nor payloads carry key bytes.
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"relay event {A}: accepted" in t for t in lines)
    assert any(f"relay event {B}: recovered" in t for t in lines)
    logs = "\n".join(lines).encode()
    for n in key_needles(world):
        assert n not in logs
        assert not any(n in p for p in raw)
    # Nor key IDs: the events count them.
    assert not any(str(k).encode() in p for p in raw for k in got.key_ids)


async def test_a_refused_relay_is_an_event_with_its_reason(world, mosquitto):
    broker = (mosquitto.host, mosquitto.port)
    async with collector(mosquitto.host, mosquitto.port, f"qkd/{B}/transitions") as col:
        async with RelayEvents(B, mqtt=broker) as ev_b:
            lb = world.link(B)
            try:
                with pytest.raises(RelayError, match="no key to relay"):
                    # Nothing was offered by A: the satellite refuses.
                    await receive(lb, world.stores[B], satellite=SAT, partner=A, events=ev_b)
            finally:
                lb.close()
                lb.pool.close()
        async with asyncio.timeout(30):
            while len(col.messages) < 2:
                await asyncio.sleep(0.05)
    steps = [KeyRelayEvent.model_validate_json(bytes(m.payload)) for m in col.messages]
    assert [e.step for e in steps] == ["requested", "refused"]
    assert "no key to relay" in (steps[1].reason or "")
    assert world.stores[B].level(SAT).available_blocks == world.keys[B].size // 256


async def test_events_without_a_broker_are_logged_and_kept(caplog):
    caplog.set_level(logging.INFO, logger="postprocessing.relay")
    ev = RelayEvents(A)
    ev.emit("refused", role="offering", partner=B, satellite=SAT, reason="x" * 1000)
    assert ev.events[0].reason == "x" * 300 and ev.published == 0
    assert "relay event beijing-sim: refused" in caplog.text
    with pytest.raises(ValueError):
        KeyRelayEvent.model_validate({**ev.events[0].model_dump(), "key_bits": "00ff"})
