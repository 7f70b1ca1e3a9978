"""Benchmark: post-processing figures for the issue's targets, printed with ratios.

1. error correction (bench/pp_reconciliation.py): sifted bits/s and f at QBER 1, 2, 4 %
   (targets ≥ 1 Mbit/s, f ≤ 1.2), for Cascade (the default) and then LDPC;
2. privacy amplification (bench/pp_amplification.py): Mbit/s at 10⁶ and 10⁷ bits (≥ 20);
3. the Micius pass end to end: a rehearsal at max speed records the pass file, the simulated
   satellite runs in its own process, the ground distils the pass; printed: the time from
   the end of the stream (last batch fed) to the final key (target ≤ 10 s), the whole
   distillation's time against the pass's 273 s (< 1: it keeps pace live), and the key
   report beside Liao et al. 2017.

    .venv/bin/python bench/postprocessing.py [--skip-stages] [--pass-file F.arrows]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PASS_S = 273.0


def _stage_bench(name: str, *args: str) -> None:
    path = REPO / "bench" / name
    if not path.exists():
        print(f"({name} not present: skipped)")
        return
    print(f"── {name} {' '.join(args)}".rstrip())
    subprocess.run([sys.executable, str(path), *args], cwd=REPO, check=False)


def _station_toml(tmp: Path, satellite_endpoint: str) -> Path:
    from tests.conftest import free_port

    text = (REPO / "config/sim.toml").read_text()
    text = re.sub(r'^state_dir = .*$', f'state_dir = "{tmp / "state"}"', text, flags=re.M)
    text = re.sub(r'^port = 18830', f"port = {free_port()}", text, flags=re.M)
    text = re.sub(r'^embedded = true\ntopic_root', 'embedded = false\ntopic_root', text, flags=re.M)
    text = text.replace('element_sources = ["elements"]', f'element_sources = ["{REPO / "config/elements"}"]')
    text = text.replace("tcp://127.0.0.1:5560", f"tcp://127.0.0.1:{free_port()}")
    text = text.replace("embedded = true\nsatellite_config", "embedded = false\nsatellite_config")
    text = text.replace('satellite_config = "satellite-sim.toml"', f'satellite_config = "{REPO / "config/satellite-sim.toml"}"')
    text = text.replace('satellite_endpoint = "tcp://127.0.0.1:5570"', f'satellite_endpoint = "{satellite_endpoint}"')
    path = tmp / "station.toml"
    path.write_text(text)
    return path


def micius_end_to_end(pass_file: Path | None) -> None:
    from postprocessing.ground import PassAborted, distill_pass_file
    from postprocessing.report import PAPER_MICIUS
    from station.cli.keys import ground_settings, satellite_command
    from station.cli.rehearse import rehearse
    from station.config import load_config

    with tempfile.TemporaryDirectory(prefix="bench-pp-") as tmp_s:
        tmp = Path(tmp_s)
        cfg = load_config(_station_toml(tmp, "tcp://127.0.0.1:1"))
        if pass_file is None:
            t0 = time.perf_counter()
            report = asyncio.run(rehearse(cfg, pass_id=None, speed=float("inf"), measure_qber=False))
            assert report is not None and report.pass_file
            pass_file = Path(report.pass_file)
            print(f"rehearsal (pass file): {time.perf_counter() - t0:.1f} s")
        sat_cfg = REPO / "config/satellite-sim.toml"
        settings = ground_settings(cfg)
        proc = subprocess.Popen(satellite_command(sat_cfg, "--endpoint", "tcp://127.0.0.1:0",
                                                  "--state-dir", str(tmp / "satellite"),
                                                  "--pool-dir", str(tmp / "satellite" / "auth"),
                                                  "--provision", f"{cfg.station_id}={settings.auth_pool}"),
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            endpoint = line.split(" on ", 1)[1].strip()
            settings = ground_settings(cfg, satellite_endpoint=endpoint)
            t0 = time.perf_counter()
            try:
                key = asyncio.run(distill_pass_file(pass_file, settings))
            except PassAborted as exc:
                key = exc.report
            total = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(10)
    print(key.summary(paper=PAPER_MICIUS))
    eos = key.end_of_stream_to_key_s or float("nan")
    print(f"end of stream → final key   {eos:8.2f} s   target ≤ 10 s   ratio {eos / 10:.2f}")
    print(f"whole pass distilled in     {total:8.1f} s   pass {PASS_S:.0f} s     ratio {total / PASS_S:.2f} "
          "(< 1: sifting and EC keep pace live)")
    print(f"final key vs Liao           {key.final_bits:8,} / {PAPER_MICIUS['final_bits']:,}  ratio "
          f"{key.final_bits / PAPER_MICIUS['final_bits']:.3f} (band 0.85–1.15)")
    print(f"sifted vs Liao              {key.sifted_bits:8,} / {PAPER_MICIUS['sifted_bits']:,}  ratio "
          f"{key.sifted_bits / PAPER_MICIUS['sifted_bits']:.3f} (band 0.90–1.10)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-stages", action="store_true", help="only the Micius end-to-end run")
    ap.add_argument("--pass-file", type=Path, help="use this pass file instead of rehearsing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_stages:
        _stage_bench("pp_reconciliation.py", "--cascade")   # the default EC (ec_method)
        _stage_bench("pp_reconciliation.py")                # LDPC, the alternative
        _stage_bench("pp_amplification.py")
    print("── Micius pass end to end")
    micius_end_to_end(args.pass_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
