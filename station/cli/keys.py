"""``qkd-station keys …``: distil keys, run the simulated satellite, list and show keys.

- ``keys distill PASSFILE | --connect EP [--pass ID] [--report R.json]``: the ground's
  post-processing of one recorded pass, or live from the station's event stream (follow
  mode without ``--pass``); the key report is printed, written and published on MQTT.
- ``keys satellite --satellite-config S``: the simulated satellite (Alice), its own process.
- ``keys init-auth``: make the pre-shared authentication pool, one copy for the ground
  (``[keys]``) and one for the satellite (its config's ``[[stations]]`` entry).
- ``keys list`` / ``keys show ID``: the ground's key store, metadata only.

The ground side never reads the satellite's config: ``init-auth`` and the daemon's
embedded mode only learn the satellite's pool path and endpoint from it, never the seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from station.cli._common import add_config_argument, load_or_exit

if TYPE_CHECKING:
    from postprocessing.ground import GroundSettings
    from postprocessing.report import KeyReport
    from station.config import StationConfig

log = logging.getLogger("station.keys")
DEFAULT_POOL_BITS = 256 + 256 * 1024  # ~1000 messages each way before the first replenishment


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="post-processing: distil keys, the simulated satellite, key store")
    sub = p.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")

    d = sub.add_parser("distill", help="distil one pass file, or live from the event stream")
    add_config_argument(d)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("passfile", nargs="?", type=Path, help="a pass file (.arrows)")
    src.add_argument("--connect", metavar="EP", help="the station's event stream, e.g. tcp://127.0.0.1:5560")
    d.add_argument("--pass", dest="pass_id", help="with --connect: this pass only (default: follow)")
    d.add_argument("--max-passes", type=int, default=None, help="with --connect: stop after N passes")
    d.add_argument("--report", type=Path, metavar="R.json", help="write the key report here")
    d.add_argument("--satellite", metavar="EP", help="the satellite's endpoint (default: [keys])")
    d.add_argument("--no-mqtt", action="store_true", help="do not publish the report on MQTT")
    d.set_defaults(func=_distill)

    s = sub.add_parser("satellite", help="run the simulated satellite (Alice)")
    s.add_argument("--satellite-config", "-s", type=Path, default=Path("config/satellite-sim.toml"),
                   help="the satellite's own config (default: config/satellite-sim.toml)")
    s.add_argument("--endpoint", help="bind here instead (tcp://127.0.0.1:0: a free port, printed)")
    s.add_argument("--state-dir", type=Path, help="key store and state here instead")
    s.add_argument("--pool-dir", type=Path, help="the stations' pools are POOL_DIR/<station>.json instead")
    s.add_argument("--provision", action="append", default=[], metavar="STATION=GROUND_POOL",
                   help="make the pre-shared pool for STATION if neither copy exists: the "
                        "satellite's copy per its config, the ground's at GROUND_POOL (the "
                        "simulation's stand-in for installing it by hand)")
    s.add_argument("--provision-only", action="store_true", help="provision, then exit")
    s.add_argument("--provision-bits", type=int, default=DEFAULT_POOL_BITS, help="pool size in bits")
    s.set_defaults(func=_satellite)

    i = sub.add_parser("init-auth", help="make the pre-shared authentication pool for both ends")
    add_config_argument(i)
    i.add_argument("--satellite-config", "-s", type=Path, default=None,
                   help="the satellite's config (default: [keys] satellite_config)")
    i.add_argument("--bits", type=int, default=DEFAULT_POOL_BITS, help="pool size in bits")
    i.set_defaults(func=_init_auth)

    ls = sub.add_parser("list", help="list the key store's blocks (metadata only)")
    add_config_argument(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    sh = sub.add_parser("show", help="one key block's metadata (never its bits)")
    add_config_argument(sh)
    sh.add_argument("key_id")
    sh.set_defaults(func=_show)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def ground_settings(cfg: StationConfig, *, satellite_endpoint: str | None = None) -> GroundSettings:
    """The ground pipeline's settings from the station config's ``[keys]``."""
    from postprocessing.estimation import SecurityParameters
    from postprocessing.ground import GroundSettings

    k = cfg.keys
    base = Path(cfg.state_dir) / k.dir
    return GroundSettings(
        station=cfg.station_id, satellite=k.satellite,
        satellite_endpoint=satellite_endpoint or k.satellite_endpoint,
        auth_pool=base / k.auth_pool, keystore_dir=base / "store", work_dir=base / "work",
        gate_ps=k.gate_ps, chunk_batches=k.chunk_batches, ec_method=k.ec_method,
        ec_segment_bits=k.ec_segment_bits, cascade_segment_bits=k.cascade_segment_bits,
        qber_prior=k.qber_prior, rep_rate_hz=k.rep_rate_hz, sync_rate_hz=k.sync_rate_hz,
        security=SecurityParameters(epsilon_sec=k.epsilon_sec, epsilon_cor=k.epsilon_cor))


def received_dir(cfg: StationConfig) -> Path:
    return Path(cfg.state_dir) / cfg.keys.dir / "received"


def _distill(args: argparse.Namespace) -> int:
    from station.log import setup_logging

    cfg = load_or_exit(args.config)
    setup_logging(cfg.log_level)
    settings = ground_settings(cfg, satellite_endpoint=args.satellite)
    if not settings.auth_pool.exists():
        print(f"no authentication pool at {settings.auth_pool}: run `qkd-station keys init-auth` "
              "first (it makes the ground's and the satellite's copies)", file=sys.stderr)
        return 2
    return asyncio.run(_distill_async(args, cfg, settings))


async def _distill_async(args: argparse.Namespace, cfg: StationConfig, settings: GroundSettings) -> int:
    from postprocessing.auth import KeyPool
    from postprocessing.channel import SatelliteLink
    from postprocessing.ground import PassAborted, distill_pass_file
    from postprocessing.ground.live import follow_stream
    from postprocessing.keystore import KeyStore
    from postprocessing.report import PAPER_MICIUS

    pool = KeyPool(settings.auth_pool)
    link = SatelliteLink(settings.satellite_endpoint, station=settings.station, pool=pool,
                         timeout_s=settings.timeout_s)
    store = KeyStore(settings.keystore_dir)
    worst = 0

    async def done(report: KeyReport) -> None:
        nonlocal worst
        print(report.summary(paper=PAPER_MICIUS if report.pass_id.startswith("41731-") else None), flush=True)
        if args.report:
            args.report.write_text(report.model_dump_json(indent=2) + "\n")
        if cfg.keys.publish_mqtt and not args.no_mqtt:
            await _publish(cfg, report)
        worst = max(worst, 1 if report.outcome == "aborted" else 0)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.passfile is not None:
            try:
                await done(await distill_pass_file(args.passfile, settings, link=link, keystore=store))
            except PassAborted as exc:
                await done(exc.report)
        else:
            await follow_stream(args.connect, settings, link, store, received_dir=received_dir(cfg),
                                pass_id=args.pass_id, stop=stop, max_passes=args.max_passes,
                                on_report=done)
    finally:
        link.close()
        pool.close()
        store.close()
    return worst


async def _publish(cfg: StationConfig, report: KeyReport) -> None:
    from postprocessing.report import publish_report

    m = cfg.mqtt
    try:
        async with asyncio.timeout(10):
            topic = await publish_report(report, host=m.host, port=m.port, topic_root=m.topic_root,
                                         station_id=cfg.station_id, username=m.username,
                                         password=m.resolved_password())
        log.info("key report published on %s", topic)
    except Exception as exc:  # the key is stored; a broker away must not lose the report
        log.warning("could not publish the key report on MQTT (%s:%s): %s", m.host, m.port, exc)


def _satellite(args: argparse.Namespace) -> int:
    from postprocessing.satellite.config import load_satellite_config
    from station.log import setup_logging

    setup_logging("INFO")
    try:
        cfg = load_satellite_config(args.satellite_config)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.endpoint:
        cfg.endpoint = args.endpoint
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.pool_dir:
        for st in cfg.stations:
            st.auth_pool = args.pool_dir / f"{st.name}.json"
    for item in args.provision:
        name, _, ground = item.partition("=")
        link = next((st for st in cfg.stations if st.name == name), None)
        if link is None or not ground:
            print(f"--provision {item!r}: give STATION=GROUND_POOL for a station of "
                  f"{args.satellite_config}", file=sys.stderr)
            return 2
        try:
            made = init_auth_pools(Path(ground), link.auth_pool, args.provision_bits)
        except Exception as exc:  # KeyPoolError, OSError, ValueError: all a clear refusal
            print(f"--provision {name}: {exc}", file=sys.stderr)
            return 1
        if made:
            print(f"provisioned {made} pre-shared bits for {name}: {ground} and {link.auth_pool}",
                  file=sys.stderr)
    if args.provision_only:
        return 0
    missing = [str(s.auth_pool) for s in cfg.stations if not s.auth_pool.exists()]
    if missing:
        print(f"no authentication pool at {', '.join(missing)}: run `qkd-station keys init-auth`",
              file=sys.stderr)
        return 2
    return asyncio.run(_serve_satellite(cfg))


async def _serve_satellite(cfg: object) -> int:
    from postprocessing.satellite.service import SatelliteService

    service = SatelliteService(cfg)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from postprocessing.relay import RelayNode

    # The trusted-node relay (kme): relay requests are answered by the same satellite.
    RelayNode(service.keystore, set(service.pools)).install(service)
    try:
        service.bind()
        print(f"satellite {service.cfg.name} on {service.server.bound_endpoint if service.server else '?'}",
              flush=True)
        await service.serve(stop)
    finally:
        service.close()
    return 0


def _init_auth(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    sat_path = args.satellite_config or cfg.keys.satellite_config
    if sat_path is None:
        print("no satellite config: give --satellite-config or set [keys] satellite_config", file=sys.stderr)
        return 2
    return provision_via_satellite(cfg, Path(sat_path), args.bits)


def satellite_command(satellite_config: Path, *extra: str) -> list[str]:
    """The command line of the simulated satellite's own process."""
    return [sys.executable, "-m", "station", "keys", "satellite", "-s", str(satellite_config), *extra]


