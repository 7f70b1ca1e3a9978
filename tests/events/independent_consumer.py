"""A second consumer of the event stream, written from docs/stream-protocol.md alone.

It imports nothing from ``station`` or ``drivers``: only pyzmq, numpy and the standard
library, as an integrator in another team would. It follows the page's "Consumer
procedure": list, then hello(null, catch_up, cursor); stores a batch only when its seq is
the one expected; acks every batch, duplicates included; ignores a no_session that
arrives while a hello is pending; starts again after a reconnect, no_session or
stale_cursor; checks the totals of every pass_end.

Storage, per pass, in ``out_dir``: ``<pass>.ts`` (int64 LE), ``<pass>.ch`` (uint8),
``<pass>.idx`` (one JSON line per stored batch, written after its arrays and flushed),
``<pass>.done`` (the checked pass_end). A restarted consumer trusts ``.idx`` and cuts the
array files to match, so a kill -9 at any moment loses nothing it acked.

Run as a script to follow a station: ``python independent_consumer.py ENDPOINT OUT
[--max-passes N] [--window W] [--name NAME]``; it exits 0 when N passes are complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq


class ConsumerError(RuntimeError):
    pass


@dataclass
class _Pass:
    pass_id: str
    ts: Any
    ch: Any
    idx: Any
    expected: int
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Stats:
    duplicates: int = 0
    restarts: int = 0
    stale_no_session: int = 0
    reconnects: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    begins: list[tuple[str, int]] = field(default_factory=list)


class Consumer:
    def __init__(self, endpoint: str, out_dir: Path | str, *, window: int = 16, name: str = "",
                 server_key: bytes | None = None, public_key: bytes | None = None,
                 secret_key: bytes | None = None, timeout_s: float = 10.0, ping_s: float = 0.5,
                 rewind_every: int = 0, rewind_by: int = 0):
        self.endpoint = endpoint
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.window = window
        self.name = name
        self.keys = (server_key, public_key, secret_key)
        self.timeout_s = timeout_s
        self.ping_s = ping_s
        # Chaos for tests: every N stored batches, ask again from D batches back, which
        # brings duplicates and messages in flight from the replaced session.
        self.rewind_every, self.rewind_by = rewind_every, rewind_by
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.cur: _Pass | None = None
        self.pending_hello = False
        self.pending_list = False
        self.skip: set[str] = set()
        self.stats = Stats()
        self.completed: list[str] = []
        self._stored_since_rewind = 0
        self._rewind: tuple[str, int] | None = None

    # -- storage ---------------------------------------------------------------------------
    def _paths(self, pass_id: str) -> dict[str, Path]:
        if "/" in pass_id or pass_id.startswith("."):
            raise ConsumerError(f"refusing pass id {pass_id!r} as a file name")
        return {k: self.out / f"{pass_id}.{k}" for k in ("ts", "ch", "idx", "done")}

    def held(self, pass_id: str) -> int:
        if self.cur is not None and self.cur.pass_id == pass_id:
            return self.cur.expected
        p = self._paths(pass_id)["idx"]
        if not p.exists():
            return 0
        return sum(1 for line in p.read_text().splitlines() if line.endswith("}"))

    def is_complete(self, pass_id: str) -> bool:
        return self._paths(pass_id)["done"].exists()

    def _open(self, pass_id: str) -> _Pass:
        p = self._paths(pass_id)
        lines = p["idx"].read_text().splitlines() if p["idx"].exists() else []
        good = [json.loads(x) for x in lines if x.endswith("}")]
        n_ev = sum(h["n_events"] for h in good)
        counts: dict[str, int] = {}
        for h in good:
            for k, v in h["counts"].items():
                counts[k] = counts.get(k, 0) + v
        # Cut whatever a kill left after the last indexed batch.
        for key, size in (("ts", 8 * n_ev), ("ch", n_ev)):
            with open(p[key], "ab") as f:
                f.truncate(size)
        with open(p["idx"], "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in good)
        return _Pass(pass_id, open(p["ts"], "ab"), open(p["ch"], "ab"), open(p["idx"], "a"),
                     expected=len(good), events=n_ev, counts=counts)

    def _close(self) -> None:
        if self.cur is not None:
            for f in (self.cur.ts, self.cur.ch, self.cur.idx):
                f.close()
            self.cur = None

    def events_of(self, pass_id: str) -> tuple[np.ndarray, np.ndarray]:
        p = self._paths(pass_id)
        return np.fromfile(p["ts"], "<i8"), np.fromfile(p["ch"], "u1")

    # -- wire ------------------------------------------------------------------------------
    def _send(self, obj: dict[str, Any]) -> None:
        assert self.sock is not None
        self.sock.send(json.dumps(obj).encode())

    def _connect(self) -> None:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 20)
        server, public, secret = self.keys
        if server is not None:
            s.setsockopt(zmq.CURVE_SERVERKEY, server)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)
        s.connect(self.endpoint)
        self.sock = s
        self.pending_hello = self.pending_list = False

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def close(self) -> None:
        self._disconnect()
        self._close()
        self.ctx.term()

    def _start_again(self) -> None:
        """The follow procedure, step 1: list (step 2 on its answer)."""
        self.stats.restarts += 1
        self._send({"type": "list"})
        self.pending_list = True

    def _hello_follow(self, passes: dict[str, Any]) -> None:
        rewind, self._rewind = self._rewind, None
        catch_up = []
        for p in passes["passes"]:
            pid = p["pass_id"]
            if pid in self.skip or self.is_complete(pid):
                continue
            resume = rewind[1] if rewind and rewind[0] == pid else self.held(pid)
            catch_up.append({"pass_id": pid, "resume_seq": resume})
        self._send({"type": "hello", "protocol": 1, "pass_id": None, "window": self.window,
                    "consumer": self.name, "catch_up": catch_up, "cursor": passes["cursor"]})
        self.pending_hello = True

    # -- the loop --------------------------------------------------------------------------
    def follow(self, until: Any, *, deadline_s: float = 120.0) -> None:
        """Follow until ``until()`` is true (checked after each message and each second)."""
        t_end = time.monotonic() + deadline_s
        self._connect()
        self._start_again()
        heard = time.monotonic()
        try:
            while not until():
                if time.monotonic() > t_end:
                    raise ConsumerError(f"not done within {deadline_s} s")
                assert self.sock is not None
                if not self.sock.poll(int(self.ping_s * 1000)):
                    if time.monotonic() - heard > self.timeout_s:
                        self.stats.reconnects += 1
                        self._disconnect()
                        self._connect()
                        self._start_again()
                        heard = time.monotonic()
                    else:
                        self._send({"type": "ping"})
                    continue
                frames = self.sock.recv_multipart()
                heard = time.monotonic()
                self._on(frames)
        finally:
            self._disconnect()
            self._close()

    def _on(self, frames: list[bytes]) -> None:
        msg = json.loads(frames[0])
        kind = msg.get("type")
        if kind == "pass_begin":
            self.pending_hello = False
            self._begin(msg)
        elif kind == "batch":
            self._batch(msg, frames)
        elif kind == "pass_end":
            self._end(msg)
        elif kind == "waiting":
            self.pending_hello = False
        elif kind == "passes":
            if self.pending_list:
                self.pending_list = False
                self._hello_follow(msg)
        elif kind == "error":
            self.stats.errors.append(msg)
            code = msg["code"]
            if code == "no_session":
                if self.pending_hello or self.pending_list:
                    self.stats.stale_no_session += 1  # answers an ack sent before our hello
                else:
                    self._start_again()
            elif code == "stale_cursor":
                self._start_again()
            elif code == "unknown_pass" and msg.get("pass_id"):
                self.skip.add(msg["pass_id"])  # a catch-up entry the station cannot serve
            else:
                raise ConsumerError(f"{code}: {msg['message']}")
        # pong and unknown types: nothing to do

    def _begin(self, msg: dict[str, Any]) -> None:
        pid = msg["pass_id"]
        self.stats.begins.append((pid, msg["resume_seq"]))
        if self.cur is not None and self.cur.pass_id != pid:
            self._close()
        if self.cur is None:
            self.cur = self._open(pid)
        if msg["resume_seq"] > self.cur.expected:
            self._start_again()

    def _batch(self, msg: dict[str, Any], frames: list[bytes]) -> None:
        cur = self.cur
        if cur is None or msg["pass_id"] != cur.pass_id:
            return  # in flight from before a re-hello
        seq = msg["seq"]
        if seq < cur.expected:
            self.stats.duplicates += 1
            self._send({"type": "ack", "pass_id": cur.pass_id, "seq": seq})
            return
        if seq > cur.expected:
            self._start_again()
            return
        if len(frames) != 3:
            raise ConsumerError(f"batch {seq} has {len(frames)} frames")
        n = msg["n_events"]
        if len(frames[1]) != 8 * n or len(frames[2]) != n:
            raise ConsumerError(f"batch {seq}: frame sizes do not match n_events {n}")
        ch = np.frombuffer(frames[2], "u1")
        counts = {str(c): int(k) for c, k in enumerate(np.bincount(ch)) if k} if n else {}
        if counts != msg["counts"]:
            raise ConsumerError(f"batch {seq}: counts {counts} != header {msg['counts']}")
        cur.ts.write(frames[1])
        cur.ch.write(frames[2])
        cur.ts.flush()
        cur.ch.flush()
        cur.idx.write(json.dumps({"seq": seq, "n_events": n, "counts": counts,
                                  "tagger_seq": msg["tagger_seq"]}) + "\n")
        cur.idx.flush()
        cur.expected += 1
        cur.events += n
        for k, v in counts.items():
            cur.counts[k] = cur.counts.get(k, 0) + v
        self._send({"type": "ack", "pass_id": cur.pass_id, "seq": seq})
        self._stored_since_rewind += 1
        if self.rewind_every and self._stored_since_rewind >= self.rewind_every:
            self._stored_since_rewind = 0
            # Ask again from further back than we hold: duplicates must be acked to flow.
            self._rewind = (cur.pass_id, max(0, cur.expected - self.rewind_by))
            self._start_again()

    def _end(self, msg: dict[str, Any]) -> None:
        cur = self.cur
        if cur is None or msg["pass_id"] != cur.pass_id:
            return
        if cur.expected < msg["batches"]:
            self._start_again()
            return
        problems = []
        if cur.expected != msg["batches"]:
            problems.append(f"batches {cur.expected} != {msg['batches']}")
        if cur.events != msg["events"]:
            problems.append(f"events {cur.events} != {msg['events']}")
        if cur.counts != msg["counts"]:
            problems.append(f"counts {cur.counts} != {msg['counts']}")
        if not msg.get("outcome"):
            problems.append("pass_end without an outcome")
        if problems:
            raise ConsumerError(f"pass {cur.pass_id}: " + "; ".join(problems))
        pid = cur.pass_id
        self._close()
        if self.is_complete(pid):
            return  # served again (a catch-up raced with its end): held once already
        done = self._paths(pid)["done"]
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(msg))
        os.replace(tmp, done)
        self.completed.append(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("out")
    ap.add_argument("--max-passes", type=int, required=True)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--name", default="independent")
    ap.add_argument("--deadline-s", type=float, default=300.0)
    args = ap.parse_args(argv)
    c = Consumer(args.endpoint, args.out, window=args.window, name=args.name, timeout_s=3.0)
    out = Path(args.out)
    try:
        c.follow(lambda: len(list(out.glob("*.done"))) >= args.max_passes,
                 deadline_s=args.deadline_s)
    finally:
        c.close()
    print(json.dumps({"completed": c.completed, "duplicates": c.stats.duplicates}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
