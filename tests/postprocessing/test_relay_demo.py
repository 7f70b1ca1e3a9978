"""``qkd-station relay-demo`` end to end: two rehearsed passes, distillation with the
simulated satellite, the relay, both KMEs, the image one-time-padded across them.

Checks the image decrypts bit-exactly and that the key's bytes (recovered here as
plain ⊕ cipher, i.e. the pad) appear in no log, no MQTT payload (a real Mosquitto
records everything the KMEs publish) and no file except the key stores and the
authentication pools.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from postprocessing.relay.image import read_png
from tests.mqtt.helpers import collector

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_relay_demo_decrypts_bit_exactly_and_leaks_no_key(mosquitto, tmp_path):
    out = tmp_path / "demo"
    # The relay events are not retained: listen to both stations' transitions first.
    async with collector(mosquitto.host, mosquitto.port, "qkd/+/transitions") as transitions:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "relay-demo", "--out", str(out),
            "--mqtt", f"{mosquitto.host}:{mosquitto.port}", "--verbose",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 1800)
        async with asyncio.timeout(30):
            while len(transitions.messages) < 5:
                await asyncio.sleep(0.1)
    relay_events = {}
    for msg in transitions.messages:
        event = json.loads(msg.payload)
        if event.get("kind") == "relay":
            relay_events.setdefault(event["station_id"], []).append(event["step"])
    assert relay_events == {"beijing-sim": ["offered", "accepted"],
                            "stellenbosch-sim": ["requested", "announced", "recovered"]}
    # What the KMEs left on the broker: both stations' retained key-store levels (the broker
    # is shared by the session's tests, so other stations' retained levels may be there too).
    payloads: list[bytes] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        for station_id in ("beijing-sim", "stellenbosch-sim"):
            await sub.subscribe(f"qkd/{station_id}/keys/levels", qos=1)
        async with asyncio.timeout(30):
            async for msg in sub.messages:
                payloads.append(bytes(msg.payload))
                if len(payloads) == 2:
                    break
    text = stdout.decode()
    assert proc.returncode == 0, text[-3000:] + stderr.decode()[-3000:]
    assert "bit-exact" in text and "relayed beijing-sim -> stellenbosch-sim" in text

    images = out / "images"
    plain = read_png(images / "beijing-plain.png")
    cipher = read_png(images / "encrypted.png")
    decrypted = read_png(images / "stellenbosch-decrypted.png")
    assert np.array_equal(decrypted, plain)
    assert not np.array_equal(cipher, plain)
    pad = np.bitwise_xor(plain, cipher).tobytes()
    chunks = [pad[i:i + 32] for i in range(0, len(pad) - 31, 32)]
    assert len(chunks) >= 8
    needles = [n for c in chunks for n in (c, c.hex().encode(), base64.b64encode(c))]

    logs = stdout + stderr
    assert b"relay: received" in logs
    assert b"relay event stellenbosch-sim: recovered" in logs
    assert b"relay event beijing-sim: accepted" in logs
    for n in needles:
        assert n not in logs
    payloads += [bytes(m.payload) for m in transitions.messages]
    levels = [json.loads(p) for p in payloads if b'"peers"' in p]
    assert {lv["station_id"] for lv in levels} == {"beijing-sim", "stellenbosch-sim"}
    for blob in payloads:
        assert not any(n in blob for n in needles)
    checked = 0
    for path in out.rglob("*"):
        if not path.is_file() or "keys.sqlite3" in path.name or path.parent.name == "auth" \
                or path.name.endswith("pool.json"):
            continue
        blob = path.read_bytes()
        assert not any(n in blob for n in needles), path
        checked += 1
    assert checked > 10
    # Whatever the demo consumed is gone from both stations' stores.
    message = json.loads((images / "message.json").read_text())
    for station in ("beijing-sim", "stellenbosch-sim"):
        db = next((out / station).rglob("keys.sqlite3")).read_bytes()
        for c in chunks[:4]:
            assert c not in db
    assert len(message["key_IDs"]) == -(-len(pad) // 32)