def provision_via_satellite(cfg: StationConfig, satellite_config: Path, bits: int = DEFAULT_POOL_BITS) -> int:
    """Have the satellite's process make both copies of the pre-shared pool: the ground
    never opens the satellite's config (it holds the seed)."""
    import subprocess

    ground = ground_settings(cfg).auth_pool
    cmd = satellite_command(satellite_config, "--provision", f"{cfg.station_id}={ground}",
                            "--provision-bits", str(bits), "--provision-only")
    return subprocess.run(cmd, check=False).returncode


def init_auth_pools(ground_pool: Path, satellite_pool: Path, bits: int = DEFAULT_POOL_BITS) -> int:
    """Create both copies of a fresh pre-shared pool (OS entropy); 0 if both exist already.

    In the field the pre-shared bits are installed at both ends by hand; for the
    simulation this stands in for that courier."""
    import os

    import numpy as np

    from postprocessing.auth import KeyPool, KeyPoolError

    ground_pool.parent.mkdir(parents=True, exist_ok=True)
    satellite_pool.parent.mkdir(parents=True, exist_ok=True)
    if ground_pool.exists() and satellite_pool.exists():
        return 0
    if ground_pool.exists() or satellite_pool.exists():
        raise KeyPoolError(f"only one of {ground_pool} and {satellite_pool} exists: the two copies "
                           "would differ; remove it to start afresh")
    if bits < 512 or (bits - 256) % 256:
        raise ValueError(f"--bits must be 256 + a positive multiple of 256, got {bits}")
    raw = np.unpackbits(np.frombuffer(os.urandom(bits // 8), np.uint8))
    KeyPool.create(ground_pool, raw).close()
    KeyPool.create(satellite_pool, raw).close()
    return bits


def _store(cfg: StationConfig):  # type: ignore[no-untyped-def]
    from postprocessing.keystore import KeyStore

    return KeyStore(ground_settings(cfg).keystore_dir)


def _list(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    with _store(cfg) as store:
        blocks = store.list()
        if args.json:
            print(json.dumps([b.model_dump(mode="json") for b in blocks], indent=2))
            return 0
        for lvl in store.levels():
            print(f"{lvl.model_dump_json()}")
        for b in blocks:
            print(f"{b.key_id}  {b.peer:<14} {b.pass_id:<26} {b.size_bits:>5} bits  {b.state}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from postprocessing.keystore import KeyStoreError

    cfg = load_or_exit(args.config)
    with _store(cfg) as store:
        try:
            info = store.info(args.key_id)
        except (KeyStoreError, ValueError) as exc:
            print(f"keys show: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(info.model_dump(mode="json"), indent=2))
    return 0
