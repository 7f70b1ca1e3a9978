"""The embedded amqtt broker starts again at once after the daemon holding it is killed.

A kill -9 with clients connected leaves the listener port's connections in TIME_WAIT. The
restart must not take that for "port already in use" (it did, for about 60 s)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from station.mqtt.broker import BrokerStartError, EmbeddedBroker
from tests.conftest import REPO, free_port, wait_for_port

CHILD = """
import asyncio, sys
from station.mqtt.broker import EmbeddedBroker

async def main():
    broker = EmbeddedBroker("127.0.0.1", int(sys.argv[1]))
    await broker.start()
    print("listening", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

_TIME_WAIT, _FIN_WAIT2 = "06", "05"


def lingering_states(port: int) -> set[str]:
    """TCP states of the sockets on local ``port`` other than LISTEN (from /proc/net/tcp)."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] != "0A":
            states.add(fields[3])
    return states


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
async def test_embedded_broker_restarts_right_after_kill_9(tmp_path):
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(port), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            assert (await child.stdout.readline()).strip() == b"listening"
        await asyncio.to_thread(wait_for_port, port)
        # Clients connected to it, as dashboards would be ...
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        async with aiomqtt.Client("127.0.0.1", port, timeout=5) as c:
            await c.publish("t/x", b"1", qos=1)
        # ... then kill -9: the kernel closes the broker's side first.
        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await child.wait()
        for s in clients:
            s.recv(1)  # EOF from the dead broker
            s.close()
        deadline = time.monotonic() + 10
        while _TIME_WAIT not in lingering_states(port) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert _TIME_WAIT in lingering_states(port) or _FIN_WAIT2 in lingering_states(port), \
            "the test needs connections left in TIME_WAIT to mean anything"
        # The restart works now, not in a minute.
        broker = EmbeddedBroker("127.0.0.1", port)
        await broker.start()
        try:
            async with aiomqtt.Client("127.0.0.1", port, timeout=5) as c:
                await c.publish("t/x", b"2", qos=1)
        finally:
            await broker.stop()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_port_really_in_use_is_still_refused_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            await EmbeddedBroker("127.0.0.1", port).start()
