"""Records a pass with the file size limited (RLIMIT_FSIZE): writes fail with EFBIG, as on
a full disk. Prints the pass totals as JSON.

usage: python _diskfull.py STATE_DIR LIMIT_BYTES
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from station.config.events import EventsConfig
from station.events import EventPipeline
from tests.events.conftest import header, make_batches


async def main(state_dir: Path, limit: int) -> None:
    pipeline = EventPipeline(EventsConfig(stream_endpoint="tcp://127.0.0.1:*"), state_dir=state_dir)
    await pipeline.start()
    try:
        rec = pipeline.open_pass(header())
        for b in make_batches(30, seed=8, max_events=5000):
            await rec.push(b)
        totals = await rec.close("completed")
    finally:
        await pipeline.stop()
    print(totals.model_dump_json())


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    state, limit = Path(sys.argv[1]), int(sys.argv[2])
    state.joinpath("passes").mkdir(parents=True, exist_ok=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    asyncio.run(main(state, limit))
