"""``qkd-station relay-demo``: the seeds' experiment in simulation.

Two rooftops, one satellite, a key relayed 12,900 km, an image encrypted at one end and
decrypted at the other (Li et al., Nature 640, 47 (2025)):

1. rehearses the Beijing and the Stellenbosch pass of the synthetic Jinan-1-class
   satellite on the simulated clock at full speed (each station its own state directory,
   broker port and stream);
2. runs the simulated satellite and distils both passes over the authenticated channel;
3. relays: Beijing offers key for Stellenbosch, the satellite announces K_A ⊕ K_B,
   Stellenbosch recovers Beijing's key under Beijing's key IDs;
4. starts both stations' ETSI 014 KMEs (mutual TLS); as SAE ``beijing-app`` takes keys by
   ``enc_keys`` and one-time-pads a generated image; as SAE ``stellenbosch-app`` takes the
   same keys by ``dec_keys`` and decrypts, bit for bit;
5. prints key bits per pass, relayed, consumed and left, and writes the images.

Everything lives under ``--out`` (default ``var/relay-demo``), started afresh each run.
docs/relay.md explains every message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.cli._common import load_or_exit

if TYPE_CHECKING:
    from postprocessing.kme import KmeConfig
    from postprocessing.report import KeyReport
    from station.config import StationConfig

SATELLITE = "jinan1-sim"
SAE_A, SAE_B = "beijing-app", "stellenbosch-app"
# Candidate picture sizes, largest first: the largest the relayed key can pad is used.
SIZES = [(128, 96), (96, 72), (64, 48), (48, 36), (32, 24), (16, 12)]
MAX_PER_REQUEST = 128


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "relay-demo",
        help="two stations, one trusted-node satellite, an image one-time-padded across them",
        description="Rehearse Beijing's and Stellenbosch's passes, distil both keys with the "
        "simulated satellite, relay Beijing's key to Stellenbosch through it, and move an "
        "image encrypted with that key from one station's ETSI 014 KME to the other's.",
    )
    p.add_argument("--beijing", default="config/beijing-sim.toml", metavar="FILE")
    p.add_argument("--stellenbosch", default="config/stellenbosch-sim.toml", metavar="FILE")
    p.add_argument("--satellite", default="config/satellite-jinan1-sim.toml", metavar="FILE",
                   help="the simulated satellite's own config (its secret seed)")
    p.add_argument("--out", default="var/relay-demo", metavar="DIR",
                   help="everything the demo writes (removed and made afresh)")
    p.add_argument("--mqtt", metavar="HOST:PORT",
                   help="a broker the KMEs publish their key-store levels to (numbers only)")
    p.add_argument("--keep-passes", action="store_true",
                   help="reuse the pass files of an earlier run in --out (skip the rehearsals)")
    p.add_argument("--verbose", action="store_true", help="show the stations' own logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.daemon.app import tune_interpreter
    from station.log import setup_logging

    setup_logging("INFO" if args.verbose else "WARNING")
    if not args.verbose:
        # The relay's and KMEs' own lines are the story; the stations' are detail.
        for name in ("postprocessing.relay", "postprocessing.kme"):
            logging.getLogger(name).setLevel(logging.INFO)
    tune_interpreter()
    out = Path(args.out)
    _fresh(out, keep_passes=args.keep_passes)
    cfgs: dict[str, StationConfig] = {}
    for path in (args.beijing, args.stellenbosch):
        cfg = load_or_exit(path)
        cfg.state_dir = out / cfg.station_id
        # The demo distils from the pass file afterwards: no live stream consumer to check.
        cfg.operations.readiness.stream_consumer = "off"
        cfgs[cfg.station_id] = cfg
    try:
        mqtt = _parse_broker(args.mqtt) if args.mqtt else None
        return asyncio.run(demo(cfgs, Path(args.satellite), out, mqtt=mqtt))
    except DemoError as exc:
        print(f"relay-demo: {exc}", file=sys.stderr)
        return 1


class DemoError(Exception):
    pass


def _fresh(out: Path, *, keep_passes: bool) -> None:
    """Empty ``out`` (the demo's own directory), keeping ``*/passes/`` if asked."""
    if out.exists():
        for child in out.iterdir():
            passes = child / "passes"
            if keep_passes and passes.is_dir():
                for item in child.iterdir():
                    if item != passes:
                        shutil.rmtree(item) if item.is_dir() else item.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise DemoError(f"--mqtt {text!r}: give HOST:PORT")
    return host, int(port)


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class _Run:
    """What the demo's steps share: the stations, where to write, the satellite's endpoint."""

    cfgs: dict[str, StationConfig]
    out: Path
    mqtt: tuple[str, int] | None
    t0: float
    settings: dict[str, Any] = field(default_factory=dict)  # station -> GroundSettings
    endpoint: str = ""

    @property
    def a(self) -> str:  # Beijing, the offering station
        return list(self.cfgs)[0]

    @property
    def b(self) -> str:  # Stellenbosch, the receiving station
        return list(self.cfgs)[1]


async def demo(cfgs: dict[str, StationConfig], satellite_config: Path, out: Path, *,
               mqtt: tuple[str, int] | None = None) -> int:
    from postprocessing.keystore import KeyStore
    from postprocessing.relay import RelayNode
    from postprocessing.satellite.service import SatelliteService

    run = _Run(cfgs, out, mqtt, time.perf_counter())
    say("The seeds' experiment, in simulation: Beijing and Stellenbosch, 12,900 km apart, "
        "share a key through a trusted satellite.")
    say("  (the satellite is synthetic: a Jinan-1-class microsatellite, no public TLE; "
        "Beijing's position is approximate)\n")
    pass_files = await _rehearse_all(cfgs)
    sat_cfg = _satellite_setup(run, satellite_config)
    service = SatelliteService(sat_cfg)
    run.endpoint = service.bind("tcp://127.0.0.1:*")
    node = RelayNode(service.keystore, {s.name for s in sat_cfg.stations})
    node.install(service)
    stop = asyncio.Event()
    serving = asyncio.create_task(service.serve(stop), name="satellite")
    try:
        reports = await _distill_all(run, pass_files)
        stores = {name: KeyStore(run.settings[name].keystore_dir) for name in cfgs}
        try:
            got = await _relay(run, stores)
            delivered = await _deliver_image(run, stores, got.bits)
            _print_figures(run, stores, reports, got, delivered)
            return 0 if delivered.exact else 1
        finally:
            for s in stores.values():
                s.close()
    finally:
        stop.set()
        await serving
        service.close()


async def _rehearse_all(cfgs: dict[str, StationConfig]) -> dict[str, Path]:
    """[1] Both passes, rehearsed on the simulated clock at full speed (or kept)."""
    pass_files = {}
    for name, cfg in cfgs.items():
        kept = sorted((Path(cfg.state_dir) / "passes").glob("*.arrows"))
        if kept:
            pass_files[name] = kept[-1]
            say(f"[1] {name}: reusing the rehearsed pass {kept[-1].stem}")
            continue
        say(f"[1] {name}: rehearsing the night pass ({cfg.site.name}) ...")
        report = await _rehearse(cfg)
        pass_files[name] = Path(report.pass_file)
        say(f"    pass {report.pass_id}: {report.events_recorded:,} events recorded, "
            f"{report.events_lost} lost")
    return pass_files


def _satellite_setup(run: _Run, satellite_config: Path):  # type: ignore[no-untyped-def]
    """[2] The simulated satellite's config (its own secret and key store under ``out``)
    and each station's ground settings with fresh shared authentication pools."""
    from postprocessing.satellite.config import load_satellite_config
    from station.cli.keys import ground_settings, init_auth_pools

    sat_cfg = load_satellite_config(satellite_config)
    sat_cfg.state_dir = run.out / "satellite"
    for st in sat_cfg.stations:
        st.auth_pool = run.out / "satellite" / "auth" / f"{st.name}.json"
    missing = set(run.cfgs) - {s.name for s in sat_cfg.stations}
    if missing:
        raise DemoError(f"{satellite_config} lists no station {sorted(missing)}")
    for name, cfg in run.cfgs.items():
        s = ground_settings(cfg)
        rate = _rep_rate_hz(cfg)
        s = s.model_copy(update={"rep_rate_hz": rate[0], "sync_rate_hz": rate[1]})
        init_auth_pools(s.auth_pool, run.out / "satellite" / "auth" / f"{name}.json")
        run.settings[name] = s
    return sat_cfg


async def _distill_all(run: _Run, pass_files: dict[str, Path]) -> dict[str, KeyReport]:
    reports = {}
    for name in run.cfgs:
        say(f"[2] {name}: distilling the pass with the satellite over the authenticated "
            "channel ...")
        r = reports[name] = await _distill(pass_files[name], run.settings[name], run.endpoint)
        (run.out / name / "key-report.json").write_text(r.model_dump_json(indent=2) + "\n")
        say(f"    {r.sifted_bits:,} sifted bits, QBER {100 * (r.qber_overall or 0):.2f} %, "
            f"final key {r.final_bits:,} bits, {r.stored_bits:,} stored in "
            f"{r.key_blocks} blocks ({r.outcome}{': ' + r.reason if r.reason else ''})")
    return reports


async def _relay(run: _Run, stores: dict[str, Any]):  # type: ignore[no-untyped-def]
    """[3] A offers, the satellite announces K_A xor K_B to B, B recovers A's key. Each
    station's relay component reports its steps to its log and, with --mqtt, its
    transitions topic."""
    from postprocessing.auth import KeyPool
    from postprocessing.channel import SatelliteLink
    from postprocessing.relay import RelayError, RelayEvents, offer, receive

    a, b = run.a, run.b
    avail = {n: stores[n].level(SATELLITE).available_blocks for n in run.cfgs}
    blocks = min(avail.values())
    if blocks == 0:
        raise DemoError(f"no key to relay: {avail[a]} blocks at {a}, {avail[b]} at {b}")
    say(f"[3] relay: {a} offers {blocks} blocks of its satellite key for {b}; the satellite "
        f"announces K_A xor K_B to {b} ...")
    links = {n: SatelliteLink(run.endpoint, station=n, pool=KeyPool(run.settings[n].auth_pool),
                              timeout_s=60) for n in run.cfgs}
    events = {n: RelayEvents(n, mqtt=run.mqtt, topic_root=run.cfgs[n].mqtt.topic_root)
              for n in run.cfgs}
    try:
        async with events[a], events[b]:
            offered = await offer(links[a], stores[a], satellite=SATELLITE, partner=b,
                                  blocks=blocks, events=events[a])
            got = await receive(links[b], stores[b], satellite=SATELLITE, partner=a,
                                events=events[b])
    except RelayError as exc:
        raise DemoError(str(exc)) from None
    finally:
        for lk in links.values():
            lk.close()
            lk.pool.close()
    say(f"    {b} recovered {got.bits:,} bits of {a}'s key under {a}'s key IDs "
        f"({offered.bits:,} offered)")
    return got


@dataclass
class _Delivered:
    enc_keys: int
    dec_keys: int
    exact: bool
    img_dir: Path


async def _deliver_image(run: _Run, stores: dict[str, Any], relayed_bits: int) -> _Delivered:
    """[4] Both KMEs; SAE A one-time-pads a picture with keys from enc_keys, SAE B takes the
    same keys by dec_keys and decrypts it."""
    from postprocessing.kme import KmeServer
    from postprocessing.relay.image import draw_relay_picture

    a, b = run.a, run.b
    kme_cfgs = _kme_configs(run.cfgs, run.settings, run.out, run.mqtt)
    width, height = next(((w, h) for w, h in SIZES if w * h * 3 <= relayed_bits // 8), (0, 0))
    if not width:
        raise DemoError(f"{relayed_bits} relayed bits cannot pad even the smallest picture")
    picture = draw_relay_picture(width, height)
    async with KmeServer(kme_cfgs[a], stores[a]) as kme_a, \
            KmeServer(kme_cfgs[b], stores[b]) as kme_b:
        say(f"[4] KMEs: {kme_cfgs[a].kme_id} on https://127.0.0.1:{kme_a.port}, "
            f"{kme_cfgs[b].kme_id} on https://127.0.0.1:{kme_b.port} (ETSI GS QKD 014, mutual TLS)")
        img_dir = run.out / "images"
        img_dir.mkdir()
        cipher, key_ids = await _encrypt_at_a(kme_a.port, run.out / "tls", picture, img_dir)
        say(f"    {SAE_A}: took {len(key_ids)} keys ({len(key_ids) * 256:,} bits) by enc_keys, "
            f"one-time-padded a {width}x{height} picture ({picture.size:,} bytes)")
        n_dec, exact = await _decrypt_at_b(kme_b.port, run.out / "tls", picture, cipher,
                                           key_ids, img_dir)
        say(f"    {SAE_B}: took the same {n_dec} keys by dec_keys and decrypted: "
            f"{'bit-exact' if exact else 'MISMATCH'}")
    return _Delivered(len(key_ids), n_dec, exact, img_dir)


async def _encrypt_at_a(port: int, tls: Path, picture, img_dir: Path):  # type: ignore[no-untyped-def]
    """SAE A: keys by enc_keys, the picture one-time-padded; writes plain, encrypted and the
    message (shape and key IDs, public) that A's application sends B's."""
    import numpy as np

    from postprocessing.relay.image import one_time_pad, write_png

    plain = picture.tobytes()
    n_keys = -(-len(plain) // 32)
    enc = await _etsi(port, tls, SAE_A, f"{SAE_B}/enc_keys",
                      [{"number": min(MAX_PER_REQUEST, n_keys - i)}
                       for i in range(0, n_keys, MAX_PER_REQUEST)])
    pad = b"".join(k["key"] for k in enc)[: len(plain)]
    key_ids = [k["key_ID"] for k in enc]
    cipher = one_time_pad(plain, pad)
    write_png(img_dir / "beijing-plain.png", picture)
    write_png(img_dir / "encrypted.png", np.frombuffer(cipher, np.uint8).reshape(picture.shape))
    (img_dir / "message.json").write_text(json.dumps(
        {"shape": list(picture.shape), "key_IDs": key_ids}, indent=1) + "\n")
    return cipher, key_ids


async def _decrypt_at_b(port: int, tls: Path, picture, cipher: bytes, key_ids: list[str],
                        img_dir: Path) -> tuple[int, bool]:  # type: ignore[no-untyped-def]
    """SAE B: the same keys by dec_keys, the picture decrypted and compared bit for bit."""
    import numpy as np

    from postprocessing.relay.image import one_time_pad, write_png

    plain = picture.tobytes()
    dec = await _etsi(port, tls, SAE_B, f"{SAE_A}/dec_keys",
                      [{"key_IDs": [{"key_ID": k} for k in key_ids[i:i + MAX_PER_REQUEST]]}
                       for i in range(0, len(key_ids), MAX_PER_REQUEST)])
    decrypted = one_time_pad(cipher, b"".join(k["key"] for k in dec)[: len(plain)])
    write_png(img_dir / "stellenbosch-decrypted.png",
              np.frombuffer(decrypted, np.uint8).reshape(picture.shape))
    return len(dec), decrypted == plain and [k["key_ID"] for k in dec] == key_ids


def _print_figures(run: _Run, stores: dict[str, Any], reports: dict[str, KeyReport], got,
                   delivered: _Delivered) -> None:  # type: ignore[no-untyped-def]
    """[5] Key bits per pass, relayed, consumed and left."""
    a, b = run.a, run.b
    say("\nKey bits")
    say(f"  {'':<18}{'pass':<26}{'sifted':>11}{'QBER':>8}{'final':>11}{'stored':>11}")
    for n, r in reports.items():
        say(f"  {n:<18}{r.pass_id:<26}{r.sifted_bits:>11,}{100 * (r.qber_overall or 0):>7.2f}%"
            f"{r.final_bits:>11,}{r.stored_bits:>11,}")
    say(f"  relayed {a} -> {b}: {got.bits:,} bits ({got.blocks} blocks); {b} spent as "
        f"many of its own as the pad")
    say(f"  consumed by the SAEs: {delivered.enc_keys * 256:,} bits at {a} (enc_keys), "
        f"{delivered.dec_keys * 256:,} at {b} (dec_keys)")
    for n, store in stores.items():
        left = ", ".join(f"{lv.peer}: {lv.available_bits:,}" for lv in store.levels()
                         if not lv.peer.startswith("relay"))
        say(f"  left at {n:<17} {left}")
    say(f"\nImages: {delivered.img_dir}/beijing-plain.png, encrypted.png, "
        f"stellenbosch-decrypted.png ({time.perf_counter() - run.t0:.0f} s in all)")


async def _rehearse(cfg: StationConfig):  # type: ignore[no-untyped-def]
    from station.cli.rehearse import rehearse

    report = await rehearse(cfg, pass_id=None, speed=float("inf"), measure_qber=False)
    if report is None or report.outcome.value != "completed" or not report.pass_file:
        raise DemoError(f"{cfg.station_id}: the rehearsal did not complete a pass "
                        f"({report.outcome.value if report else 'no pass scheduled'})")
    return report


async def _distill(path: Path, settings, endpoint: str) -> KeyReport:  # type: ignore[no-untyped-def]
    from postprocessing.channel import ChannelError
    from postprocessing.ground import PassAborted, distill_pass_file

    s = settings.model_copy(update={"satellite_endpoint": endpoint})
    try:
        return await distill_pass_file(path, s)
    except PassAborted as exc:
        raise DemoError(f"{settings.station}: the pass's key was discarded: {exc}") from None
    except ChannelError as exc:
        raise DemoError(f"{settings.station}: distillation failed: {exc}") from None


def _rep_rate_hz(cfg: StationConfig) -> tuple[float, float]:
    """The simulated source's pulse and sync rates (the preset's, or the configured)."""
    from drivers.timetagger.sim import SimOptions

    opts = SimOptions.model_validate(cfg.timetagger.options)
    return opts.rep_rate_hz, opts.sync_rate_hz


def _kme_configs(cfgs, settings, out: Path, mqtt: tuple[str, int] | None) -> dict[str, KmeConfig]:
    """TLS material (one demo CA) and a KME config per station, written under ``out``."""
    from postprocessing.kme import KmeConfig
    from postprocessing.kme.config import dump_kme_config
    from postprocessing.kme.pki import CertificateAuthority

    a, b = list(cfgs)
    tls = out / "tls"
    tls.mkdir(mode=0o700)
    ca = CertificateAuthority("relay-demo-ca")
    ca_file = ca.write_cert(tls / "ca.crt")
    apps = {a: ca.issue(SAE_A, tls), b: ca.issue(SAE_B, tls)}
    link = {"master_sae_id": SAE_A, "slave_sae_id": SAE_B}
    out_cfgs = {}
    for n, peer, extra in ((a, b, {"target_kme_id": f"{b}-kme"}),
                           (b, a, {"source_kme_id": f"{a}-kme"})):
        server = ca.issue(f"{n}-kme", tls, server=True)
        sae = SAE_A if n == a else SAE_B
        cfg = KmeConfig.model_validate({
            "kme_id": f"{n}-kme", "port": 0, "store_dir": settings[n].keystore_dir,
            "tls": {"certificate": server.cert, "private_key": server.key, "client_ca": ca_file},
            "saes": [{"sae_id": sae, "certificate_sha256": apps[n].sha256}],
            "links": [{**link, "peer": peer, **extra}],
            "mqtt": None if mqtt is None else {
                "host": mqtt[0], "port": mqtt[1], "topic_root": cfgs[n].mqtt.topic_root,
                "station_id": n, "peers": [SATELLITE, peer], "low_store_bits": 4096}})
        (out / f"{n}-kme.toml").write_text(dump_kme_config(cfg))
        out_cfgs[n] = cfg
    return out_cfgs


async def _etsi(port: int, tls: Path, sae: str, path: str,
                bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST each body to ``/api/v1/keys/<path>`` as ``sae``; the keys, base64-decoded."""
    import base64

    import aiohttp

    ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    ctx.load_cert_chain(tls / f"{sae}.crt", tls / f"{sae}.key")
    keys = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        for body in bodies:
            async with http.post(f"https://127.0.0.1:{port}/api/v1/keys/{path}", json=body) as r:
                data = await r.json()
                if r.status != 200:
                    raise DemoError(f"{sae}: {path}: HTTP {r.status}: {data.get('message')}")
            keys += [{"key_ID": k["key_ID"], "key": base64.b64decode(k["key"])}
                     for k in data["keys"]]
    return keys

