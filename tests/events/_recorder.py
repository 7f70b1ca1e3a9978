"""A daemon-like process for the crash test: records batches forever until SIGKILLed.

usage: python _recorder.py STATE_DIR [ENDPOINT]
Prints one JSON line of recorder stats after every batch it knows is in the file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from station.config.events import EventsConfig
from station.events import EventPipeline
from tests.events.conftest import header, make_batches


async def main(state_dir: Path, endpoint: str) -> None:
    pipeline = EventPipeline(EventsConfig(stream_endpoint=endpoint,
                                          flush_interval_s=0.05), state_dir=state_dir)
    await pipeline.start()
    rec = pipeline.open_pass(header())
    print(json.dumps({"path": str(rec.path)}), flush=True)
    batches = make_batches(400, seed=21, max_events=20000)
    for b in batches:
        await rec.push(b)
        await asyncio.sleep(0)
        s = rec.stats()
        print(json.dumps({"batches_recorded": s.batches_recorded}), flush=True)
    await asyncio.Event().wait()  # never closes the pass: only SIGKILL ends this


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "tcp://127.0.0.1:*"))
