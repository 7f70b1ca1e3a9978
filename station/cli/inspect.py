"""``qkd-station inspect PASSFILE [--json]``: what a pass file holds and whether it is whole."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect", help="check a pass file: counts, time span, gaps, overflows, integrity",
        description="Read a pass file (Arrow IPC stream, docs/passfile.md) and print per-channel "
        "counts, time span, gaps, overflow periods, sequence continuity and integrity. "
        "Exit status 0 when the file is whole and continuous, 1 when it has problems, "
        "2 when it cannot be read.")
    p.add_argument("passfile", help="a .arrows pass file (the station's or a consumer's copy)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.events.inspection import inspect_pass_file

    try:
        report = inspect_pass_file(args.passfile)
    except OSError as exc:
        print(f"cannot read {args.passfile}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return 0 if report["integrity"]["ok"] else 1


def _text(r: dict[str, Any]) -> str:
    h, i, span = r["header"], r["integrity"], r["time_span"]
    lines = [
        f"pass file   {r['path']}",
        f"pass        {r['pass_id']}  {h.get('satellite', '')} (NORAD {h.get('norad_id', '?')}) "
        f"at {h.get('station_id', '?')}",
        f"tagger      {h.get('tagger_model', '?')}, {h.get('tagger_resolution_ps', '?')} ps; "
        f"clock {h.get('clock_source', '?')}; "
        f"qkd-station {h.get('software_version', '?')}",
        f"integrity   {'OK' if i['ok'] else 'PROBLEMS'}: {i['reason']}"
        + (f"; sidecar: {i['sidecar_state']}" if i["sidecar_state"] else "")
        + (f", outcome {i['outcome']}" if i["outcome"] else ""),
    ]
    lines += [f"            - {p}" for p in i["problems"]]
    lines.append(f"batches     {r['batches']}, events {r['events']:,}")
    lines.append(f"time span   {span['duration_s']:.6f} s tagger time "
                 f"({span['start_ps']} .. {span['end_ps']} ps)"
                 + (f", from {span['start_utc']}" if span["start_utc"] else ""))
    lines.append("channels    " + "  ".join(f"{k}: {v:,}" for k, v in r["counts_by_channel"].items()))
    seq = r["sequence"]
    lines.append(f"sequence    {seq['first_seq']} .. {seq['last_seq']}, "
                 + ("continuous" if seq["continuous"] else f"{len(seq['jumps'])} jumps: "
                    + ", ".join(f"{j['from_seq']}->{j['to_seq']}" for j in seq["jumps"][:10])))
    lines.append(f"gaps        {r['gap_count']}"
                 + "".join(f"\n            after batch {g['after_batch']}: {g['duration_s']:.6f} s"
                           for g in r["gaps"][:10]))
    ovf = r["overflow"]
    lines.append(f"overflow    {ovf['period_count']} periods, {ovf['missed_events']:,} events missed"
                 + "".join(f"\n            seq {p['first_seq']}..{p['last_seq']}: "
                           f"{p['duration_s']:.6f} s, {p['missed_events']:,} missed"
                           for p in ovf["periods"][:10]))
    loss = r.get("loss_record")
    if loss:
        lines.append(f"not recorded {loss['batches']:,} batches, {loss['events']:,} events "
                     "(loss record in the file)"
                     + "".join(f"\n            seq {x['first_seq']}..{x['last_seq']}: "
                               f"{x['batches']:,} batches, {x['events']:,} events, {x['reason']}"
                               for x in loss["ranges"][:10]))
    elif r["lost_batches"]:
        lines.append(f"not recorded {len(r['lost_batches'])} batches"
                     + "".join(f"\n            seq {x['tagger_seq']}: {x['n_events']:,} events, "
                               f"{x['reason']}" for x in r["lost_batches"][:10]))
    lines.append(f"events lost {r['events_lost']:,} (tagger overflow + not recorded)")
    return "\n".join(lines)
