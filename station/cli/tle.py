"""``qkd-station tle``: install, check and list orbital element sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from station.cli._common import add_config_argument, load_or_exit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tle", help="install, check and list orbital elements (TLE/OMM)")
    sub = p.add_subparsers(dest="tle_command", metavar="ACTION")

    up = sub.add_parser(
        "update", help="validate a new element file (path or URL) and install it atomically",
        description="Fetch SOURCE, validate every record, and only then replace the file in the "
        "catalog directory in one atomic rename. A bad file changes nothing.",
    )
    add_config_argument(up)
    up.add_argument("source", metavar="SOURCE", help="file path or http(s) URL, e.g. a CelesTrak GP query")
    up.add_argument("--dest", metavar="DIR", help="directory to install into (default: orbit.update_dir, "
                    "else the first directory in orbit.element_sources)")
    up.add_argument("--name", metavar="FILE", help="file name to install as (default: the source's name)")
    up.add_argument("--timeout", type=float, default=30.0, metavar="S", help="download timeout (s)")
    up.set_defaults(func=run_update)

    check = sub.add_parser("check", help="validate element files without installing anything")
    add_config_argument(check)
    check.add_argument("files", nargs="*", metavar="FILE", help="files to check (default: the configured sources)")
    check.set_defaults(func=run_check)

    ls = sub.add_parser("list", help="list the catalog with epochs and ages on the configured clock")
    add_config_argument(ls)
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _dest_dir(args: argparse.Namespace) -> Path:
    if args.dest:
        return Path(args.dest)
    cfg = load_or_exit(args.config)
    if cfg.orbit.update_dir is not None:
        return cfg.orbit.update_dir
    for source in cfg.orbit.element_sources:
        if source.is_dir():
            return source
    print(
        "qkd-station tle update: no directory to install into; set orbit.update_dir or give --dest",
        file=sys.stderr,
    )
    raise SystemExit(2)


def run_update(args: argparse.Namespace) -> int:
    from station.orbit.update import UpdateRejected, update_elements

    dest_dir = _dest_dir(args)
    try:
        result = update_elements(args.source, dest_dir, name=args.name, timeout_s=args.timeout)
    except UpdateRejected as exc:
        print(exc, file=sys.stderr)
        return 1
    verb = "unchanged" if result.unchanged else ("replaced" if result.replaced else "installed")
    print(f"{result.path}: {verb}, {len(result.element_sets)} element set(s)")
    for es in result.element_sets[:20]:
        print(f"  {es.norad_id:>9}  {es.name:<28} epoch {es.epoch:%Y-%m-%dT%H:%M:%SZ}")
    if len(result.element_sets) > 20:
        print(f"  ... and {len(result.element_sets) - 20} more")
    if not result.unchanged:
        print("a running daemon loads it on SIGHUP: systemctl reload qkd-station")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from station.orbit.catalog import LoadReport, parse_file

    report = LoadReport()
    if args.files:
        files = [Path(f) for f in args.files]
    else:
        from station.orbit.catalog import _expand

        cfg = load_or_exit(args.config)
        files = _expand(cfg.orbit.element_sources, report)
    # Sources that do not exist or cannot be listed are problems too, not silence.
    for problem in report.problems:
        print(problem)
    bad = len(report.problems)
    for path in files:
        sets, problems = parse_file(path)
        print(f"{path}: {len(sets)} valid, {len(problems)} rejected")
        for problem in problems:
            print(f"  {problem}")
        bad += len(problems)
    return 1 if bad else 0


def run_list(args: argparse.Namespace) -> int:
    from station.cli.passes import clock_now_s
    from station.orbit.catalog import Catalog, fixed_clock

    cfg = load_or_exit(args.config)
    now_s = clock_now_s(cfg)
    catalog = Catalog.from_config(cfg.orbit, fixed_clock(now_s))
    ages = {a.norad_id: a for a in catalog.ages()}
    for es in catalog:
        age = ages[es.norad_id]
        flag = "  STALE" if age.stale else ""
        print(f"{es.norad_id:>9}  {es.name:<28} epoch {es.epoch:%Y-%m-%dT%H:%M:%SZ}  "
              f"age {age.age_days:7.2f} d  {es.source}{flag}")
    report = catalog.last_report
    print(report.summary(), file=sys.stderr)
    for line in report.problems + [a.warning for a in ages.values() if a.warning]:
        print(f"warning: {line}", file=sys.stderr)
    return 0
