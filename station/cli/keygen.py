"""``qkd-station keygen``: a CURVE key pair for the event stream (station or consumer)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen", help="make a CURVE key pair for the event stream",
        description="Write a ZeroMQ CURVE key pair (ZPL certificates, the format of pyzmq's "
        "zmq.auth and czmq's zcert): DIR/NAME.key, the public key (mode 0644; give it to the "
        "other side), and DIR/NAME.key_secret, the secret key (mode 0600; never copy it). "
        "The station's pair goes in [events] curve_secret_key_file; each consumer's .key "
        "in curve_consumer_key_files. See docs/stream-protocol.md, Security.")
    p.add_argument("--name", required=True,
                   help="key name, e.g. 'station' or the consumer's host name")
    p.add_argument("--dir", default=".", metavar="DIR", help="folder to write into (default .)")
    p.add_argument("--force", action="store_true", help="replace an existing pair of that name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.events.curve import CurveKeyError, load_public_key, write_keypair

    try:
        public_path, secret_path = write_keypair(args.dir, args.name, overwrite=args.force)
    except CurveKeyError as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"keygen: cannot write into {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"public key  {public_path}  {load_public_key(public_path).decode()}")
    print(f"secret key  {secret_path}  (mode 0600: keep it on this host only)")
    return 0
