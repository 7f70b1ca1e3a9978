"""ETSI GS QKD 014 key delivery speed: enc_keys + dec_keys over mutual TLS.

    .venv/bin/python bench/key_delivery.py [--clients 32] [--pairs 3200] [--key-bits 256]
        [--setups asyncio:1,uvloop:1,asyncio:2]

Makes a CA, the KME's certificate and two SAE certificates. For each setup (the KME's
event loop and its number of worker processes) it fills a fresh key store, starts
``qkd-station kme`` in a process of its own (the clients run in this process, so they do
not share the KME's core or GIL), then runs ``--clients`` concurrent clients (aiohttp,
one keep-alive TLS connection per SAE per client, handshakes before the clock starts).
Each client loops: the master SAE takes one key by POST enc_keys, the slave SAE takes it
by POST dec_keys and the bytes are compared. Every request is durable (fsynced) before its
answer; the KME group-commits concurrent requests (one transaction and fsync for all
waiting). Prints, per setup side by side, requests/s, p50/p99 latency and the ratios to
the targets (>= 500 req/s, p99 < 50 ms), and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from postprocessing.keystore import KeyStore  # noqa: E402
from postprocessing.kme.config import KmeConfig, dump_kme_config  # noqa: E402
from postprocessing.kme.pki import CertificateAuthority  # noqa: E402

TARGET_RPS = 500.0
TARGET_P99_MS = 50.0
# uvloop is an optional extra (pip install .[uvloop]): compare with it when installed.
DEFAULT_SETUPS = ("asyncio:1,uvloop:1,asyncio:2" if importlib.util.find_spec("uvloop")
                  else "asyncio:1,asyncio:2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_clients(port: int, ca: Path, master, slave, clients: int, pairs: int,
                      key_bits: int) -> tuple[list[float], float, int]:
    def ctx(who) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(ca))
        c.load_cert_chain(who.cert, who.key)
        return c

    base = f"https://127.0.0.1:{port}/api/v1/keys"
    latencies: list[float] = []
    mismatches = 0
    per_client = pairs // clients

    ready = asyncio.Barrier(clients + 1)
    go = asyncio.Event()
    # (the barrier counts the clients and the starter)

    async def client() -> None:
        nonlocal mismatches
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx(master), limit=1)) as ms, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx(slave), limit=1)) as ss:
            # Open both keep-alive connections (TLS handshakes) before the clock starts.
            for s in (ms, ss):
                async with s.get(f"https://127.0.0.1:{port}/") as r:  # a 404, no key
                    await r.read()
            await ready.wait()
            await go.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                async with ms.post(f"{base}/sae-b/enc_keys",
                                   json={"number": 1, "size": key_bits}) as r:
                    r.raise_for_status()
                    enc = await r.json()
                t1 = time.perf_counter()
                kid = enc["keys"][0]["key_ID"]
                async with ss.post(f"{base}/sae-a/dec_keys",
                                   json={"key_IDs": [{"key_ID": kid}]}) as r:
                    r.raise_for_status()
                    dec = await r.json()
                t2 = time.perf_counter()
                latencies.extend((t1 - t0, t2 - t1))
                if dec["keys"][0]["key"] != enc["keys"][0]["key"]:
                    mismatches += 1

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    t_hs = time.perf_counter()
    await ready.wait()
    handshake_s = time.perf_counter() - t_hs
    t_start = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - t_start, mismatches, handshake_s


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_setup(d: Path, pki: dict, args: argparse.Namespace, loop: str, workers: int) -> dict:
    """One KME run with ``loop`` ("asyncio" or "uvloop") and ``workers`` processes."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{loop}-{workers}-", dir=d))
    n_blocks = args.pairs + args.clients
    with KeyStore(run_dir / "keys") as store:
        bits = np.random.default_rng(1).integers(0, 2, n_blocks * 256, dtype=np.uint8)
        store.deposit("bench-peer", "bench-pass", bits)
    port = free_port()
    server, master, slave = pki["server"], pki["master"], pki["slave"]
    config = KmeConfig.model_validate({
        "kme_id": "kme-bench", "port": port, "store_dir": run_dir / "keys",
        "tls": {"certificate": server.cert, "private_key": server.key,
                "client_ca": pki["ca_file"]},
        "saes": [{"sae_id": "sae-a", "certificate_sha256": master.sha256},
                 {"sae_id": "sae-b", "certificate_sha256": slave.sha256}],
        "links": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", "peer": "bench-peer"}],
    })
    (run_dir / "kme.toml").write_text(dump_kme_config(config))
    env = dict(os.environ, QKD_KME_LOOP=loop)
    proc = subprocess.Popen(
        # BENCH_KME_PREFIX="-m cProfile -o kme.prof" profiles the KME process.
        [sys.executable, *os.environ.get("BENCH_KME_PREFIX", "").split(), "-m", "station",
         "kme", "--config", str(run_dir / "kme.toml"), "--log-level", "WARNING",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, cwd=REPO, env=env,
    )
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        line = proc.stdout.readline().decode()
        if "listening" not in line:
            raise RuntimeError(f"the KME ({loop}, {workers}) did not start: {line!r}")
        startup_cpu_s = process_cpu_s(proc.pid)
        lat, wall_s, mismatches, handshake_s = asyncio.run(run_clients(
            port, pki["ca_file"], master, slave, args.clients, args.pairs, args.key_bits))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        proc.stdout.close()
    own = resource.getrusage(resource.RUSAGE_SELF)
    lat_ms = np.array(lat) * 1e3
    n = len(lat)
    return {
        "setup": f"{loop}, {workers} process{'es' if workers > 1 else ''}", "n": n,
        "wall_s": wall_s, "rps": n / wall_s, "handshake_s": handshake_s,
        "p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99)),
        "max": float(lat_ms.max()), "mismatches": mismatches,
        "kme_cpu_ms": 1e3 * (usage.ru_utime + usage.ru_stime - startup_cpu_s) / n,
        "client_cpu_ms": 1e3 * (own.ru_utime + own.ru_stime - own0.ru_utime - own0.ru_stime) / n,
        "workers": workers,
    }


def report(args: argparse.Namespace, results: list[dict], load: tuple) -> None:
    print(f"ETSI 014 over mutual TLS: {args.clients} concurrent clients, {args.key_bits}-bit keys,"
          f" {results[0]['n']} requests ({results[0]['n'] // 2} enc_keys + dec_keys pairs) per "
          f"setup; cores: {os.cpu_count()}; load average before: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"  {2 * args.clients} keep-alive mutual-TLS connections opened before the clock "
          "starts in each setup (handshakes not in the figures)")
    print(f"  {'KME setup':<24} {'req/s':>7} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'ratio':>6} {'max ms':>7}  {'CPU/request KME, clients':<26} mismatches")
    for r in results:
        kme_note = "*" if r["workers"] > 1 else ""
        print(f"  {r['setup']:<24} {r['rps']:7.0f} {r['rps'] / TARGET_RPS:6.2f} {r['p50']:7.1f} "
              f"{r['p99']:7.1f} {TARGET_P99_MS / r['p99']:6.2f} {r['max']:7.1f}  "
              f"{r['kme_cpu_ms']:.2f}{kme_note} ms, {r['client_cpu_ms']:.2f} ms{'':<10} "
              f"{r['mismatches']}")
    print(f"  targets: >= {TARGET_RPS:.0f} requests/s (ratio = measured/target), p99 < "
          f"{TARGET_P99_MS:.0f} ms (ratio = target/measured); ratios >= 1 meet the target")
    if any(r["workers"] > 1 for r in results):
        print("  * the first KME process only (the workers' CPU is not counted)")
    print("  (KME CPU per request: from the KME's start-up to its exit, less the CPU it had "
          "used when it began listening)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3200,
                    help="enc_keys+dec_keys pairs in all, per setup")
    ap.add_argument("--key-bits", type=int, default=256)
    ap.add_argument("--setups", default=DEFAULT_SETUPS,
                    help="KME setups to measure side by side: LOOP:WORKERS,... "
                    "(LOOP asyncio or uvloop; WORKERS = qkd-station kme --workers)")
    args = ap.parse_args()
    setups = []
    for item in args.setups.split(","):
        loop, _, workers = item.partition(":")
        if loop not in ("asyncio", "uvloop") or not workers.isdigit():
            ap.error(f"--setups item {item!r}: give LOOP:WORKERS, LOOP asyncio or uvloop")
        if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            ap.error("uvloop is not installed (pip install .[uvloop])")
        setups.append((loop, int(workers)))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-kme-") as tmp:
        d = Path(tmp)
        ca = CertificateAuthority("bench-ca")
        pki = {"ca_file": ca.write_cert(d / "ca.crt"),
               "server": ca.issue("kme-bench", d, server=True),
               "master": ca.issue("sae-a", d), "slave": ca.issue("sae-b", d)}
        results = [run_setup(d, pki, args, loop, workers) for loop, workers in setups]
    report(args, results, load)
    return 0 if all(r["mismatches"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
