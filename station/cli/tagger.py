"""``qkd-station tagger rates``: live per-channel count rates from the configured tagger.

Builds the clock and the time tagger the config names (sim, replay or swabian), starts it,
and prints one line of rates per ``--interval`` seconds of tagger time, for ``--seconds``
seconds or until Ctrl-C (or the end of a replayed recording). Lines follow the data, so
the command behaves the same on a real clock, a fast simulated one, or 'max'. With the sim
backend and no pass overhead it shows what a dark sky gives: dark counts, background,
sync and PPS.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import TextIO

from drivers import registry
from drivers.timetagger.base import Channel, ChannelConfig, TimeTagger, TimeTaggerError
from station.cli._common import add_config_argument, load_or_exit
from station.clock import Clock, RealClock, SimClock
from station.config import StationConfig

_PS_PER_S = 1_000_000_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tagger", help="time tagger tools (live count rates)")
    sub = p.add_subparsers(dest="tagger_command", metavar="TOOL")
    rates = sub.add_parser("rates", help="print live per-channel count rates")
    add_config_argument(rates)
    rates.add_argument("--seconds", type=float, default=None, metavar="N",
                       help="stop after N seconds of tagger time (default: until Ctrl-C)")
    rates.add_argument("--interval", type=float, default=1.0, metavar="S",
                       help="seconds of tagger time between lines (default 1)")
    rates.set_defaults(func=run_rates)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def make_clock(cfg: StationConfig) -> Clock:
    """The clock the config describes (real UTC, or simulated from its start and speed)."""
    if cfg.clock.mode == "real":
        return RealClock()
    assert cfg.clock.start is not None  # the config model requires it when simulated
    return SimClock(cfg.clock.start, speed=cfg.clock.speed_factor)


def channel_label(channel: int) -> str:
    try:
        return Channel(channel).name
    except ValueError:
        return f"ch{channel}"


def format_rates(now_s: float, rates_hz: dict[int, float], *, lossy_batches: int,
                 missed_events: int) -> str:
    """One line: UTC time, then ``NAME rate`` per channel, then loss counters."""
    dt = datetime.fromtimestamp(now_s, tz=UTC)
    when = dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 100_000}Z"
    cells = [f"{channel_label(c)} {_hz(r)}" for c, r in sorted(rates_hz.items())]
    loss = f"lossy batches {lossy_batches}, missed {missed_events}"
    return f"{when}  " + "  ".join(cells) + f"  | {loss}"


def _hz(rate_hz: float) -> str:
    if rate_hz >= 1e6:
        return f"{rate_hz / 1e6:8.3f} MHz"
    if rate_hz >= 1e3:
        return f"{rate_hz / 1e3:8.3f} kHz"
    return f"{rate_hz:8.1f} Hz "


def _channel_configs(cfg: StationConfig) -> list[ChannelConfig]:
    """The station's channel settings: from the config when it has them, else defaults
    for the standard channels."""
    configured = getattr(cfg.timetagger, "channels", None)
    out: list[ChannelConfig] = []
    if configured:
        for item in configured:
            if isinstance(item, ChannelConfig):
                out.append(item)
            elif hasattr(item, "model_dump"):
                fields = item.model_dump()
                out.append(ChannelConfig(**{k: fields[k] for k in (
                    "channel", "trigger_level_v", "delay_ps", "dead_time_ps") if k in fields}))
    return out or [ChannelConfig(channel=int(c)) for c in Channel]


async def watch_rates(tagger: TimeTagger, clock: Clock, *, seconds: float | None,
                      interval_s: float, channels: list[ChannelConfig],
                      out: TextIO | None = None) -> int:
    """Run the tagger and print rates; returns the number of lines printed.

    Lines are paced by the tagger's own time (the batches' ``end_ps``), not by sleeping on
    the clock: at any clock speed, 'max' included, each line covers one interval of data
    that really arrived, and a replay that ends early ends the watch.
    """
    out = out if out is not None else sys.stdout
    await tagger.connect()
    lossy = 0
    missed = 0
    lines = 0
    try:
        await tagger.configure(channels)
        await tagger.start()
        origin_ps: int | None = None
        next_tick = 1
        elapsed_s = 0.0
        printed_at_s = 0.0
        try:
            async for batch in tagger.batches():
                lossy += int(batch.info.lossy)
                missed += batch.info.missed_events
                if origin_ps is None:
                    origin_ps = batch.info.start_ps
                elapsed_s = (batch.info.end_ps - origin_ps) / _PS_PER_S
                at_end = seconds is not None and elapsed_s >= seconds
                if elapsed_s >= next_tick * interval_s or at_end:
                    print(format_rates(clock.now_s(), tagger.count_rates_hz(),
                                       lossy_batches=lossy, missed_events=missed),
                          file=out, flush=True)
                    lines += 1
                    printed_at_s = elapsed_s
                    next_tick = int(elapsed_s // interval_s) + 1
                if at_end:
                    break
            else:
                if elapsed_s > printed_at_s:  # the recording ended between two lines
                    print(format_rates(clock.now_s(), tagger.count_rates_hz(),
                                       lossy_batches=lossy, missed_events=missed),
                          file=out, flush=True)
                    lines += 1
        finally:
            await tagger.stop()
    finally:
        await tagger.close()
    return lines


def run_rates(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    if args.interval <= 0:
        print("--interval must be > 0 seconds", file=sys.stderr)
        return 2
    if args.seconds is not None and args.seconds <= 0:
        print("--seconds must be > 0", file=sys.stderr)
        return 2

    async def main() -> int:
        clock = make_clock(cfg)
        tagger = registry.create("timetagger", cfg.timetagger.backend,
                                 cfg.timetagger.options, clock=clock)
        print(f"{cfg.timetagger.backend} time tagger ({cfg.station_id}); clock "
              f"{cfg.clock.mode}; one line per {args.interval:g} s of tagger time",
              flush=True)
        await watch_rates(tagger, clock, seconds=args.seconds, interval_s=args.interval,
                          channels=_channel_configs(cfg))
        return 0

    try:
        return asyncio.run(main())
    except TimeTaggerError as exc:
        print(f"time tagger: {exc}", file=sys.stderr)
        return 1
    except registry.UnknownBackend as exc:
        print(str(exc), file=sys.stderr)
        return 1
