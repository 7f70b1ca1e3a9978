"""ETSI GS QKD 014 key delivery speed: enc_keys + dec_keys over mutual TLS.

    .venv/bin/python bench/key_delivery.py [--clients 32] [--pairs 2000] [--key-bits 256]

Makes a CA, the KME's certificate and two SAE certificates, fills a fresh key store,
starts ``qkd-station kme`` in a process of its own, then runs ``--clients`` concurrent
clients (aiohttp, one keep-alive TLS connection per SAE per client). Each client loops: the
master SAE takes one key by POST enc_keys, the slave SAE takes it by POST dec_keys and the
bytes are compared. Every request is a durable (fsynced) key-store transaction. Prints
requests/s, latency percentiles and the ratios to the targets (>= 500 req/s, p99 < 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3200, help="enc_keys+dec_keys pairs in all")
    ap.add_argument("--key-bits", type=int, default=256)
    ap.add_argument("--kme-workers", type=int, default=1,
                    help="KME processes sharing the port and the store (qkd-station kme --workers)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-kme-") as tmp:
        d = Path(tmp)
        ca = CertificateAuthority("bench-ca")
        ca_file = ca.write_cert(d / "ca.crt")
        server, master, slave = (ca.issue("kme-bench", d, server=True), ca.issue("sae-a", d),
                                 ca.issue("sae-b", d))
        n_blocks = args.pairs + args.clients
        with KeyStore(d / "keys") as store:
            bits = np.random.default_rng(1).integers(0, 2, n_blocks * 256, dtype=np.uint8)
            store.deposit("bench-peer", "bench-pass", bits)
        port = free_port()
        config = KmeConfig.model_validate({
            "kme_id": "kme-bench", "port": port, "store_dir": d / "keys",
            "tls": {"certificate": server.cert, "private_key": server.key, "client_ca": ca_file},
            "saes": [{"sae_id": "sae-a", "certificate_sha256": master.sha256},
                     {"sae_id": "sae-b", "certificate_sha256": slave.sha256}],
            "links": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", "peer": "bench-peer"}],
        })
        (d / "kme.toml").write_text(dump_kme_config(config))
        proc = subprocess.Popen(
            # BENCH_KME_PREFIX="-m cProfile -o kme.prof" profiles the KME process.
            [sys.executable, *os.environ.get("BENCH_KME_PREFIX", "").split(), "-m", "station",
             "kme", "--config", str(d / "kme.toml"), "--log-level", "WARNING",
             "--workers", str(args.kme_workers)],
            stdout=subprocess.PIPE, cwd=REPO,
        )
        try:
            line = proc.stdout.readline().decode()
            if "listening" not in line:
                print(f"the KME did not start: {line!r}", file=sys.stderr)
                return 1
            lat, wall_s, mismatches, handshake_s = asyncio.run(run_clients(
                port, ca_file, master, slave, args.clients, args.pairs, args.key_bits))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = 0
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    lat_ms = np.array(lat) * 1e3
    rps = len(lat) / wall_s
    p50, p99, pmax = np.percentile(lat_ms, 50), np.percentile(lat_ms, 99), lat_ms.max()
    print(f"ETSI 014 over mutual TLS: {args.clients} concurrent clients, {args.key_bits}-bit keys,"
          f" {len(lat)} requests ({len(lat) // 2} enc_keys + dec_keys pairs) in {wall_s:.2f} s"
          f" (cores: {os.cpu_count()}, KME processes: {args.kme_workers})")
    print(f"  {2 * args.clients} mutual-TLS connections opened first in {handshake_s:.2f} s "
          "(keep-alive; handshakes not in the figures below)")
    print(f"  throughput   {rps:8.0f} requests/s   target >= {TARGET_RPS:.0f}   "
          f"ratio {rps / TARGET_RPS:.2f}")
    print(f"  latency p99  {p99:8.1f} ms         target <  {TARGET_P99_MS:.0f} ms  "
          f"ratio {TARGET_P99_MS / p99:.2f} (target/measured)")
    print(f"  latency p50  {p50:8.1f} ms, max {pmax:.1f} ms; key mismatches: {mismatches}")
    n = len(lat)
    print(f"  CPU per request: KME {1e3 * (usage.ru_utime + usage.ru_stime) / n:.2f} ms"
          f"{' (first process only)' if args.kme_workers > 1 else ''}, "
          f"clients {1e3 * (own.ru_utime + own.ru_stime) / n:.2f} ms")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
