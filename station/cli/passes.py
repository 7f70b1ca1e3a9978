"""``qkd-station passes``: tonight's passes, which ones the station takes, and why."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from station.cli._common import add_config_argument, load_or_exit
from station.config import StationConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "passes",
        help="predict and schedule passes (table, --json, or a --plot sky chart)",
        description="Predict the configured satellites' passes over the station, apply the "
        "schedule's constraints and show every pass as scheduled or rejected, with its reason.",
    )
    add_config_argument(p)
    p.add_argument(
        "--from", dest="start", metavar="ISO8601",
        help="window start, e.g. 2016-12-19T16:00:00Z (default: the configured clock's current time)",
    )
    p.add_argument("--hours", type=float, default=None, metavar="N",
                   help="window length in hours (default: operations.plan_hours)")
    p.add_argument("--json", action="store_true", help="print a JSON list of passes")
    p.add_argument("--plot", metavar="FILE.png", help="draw a polar sky plot (needs the 'plot' extra)")
    p.add_argument("--include", action="append", default=[], metavar="PASS_ID",
                   help="force this pass into the schedule (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PASS_ID",
                   help="keep this pass out of the schedule (repeatable)")
    p.set_defaults(func=run)


def parse_start(text: str) -> float:
    """Clock seconds of an ISO 8601 time; a time without zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"--from {text!r} is not an ISO 8601 time, e.g. 2016-12-19T16:40:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def clock_now_s(cfg: StationConfig) -> float:
    """The configured clock's 'now': a simulated clock's start, or real UTC."""
    if cfg.clock.mode == "simulated" and cfg.clock.start is not None:
        return cfg.clock.start.timestamp()
    from station.clock import RealClock

    return RealClock().now_s()


class _LazyProgress:
    """A progress bar on stderr that only appears once the work takes more than a moment."""

    def __init__(self, delay_s: float = 0.7) -> None:
        self.delay_s = delay_s
        self.t0 = time.monotonic()  # wall time, for the UI only
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            if time.monotonic() - self.t0 < self.delay_s or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(stderr=True), transient=True)
            self.progress.start()
        label = {"search": "searching passes", "describe": "describing passes"}.get(stage, stage)
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(label, total=max(total, 1))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


JSON_EXCLUDE = {"elements_text"}


def run(args: argparse.Namespace) -> int:
    from station.orbit.catalog import Catalog, fixed_clock
    from station.schedule import plan

    cfg = load_or_exit(args.config)
    try:
        start_s = parse_start(args.start) if args.start else clock_now_s(cfg)
    except ValueError as exc:
        print(f"qkd-station passes: {exc}", file=sys.stderr)
        return 2
    hours = args.hours if args.hours is not None else cfg.operations.plan_hours
    if not 0 < hours <= 24 * 31:
        print(f"qkd-station passes: --hours {hours:g} must be in (0, 744]", file=sys.stderr)
        return 2
    # Ages are measured against the configured clock, not this computer's.
    catalog = Catalog.from_config(cfg.orbit, fixed_clock(clock_now_s(cfg)))
    if len(catalog) == 0:
        print(
            "qkd-station passes: no usable element sets in "
            f"{', '.join(map(str, cfg.orbit.element_sources)) or '(orbit.element_sources is empty)'}",
            file=sys.stderr,
        )
        for problem in catalog.last_report.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    bar = _LazyProgress()
    try:
        schedule = plan(cfg, catalog, start_s, hours, args.include, args.exclude, progress=bar)
    finally:
        bar.close()

    for warning in schedule.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.plot:
        from station.schedule.skyplot import PlotUnavailable, render_sky_plot

        try:
            path = render_sky_plot(schedule, cfg.site, Path(args.plot))
        except PlotUnavailable as exc:
            print(f"qkd-station passes: {exc}", file=sys.stderr)
            return 2
        print(f"sky plot written to {path}", file=sys.stderr)
    if args.json:
        out = [p.model_dump(mode="json", exclude=JSON_EXCLUDE) for p in schedule.passes]
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_table(schedule)
    return 0


def print_table(schedule) -> None:  # type: ignore[no-untyped-def]
    """The schedule as a readable table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{schedule.site}: passes {schedule.start:%Y-%m-%d %H:%M}Z – {schedule.end:%Y-%m-%d %H:%M}Z",
        title_justify="left",
    )
    nowrap = {"no_wrap": True}
    right = {"no_wrap": True, "justify": "right"}
    for name, kw in [
        ("pass id", nowrap), ("satellite", {}), ("AOS", nowrap), ("LOS", nowrap),
        ("max el", right), ("az AOS→LOS", right), ("QKD window", nowrap), ("min range", right),
        ("sun", right), ("moon", right), ("status", nowrap), ("reason", {"overflow": "fold"}),
    ]:
        table.add_column(name, **kw)
    for p in schedule.passes:
        qkd = (
            f"{p.qkd_start:%H:%M:%S} {p.qkd_duration_s:.0f} s" if p.qkd_start and p.qkd_end else "—"
        )
        moon = f"{p.moon_el_deg:+.0f}° {p.moon_illumination:.0%}"
        status = "[green]scheduled[/]" if p.status == "scheduled" else "[red]rejected[/]"
        table.add_row(
            p.pass_id, p.satellite, f"{p.aos:%m-%d %H:%M:%S}", f"{p.los:%H:%M:%S}",
            f"{p.max_el_deg:.1f}°", f"{p.aos_az_deg:.0f}°→{p.los_az_deg:.0f}°", qkd,
            f"{p.min_range_km:.0f} km", f"{p.sun_el_deg:+.0f}°", moon, status, p.reason,
        )
    # A pipe or file gets a wide table instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    n = len(schedule.scheduled())
    total = sum(p.qkd_duration_s for p in schedule.scheduled())
    console.print(f"{n} pass(es) scheduled, {total:.0f} s of QKD window in total.")
