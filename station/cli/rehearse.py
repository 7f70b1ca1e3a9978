"""``qkd-station rehearse``: one pass end to end on the simulated clock.

Runs the real pass state machine (readiness, slew, track, acquisition, pass file, stream,
park) with the configured backends on a simulated clock that starts just before the
pass's prepare time. All ``sim`` in ``config/sim.toml``; swap any backend for a real one
to commission it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from station.cli._common import add_config_argument, load_or_exit

if TYPE_CHECKING:
    from station.clock import SimClock
    from station.config import StationConfig
    from station.daemon.context import StationContext
    from station.daemon.pass_runner import PassReport
    from station.schedule import PlannedPass

log = logging.getLogger("station.rehearse")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rehearse", help="run one pass end to end on the simulated clock")
    add_config_argument(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pass", dest="pass_id", metavar="PASS_ID", help="the pass to rehearse")
    which.add_argument("--next", action="store_true",
                       help="the next scheduled pass after the config's clock start (default)")
    p.add_argument("--speed", default="max",
                   help="simulated seconds per wall second, or 'max' (default: max)")
    p.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    p.add_argument("--hours", type=float, default=24.0, help="how far ahead to look for --next")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.log import setup_logging

    cfg = load_or_exit(args.config)
    setup_logging(cfg.log_level)
    try:
        speed = float("inf") if args.speed == "max" else float(args.speed)
        if not speed > 0:
            raise ValueError
    except ValueError:
        print(f"--speed: {args.speed!r}: give a number > 0 or 'max'", file=sys.stderr)
        return 2
    from station.daemon.app import tune_interpreter

    tune_interpreter()
    report = asyncio.run(rehearse(cfg, pass_id=args.pass_id, speed=speed, hours=args.hours))
    if report is None:
        return 1
    if report.clock_lateness is not None and not report.clock_lateness.valid:
        print(f"rehearsal INVALID: {report.clock_lateness.reason}", file=sys.stderr)
    text = json.dumps(report.model_dump(mode="json"), indent=2)
    if args.report:
        Path(args.report).write_text(text + "\n")
    print(_summary(report))
    if args.report:
        print(f"report: {args.report}")
    key_ok = distill_rehearsed(cfg, report)
    return 0 if report.outcome.value == "completed" and key_ok else 1


async def rehearse(cfg: StationConfig, *, pass_id: str | None, speed: float,
                   hours: float = 24.0, measure_qber: bool = True) -> PassReport | None:
    """Run one pass on a simulated clock; returns its :class:`PassReport` (None: no pass)."""
    from drivers.errors import DriverError
    from station.clock import SimClock
    from station.daemon.alarms import AlarmBook
    from station.daemon.context import StationContext

    entry = await _find_pass(cfg, pass_id, hours)
    if entry is None:
        return None
    start = entry.aos - timedelta(seconds=entry.lead_time_s + 5.0)
    clock = SimClock(start, speed=speed)
    ctx = StationContext.build(cfg, clock, AlarmBook(clock.now))
    log.info("rehearsing %s (%s): clock from %s at %s", entry.pass_id, entry.satellite,
             f"{start:%H:%M:%S}", "max speed" if speed == float("inf") else f"×{speed:g}")
    await ctx.pipeline.start()
    try:
        await ctx.connect_all()
        await clock.sleep_until(entry.aos - timedelta(seconds=entry.lead_time_s))
        report = await _run_watched(ctx, clock, entry)
        if measure_qber and report.pass_file and report.events_recorded and _tagger_started(ctx):
            try:
                await asyncio.to_thread(_measure_qber, ctx, entry, report)
            except DriverError as exc:
                log.error("QBER not measured: %s", exc)
        return report
    finally:
        await ctx.pipeline.stop()
        await ctx.close()


async def _find_pass(cfg: StationConfig, pass_id: str | None, hours: float) -> PlannedPass | None:
    """The pass to rehearse: ``pass_id``'s, or the next scheduled from ``[clock] start``
    (None, with the reason on stderr, when there is none)."""
    from station.clock import from_epoch_s
    from station.orbit.catalog import Catalog, fixed_clock
    from station.schedule import parse_pass_id, plan

    if pass_id is not None:
        try:
            _, aos_s = parse_pass_id(pass_id)
        except ValueError as exc:
            print(f"--pass: {exc}", file=sys.stderr)
            return None
        search_from_s, search_hours = aos_s - 3600.0, 2.0
    elif cfg.clock.start is None:
        print("--next needs [clock] start in the config (or give --pass)", file=sys.stderr)
        return None
    else:
        search_from_s, search_hours = cfg.clock.start.timestamp(), hours
    catalog = await asyncio.to_thread(Catalog.from_config, cfg.orbit, fixed_clock(search_from_s))
    schedule = await asyncio.to_thread(
        plan, cfg, catalog, search_from_s, search_hours, [pass_id] if pass_id else [], [])
    entry = schedule.get(pass_id) if pass_id else schedule.next_scheduled(search_from_s)
    if entry is None:
        print(f"no {'pass ' + pass_id if pass_id else 'scheduled pass'} found from "
              f"{from_epoch_s(search_from_s):%Y-%m-%dT%H:%M:%SZ}", file=sys.stderr)
    return entry


async def _run_watched(ctx: StationContext, clock: SimClock, entry: PlannedPass) -> PassReport:
    """Run the pass with the loop's lateness watched: a clock faster than this host can
    follow makes a meaningless pass, so sustained lateness ends the run as invalid."""
    from station.daemon.lateness import LatenessMonitor, tolerated_lateness_s
    from station.daemon.modes import Outcome, Phase
    from station.daemon.pass_runner import PassRunner
    from station.daemon.record import DEGRADED_WINDOW_LOSS_FRACTION

    runner = PassRunner(ctx, entry)
    monitor = LatenessMonitor(
        clock, limit_s=tolerated_lateness_s(ctx.cfg.tracking.rate_hz),
        on_invalid=lambda why: runner.request_abort(f"invalid run: {why}"),
        counts=lambda: runner.phase in (Phase.PREPARE, Phase.TRACK))
    watcher = asyncio.create_task(monitor.run(), name="lateness-monitor")
    try:
        report = await runner.run()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if monitor.active:
        if report.tracking is not None:
            t = report.tracking
            monitor.judge_tracking(t.ticks, t.skipped_ticks, t.max_lateness_s)
        monitor.judge_loss(report.window_lost_fraction, DEGRADED_WINDOW_LOSS_FRACTION)
        report.clock_lateness = monitor.finish()
        if not report.clock_lateness.valid and report.outcome != Outcome.ABORTED:
            # Found too late to stop the pass (a stall that outlasted it): the run
            # is no rehearsal of the station all the same.
            report.outcome = Outcome.ABORTED
            report.reason = f"invalid run: {report.clock_lateness.reason}"
    return report


def _tagger_started(ctx: StationContext) -> bool:
    """Whether the simulated tagger ran (its epoch exists); False for other taggers."""
    return ctx.hooks.started()


def _measure_qber(ctx: StationContext, entry: PlannedPass, report: PassReport) -> None:
    """Sift the recorded pass against what the simulated satellite sent (sim tagger only)."""
    import numpy as np
    from scipy.constants import c as C_M_S  # the speed of light, m/s

    from postprocessing.satellite.truth import qber_from_events
    from station.events import PassFileReader
    from station.orbit.geometry import SatelliteLinkGeometry

    tagger = ctx.tagger
    names = ctx.cfg.timetagger.channel_map.model_dump()
    wanted = np.array([names[k] for k in ("h", "v", "d", "a", "sync")])
    with PassFileReader(report.pass_file) as reader:
        # Only what sifting needs, batch by batch: the pass never sits in memory twice.
        kept = [e[np.isin(e["channel"], wanted)] for e in (b.events for b in reader)]
    if not kept:
        return
    events = np.concatenate(kept)
    del kept
    sync = events["timestamp_ps"][events["channel"] == names["sync"]]
    if sync.size == 0:
        return
    first_utc_s = (tagger.tagger_epoch_utc_ps + int(sync[0])) / 1e12
    geometry = SatelliteLinkGeometry(entry.earth_satellite(), ctx.cfg.site)
    range_km, _ = geometry.range_el_at(np.array([first_utc_s]))
    sift = qber_from_events(
        events, seed=tagger.options.seed, tagger_epoch_utc_ps=tagger.tagger_epoch_utc_ps,
        first_sync_tof_ps=float(range_km[0]) * 1e3 / C_M_S * 1e12, period_ps=tagger.period_ps,
        pulses_per_sync=tagger.pulses_per_sync, intensity_probs=tuple(tagger.options.mu_probs),
        sync_channel=names["sync"], detector_channels=(names["h"], names["v"], names["d"], names["a"]))
    report.qber_measured = sift["qber_signal"]
    report.qber_all_classes = sift["qber"]
    report.sifted_bits = int(sift["sifted"])


def _summary(r: PassReport) -> str:
    lines = [f"pass {r.pass_id} ({r.satellite}): {r.outcome.value}"
             + (f" — {r.reason}" if r.reason else "")]
    for name, t in r.phase_times.items():
        lines.append(f"  {name:<9} {t:%H:%M:%S}")
    for c in r.readiness:
        lines.append(f"  check {c.name:<22} {'ok' if c.ok else 'FAILED'} ({c.policy}): {c.detail}")
    if r.tracking is not None:
        t = r.tracking
        lines.append(f"  tracking  RMS {t.rms_sky_error_arcsec:.1f}\", max {t.max_error_arcsec:.1f}\" "
                     f"after acquisition ({t.samples_after_acquisition} samples)")
    late = r.clock_lateness
    if late is not None:
        lines.append(f"  clock     ×{late.speed:g}: the event loop ran a median {late.median_s:.3f} s, "
                     f"p95 {late.p95_s:.3f} s, max {late.max_s:.3f} s (clock) behind "
                     f"(tolerated {late.limit_s:g} s)")
        if not late.valid:
            lines.append(f"  INVALID   {late.reason}")
        elif r.tracking is not None and (r.tracking.skipped_ticks or late.p95_s > 0.2 * late.limit_s):
            t = r.tracking
            lines.append(
                f"  note      at ×{late.speed:g} the host is near its limit: {t.skipped_ticks} of "
                f"{t.ticks + t.skipped_ticks} tracking ticks skipped, commands up to "
                f"{t.max_lateness_s:.2f} s late; that, not the mount, explains the tracking "
                "error above (a lower --speed or 'max' tracks as the station would)")
    if r.window_s:
        lines.append(f"  window    {r.window_s:.1f} s of QKD window, {r.window_lost_s:.1f} s "
                     f"({100 * r.window_lost_fraction:.1f} %) without usable recording")
    counts = ", ".join(f"{k} {v:,}" for k, v in r.counts_by_channel.items())
    lines.append(f"  events    {r.events_recorded:,} recorded, {r.events_streamed:,} streamed, "
                 f"{r.events_lost:,} lost ({counts})")
    if r.qber_measured is not None:
        lines.append(f"  QBER      {100 * r.qber_measured:.2f} % signal states, "
                     f"{100 * (r.qber_all_classes or 0):.2f} % all classes; {r.sifted_bits:,} "
                     "sifted bits (simulator, sifted against what was sent)")
    lines.append(f"  file      {r.pass_file}")
    lines.append(f"  parked    {r.mount_parked}")
    return "\n".join(lines)


def distill_rehearsed(cfg: StationConfig, report: PassReport) -> bool:
    """The rehearsal's last step: distil the rehearsed pass's key with the simulated
    satellite and print the key report beside the paper's figures.

    The satellite runs as its own process (``qkd-station keys satellite``, its own config
    and secret) on a free port with fresh pools and key stores per rehearsal (under
    ``state_dir/keys/rehearsals/``); the ground side runs
    here, from the pass file, as ``keys distill`` would. Skipped (True) without
    ``[keys] satellite_config`` or a pass file; False if the key was not distilled.
    """
    import subprocess
    import time

    from postprocessing.ground import PassAborted, distill_pass_file
    from postprocessing.report import PAPER_MICIUS
    from station.cli.keys import ground_settings, satellite_command

    sat_cfg = cfg.keys.satellite_config
    if sat_cfg is None or not report.pass_file:
        return True
    run_dir = Path(cfg.state_dir) / cfg.keys.dir / "rehearsals" / time.strftime("%Y%m%dT%H%M%S")
    # Fresh pools, stores and state per rehearsal: rehearsals never touch the station's own.
    ground_pool = run_dir / "ground" / "auth-pool.json"
    proc = subprocess.Popen(
        satellite_command(Path(sat_cfg), "--endpoint", "tcp://127.0.0.1:0",
                          "--state-dir", str(run_dir / "satellite"),
                          "--pool-dir", str(run_dir / "satellite" / "auth"),
                          "--provision", f"{cfg.station_id}={ground_pool}"),
        stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("satellite "):
            print(f"key: the simulated satellite did not start ({line.strip() or 'no output'})",
                  file=sys.stderr)
            return False
        endpoint = line.split(" on ", 1)[1].strip()
        settings = ground_settings(cfg, satellite_endpoint=endpoint).model_copy(
            update={"keystore_dir": run_dir / "ground" / "store", "work_dir": run_dir / "work",
                    "auth_pool": ground_pool})
        try:
            key = asyncio.run(distill_pass_file(report.pass_file, settings))
        except PassAborted as exc:
            key = exc.report
        print(key.summary(paper=PAPER_MICIUS))
        (run_dir / "key-report.json").write_text(key.model_dump_json(indent=2) + "\n")
        print(f"  key report: {run_dir / 'key-report.json'}")
        return key.outcome != "aborted"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
