"""``[keys] embedded = true`` with ``kme_port``: the daemon starts the station's KME as a
child (demo PKI made at first start), the KME publishes the key-store levels on the
station's broker, an SAE takes a key with curl and the demo certificate, and the KME stops
with the daemon. A real daemon process (config/sim.toml) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from postprocessing.keystore import KeyStore
from tests.conftest import REPO, free_port, subprocess_env
from tests.mqtt.helpers import collector

BLOCKS = 40


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def wait_levels(col, topic: str, predicate, timeout_s: float = 120.0) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            for msg in col.messages:
                if msg.topic.value == topic:
                    body = json.loads(msg.payload)
                    if predicate(body):
                        return body
            await asyncio.sleep(0.1)


def curl_enc_keys(kme_dir: Path, port: int) -> dict:
    """The README's command: one key for the satellite's application, as SAE demo-sae."""
    tls = kme_dir / "tls"
    out = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body",
         "--cacert", str(tls / "ca.crt"), "--cert", str(tls / "demo-sae.crt"),
         "--key", str(tls / "demo-sae.key"),
         "-H", "Content-Type: application/json", "-d", '{"number": 1, "size": 256}',
         f"https://127.0.0.1:{port}/api/v1/keys/micius-sim-sae/enc_keys"],
        capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is the README's client")
async def test_daemon_runs_the_kme_which_publishes_levels_and_stops_with_it(mosquitto, tmp_path):
    station_id = f"t{zlib.crc32(str(tmp_path).encode()):08x}"
    state = tmp_path / "state"
    with KeyStore(state / "keys" / "store") as store:
        bits = np.random.default_rng(11).integers(0, 2, BLOCKS * 256, dtype=np.uint8)
        store.deposit("micius-sim", "pass-1", bits)
    kme_port = free_port()
    env = subprocess_env(
        QKD_STATION__STATION_ID=station_id, QKD_STATION__STATE_DIR=str(state),
        QKD_STATION__MQTT__PORT=str(mosquitto.port), QKD_STATION__MQTT__EMBEDDED="false",
        QKD_STATION__EVENTS__STREAM_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        QKD_STATION__KEYS__SATELLITE_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        # No satellite here (it would write its own state beside the repo's config): the
        # KME is what this test is about; the daemon logs that no key will be distilled.
        QKD_STATION__KEYS__SATELLITE_CONFIG=str(tmp_path / "no-satellite.toml"),
        QKD_STATION__KEYS__KME_PORT=str(kme_port), QKD_STATION__WEB__ENABLED="false")
    topic = f"qkd/{station_id}/keys/levels"
    async with collector(mosquitto.host, mosquitto.port, topic,
                         f"qkd/{station_id}/alarms") as col:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "run", "--config", str(REPO / "config/sim.toml"),
            cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert daemon.stderr is not None
        log_task = asyncio.create_task(daemon.stderr.read())
        try:
            first = await wait_levels(col, topic, lambda b: bool(b["peers"]))
            peer = next(p for p in first["peers"] if p["peer"] == "micius-sim")
            assert (peer["available_blocks"], peer["available_bits"]) == (BLOCKS, BLOCKS * 256)
            assert first["station_id"] == station_id

            kme_dir = state / "keys" / "kme"
            for key in (kme_dir / "tls").glob("*.key"):
                assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
            assert stat.S_IMODE((kme_dir / "kme.toml").stat().st_mode) == 0o600
            assert stat.S_IMODE((kme_dir / "tls").stat().st_mode) == 0o700
            assert not list(kme_dir.rglob("*ca.key"))  # the demo CA's key is never kept

            got = await asyncio.to_thread(curl_enc_keys, kme_dir, kme_port)
            assert len(got["keys"]) == 1 and len(got["keys"][0]["key"]) == 44  # 32 bytes b64
            after = await wait_levels(col, topic, lambda b: any(
                p["peer"] == "micius-sim" and p["available_blocks"] == BLOCKS - 1
                for p in b["peers"]))
            assert after["peers"]
            # Key levels on MQTT are numbers only: the key's bytes are nowhere on the broker.
            key_b64 = got["keys"][0]["key"].encode()
            assert not any(key_b64 in bytes(m.payload) for m in col.messages)
        finally:
            daemon.send_signal(signal.SIGTERM)
            async with asyncio.timeout(120):
                rc = await daemon.wait()
                log = (await log_task).decode(errors="replace")
    assert rc == 0, log[-3000:]
    assert "listening on https://127.0.0.1:" in log, log[-3000:]
    # The KME went with the daemon: its port is closed.
    async with asyncio.timeout(30):
        while port_open(kme_port):
            await asyncio.sleep(0.1)
