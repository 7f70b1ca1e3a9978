"""A consumer process for the tests: receives one pass; can SIGKILL itself mid-pass.

usage: python _consumer.py ENDPOINT OUT_DIR PASS_ID [--die-after N] [--window W]
Prints the result as one JSON line on success.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from station.events.client import StreamClient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("out")
    ap.add_argument("pass_id")
    ap.add_argument("--die-after", type=int, default=None)
    ap.add_argument("--window", type=int, default=4)
    args = ap.parse_args()
    stored = 0

    def on_batch(*_: object) -> None:
        nonlocal stored
        stored += 1
        if args.die_after is not None and stored >= args.die_after:
            # Stored but not yet acknowledged: the worst moment to die.
            os.kill(os.getpid(), signal.SIGKILL)

    with StreamClient(args.endpoint, args.out, window=args.window, on_batch=on_batch,
                      consumer="test-consumer") as client:
        rp = client.receive_pass(args.pass_id)
    print(json.dumps({"ok": rp.ok, "problems": rp.problems, "batches": rp.batches,
                      "events": rp.events, "duplicates_dropped": rp.duplicates_dropped}))


if __name__ == "__main__":
    main()
