"""``qkd-station receive``: the reference consumer of the event stream."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "receive", help="receive passes from a station's event stream into files",
        description="Connect to a station's event stream (docs/stream-protocol.md), receive "
        "passes, check sequence continuity, per-batch counts and end-of-pass totals, and "
        "write each pass to OUT/<pass_id>.arrows (the pass-file format) with a "
        "<pass_id>.json verification record. Restarted, it resumes where its files end.")
    p.add_argument("--connect", required=True, metavar="ENDPOINT",
                   help="the station's stream endpoint, e.g. tcp://127.0.0.1:5560")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for received passes")
    p.add_argument("--pass", dest="pass_id", metavar="PASS_ID",
                   help="receive this pass only, then exit (default: follow every pass)")
    p.add_argument("--list", action="store_true", help="list the passes the station serves")
    p.add_argument("--window", type=int, default=64,
                   help="batches in flight before an acknowledgement (default 64)")
    p.add_argument("--max-passes", type=int, default=None,
                   help="exit after this many passes (follow mode)")
    p.add_argument("--no-catch-up", action="store_true",
                   help="follow mode: skip passes recorded before now that OUT does not hold "
                   "(default: receive every pass the station holds and OUT lacks)")
    p.add_argument("--server-key", metavar="FILE",
                   help="the station's CURVE public key (.key): the stream is then "
                   "authenticated and encrypted; needs --key")
    p.add_argument("--key", metavar="FILE",
                   help="this consumer's CURVE secret key (.key_secret, mode 0600, from "
                   "`qkd-station keygen`)")
    p.add_argument("--consumer", default="", help="consumer name (default: a random one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.events.client import StreamClient, StreamError
    from station.events.curve import CurveKeyError, load_keypair, load_public_key

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.server_key is None) != (args.key is None):
        print("receive: CURVE needs both --server-key and --key", file=sys.stderr)
        return 2
    curve: dict[str, Any] = {}
    if args.server_key is not None:
        try:
            curve = {"server_public_key": load_public_key(args.server_key),
                     "keypair": load_keypair(args.key)}
        except CurveKeyError as exc:
            print(f"receive: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with StreamClient(args.connect, args.out, window=args.window, consumer=args.consumer,
                          **curve) as client:
            if args.list:
                for p in client.list_passes().passes:
                    state = "recording" if p.recording else "recorded"
                    print(f"{p.pass_id}  {state}  {p.batches} batches  {p.events} events")
                return 0
            if args.pass_id:
                rps = [client.receive_pass(args.pass_id, stop=stop)]
            else:
                rps = client.follow(stop=stop, max_passes=args.max_passes,
                                    catch_up=not args.no_catch_up)
    except StreamError as exc:
        print(f"receive: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    bad = [rp for rp in rps if not rp.ok]
    for rp in rps:
        print(f"{rp.pass_id}: {'verified' if rp.ok else 'FAILED'}, {rp.batches} batches, "
              f"{rp.events} events -> {rp.path}" + (f"; {'; '.join(rp.problems)}" if rp.problems else ""))
    return 1 if bad else 0
