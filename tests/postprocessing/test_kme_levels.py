"""Key-store levels on MQTT (a real Mosquitto): numbers only, a low-store alarm per peer."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import numpy as np

from postprocessing.keystore import KeyStore
from postprocessing.kme.levels import LevelsMqttConfig, LevelsPublisher

SEEN: list[bytes] = []


async def _next(messages, topic_suffix: str, deadline_s: float = 30.0):
    async with asyncio.timeout(deadline_s):
        async for msg in messages:
            SEEN.append(bytes(msg.payload))
            if str(msg.topic).endswith(topic_suffix):
                return json.loads(msg.payload)
    raise AssertionError("unreachable")


async def test_levels_and_low_store_alarm_are_published_without_key_bits(mosquitto, tmp_path):
    bits = np.random.default_rng(3).integers(0, 2, 10 * 256, dtype=np.uint8)
    store = KeyStore(tmp_path / "keys")
    store.deposit("jinan1-sim", "p1", bits)
    cfg = LevelsMqttConfig(host=mosquitto.host, port=mosquitto.port, station_id="beijing-sim",
                           topic_root="qkdtest-levels", low_store_bits=2000, interval_s=60,
                           peers=["stellenbosch-sim"])
    publisher = LevelsPublisher(store, cfg)
    stop = asyncio.Event()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        await sub.subscribe("qkdtest-levels/beijing-sim/#", qos=1)
        task = asyncio.create_task(publisher.run(stop))
        try:
            msgs = sub.messages
            levels = await _next(msgs, "/keys/levels")
            by_peer = {p["peer"]: p for p in levels["peers"]}
            assert by_peer["jinan1-sim"] == {
                "peer": "jinan1-sim", "available_bits": 2560, "available_blocks": 10,
                "reserved_blocks": 0, "consumed_blocks": 0, "low": False}
            assert by_peer["stellenbosch-sim"]["available_bits"] == 0
            assert by_peer["stellenbosch-sim"]["low"] is True
            alarm = await _next(msgs, "/alarms")  # the empty relay store is low from the start
            assert alarm["key"] == "keys.low.stellenbosch-sim" and alarm["state"] == "raised"
            store.take("jinan1-sim", 3, purpose="test")  # 1792 bits left: low
            publisher.changed.set()
            levels = await _next(msgs, "/keys/levels")
            assert {p["peer"]: p["available_bits"] for p in levels["peers"]}["jinan1-sim"] == 1792
            alarm = await _next(msgs, "/alarms")
            assert alarm == {**alarm, "key": "keys.low.jinan1-sim", "state": "raised",
                             "severity": "warning"}
            store.deposit("jinan1-sim", "p2", bits[:1024])
            publisher.changed.set()
            alarm = await _next(msgs, "/alarms")
            assert (alarm["key"], alarm["state"]) == ("keys.low.jinan1-sim", "cleared")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as late:
        await late.subscribe("qkdtest-levels/beijing-sim/keys/levels", qos=1)
        levels = await _next(late.messages, "/keys/levels")  # the retained copy
    assert {p["peer"]: p["available_bits"] for p in levels["peers"]}["jinan1-sim"] == 2816
    # Every value is a number, a bool or a name: no key material in any payload.
    for p in levels["peers"]:
        assert all(isinstance(v, int | bool) for k, v in p.items() if k != "peer")
    secrets = [np.packbits(bits[i:i + 256]).tobytes() for i in range(0, bits.size, 256)]
    for blob in SEEN:
        for sec in secrets:
            assert sec.hex().encode() not in blob and sec not in blob
    store.close()
