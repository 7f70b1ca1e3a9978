"""A process holding one MqttService connection, for the last-will test.

Usage: python _station_proc.py HOST PORT STATION_ID TMPDIR. Prints ``connected`` once
``online`` is published, then serves until killed (or stops cleanly on SIGTERM).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from station.clock import SimClock
from station.mqtt.service import MqttService
from tests.mqtt.helpers import START, make_cfg


async def main() -> None:
    host, port, station_id, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    cfg = make_cfg(tmp, host, port, station_id=station_id)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with MqttService(cfg, SimClock(START)) as service:
        await service.wait_connected()
        print("connected", flush=True)
        await stop.wait()


asyncio.run(main())
