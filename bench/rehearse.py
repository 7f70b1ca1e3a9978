"""Benchmark: the Micius 2016-12-19 pass rehearsed end to end at maximum simulated speed.

Runs the real pass state machine (readiness, slew, 20 Hz tracking, simulated downlink,
pass file, stream server, park) on an autojump clock and prints simulated seconds per
wall second (target ≥ 20) and the process's peak memory (target < 500 MB).

    .venv/bin/python bench/rehearse.py [--config config/sim.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from station.cli.rehearse import rehearse  # noqa: E402
from station.config import load_config  # noqa: E402

MICIUS_PASS = "41731-20161219T164844Z"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "sim.toml"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, overrides={
            "state_dir": tmp, "events": {"stream_endpoint": "tcp://127.0.0.1:0"}})
        t0_wall, t0_cpu = time.perf_counter(), time.process_time()
        # The whole rehearsal, the simulator's QBER sifting of the recorded pass included.
        report = asyncio.run(rehearse(cfg, pass_id=MICIUS_PASS, speed=float("inf")))
        wall_s, cpu_s = time.perf_counter() - t0_wall, time.process_time() - t0_cpu
    if report is None:
        print("the Micius pass was not found")
        return 1
    times = report.phase_times
    simulated_s = (times["end"] - times["prepare"]).total_seconds()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rms = report.tracking.rms_sky_error_arcsec if report.tracking else float("nan")
    print(f"pass {report.pass_id}: {report.outcome.value}, {report.events_recorded:,} events "
          f"recorded, tracking RMS {rms:.1f}\", QBER {100 * (report.qber_measured or 0):.2f} %")
    print(f"simulated {simulated_s:.0f} s (prepare → idle) in {wall_s:.1f} s wall, {cpu_s:.1f} s CPU")
    print(f"simulated seconds per wall second: {simulated_s / wall_s:.1f}   (target >= 20)")
    print(f"simulated seconds per CPU second:  {simulated_s / cpu_s:.1f}")
    print(f"peak memory (max RSS): {peak_mb:.0f} MB   (target < 500 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
