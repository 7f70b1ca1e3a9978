"""The trusted-node relay end to end: the satellite service, two stations, their KMEs.

Real peers throughout: the protocol owner's satellite service and ZeroMQ channel with
Wegman–Carter authentication from real pool files, each party's own key store, both
stations' KMEs over mutual TLS taken from by a third-party ETSI 014 client. The link keys
are deposited the way distillation deposits them (the same derived key IDs at both ends);
distillation itself is tested by the protocol owner.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio
from qkdsec.client import ETSI014Client
from qkdsec.client.errors import KMEHTTPError

from postprocessing.auth import KeyPool
from postprocessing.channel import SatelliteLink
from postprocessing.keystore import KeyStore, derive_key_ids
from postprocessing.kme import KmeConfig, KmeServer
from postprocessing.kme.pki import CertificateAuthority
from postprocessing.relay import RelayError, RelayNode, offer, receive
from postprocessing.relay.image import draw_relay_picture, one_time_pad, read_png, write_png
from postprocessing.satellite.config import SatelliteConfig, StationLink
from postprocessing.satellite.service import SatelliteService

SAT, A, B = "jinan1-sim", "beijing-sim", "stellenbosch-sim"
A_BLOCKS, B_BLOCKS, RELAYED = 40, 30, 24


def link_key(n_blocks: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n_blocks * 256, dtype=np.uint8)


class World:
    """Satellite (service + relay node + store) and two stations (store + pool)."""

    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(99)
        pools = {}
        for st in (A, B):
            bits = rng.integers(0, 2, 256 + 256 * 64, dtype=np.uint8)
            pools[st] = KeyPool.create(root / "sat" / f"pool-{st}.json", bits)
            KeyPool.create(root / st / "pool.json", bits).close()
        cfg = SatelliteConfig(
            name=SAT, seed=12345, endpoint="tcp://127.0.0.1:*", state_dir=root / "sat",
            stations=[StationLink(name=st, auth_pool=root / "sat" / f"pool-{st}.json")
                      for st in (A, B)])
        self.sat_store = KeyStore(root / "sat" / "keys")
        self.service = SatelliteService(cfg, pools=pools, keystore=self.sat_store)
        self.endpoint = self.service.bind("tcp://127.0.0.1:*")
        self.node = RelayNode(self.sat_store, {A, B})
        self.node.install(self.service)
        self.stores = {st: KeyStore(root / st / "keys") for st in (A, B)}
        # What distillation leaves behind: the same blocks, the same IDs, at both ends.
        self.keys = {A: link_key(A_BLOCKS, 1), B: link_key(B_BLOCKS, 2)}
        for st in (A, B):
            n = self.keys[st].size // 256
            ids = derive_key_ids(f"{SAT}/{st}", "pass-1", n)
            self.sat_store.deposit(st, "pass-1", self.keys[st], key_ids=ids)
            self.stores[st].deposit(SAT, "pass-1", self.keys[st], key_ids=ids)
        self.a_ids = derive_key_ids(f"{SAT}/{A}", "pass-1", A_BLOCKS)

    def link(self, station: str, endpoint: str | None = None) -> SatelliteLink:
        return SatelliteLink(endpoint or self.endpoint, station=station,
                             pool=KeyPool(self.root / station / "pool.json"), timeout_s=30)

    def close(self) -> None:
        self.service.close()
        for s in self.stores.values():
            s.close()


@pytest.fixture
async def world(tmp_path):
    w = World(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(w.service.serve(stop))
    yield w
    stop.set()
    await asyncio.wait_for(task, 30)
    w.close()


async def relay(world: World, blocks: int = RELAYED):
    la, lb = world.link(A), world.link(B)
    try:
        offered = await offer(la, world.stores[A], satellite=SAT, partner=B, blocks=blocks)
        got = await receive(lb, world.stores[B], satellite=SAT, partner=A)
    finally:
        for lk in (la, lb):
            lk.close()
            lk.pool.close()
    return offered, got


async def test_relayed_key_equals_the_key_beijing_distilled(world):
    offered, got = await relay(world)
    assert offered.blocks == got.blocks == RELAYED
    assert list(got.key_ids) == world.a_ids[:RELAYED] == list(offered.key_ids)
    # Stellenbosch now holds Beijing's key under Beijing's key IDs, for peer Beijing ...
    sb = world.stores[B]
    assert sb.level(A).available_blocks == RELAYED
    blocks = sb.take_ids(got.key_ids, peer=A, purpose="test")
    recovered = np.concatenate([b.bits() for b in blocks])
    assert np.array_equal(recovered, world.keys[A][: RELAYED * 256])
    # ... and spent the same number of its own satellite blocks as the one-time pad.
    assert sb.level(SAT).available_blocks == B_BLOCKS - RELAYED
    # Beijing's offered blocks are now its key with Stellenbosch, no longer with the satellite.
    sa = world.stores[A]
    assert sa.level(B).available_blocks == RELAYED
    assert sa.level(SAT).available_blocks == A_BLOCKS - RELAYED
    # The satellite erased both: nothing left to relay, nothing shared any more.
    sat = world.sat_store
    assert sat.level(B).available_blocks == B_BLOCKS - RELAYED
    assert sat.level(f"relay:{A}:{B}").available_blocks == 0
    assert sat.level(A).available_blocks == A_BLOCKS - RELAYED


async def test_relay_takes_no_more_than_both_links_hold(world):
    la, lb = world.link(A), world.link(B)
    try:
        await offer(la, world.stores[A], satellite=SAT, partner=B, blocks=35)  # B has 30
        got = await receive(lb, world.stores[B], satellite=SAT, partner=A)
        assert got.blocks == B_BLOCKS
        with pytest.raises(RelayError, match="no key to relay"):
            await receive(lb, world.stores[B], satellite=SAT, partner=A)
        with pytest.raises(RelayError, match="with itself"):
            await receive(lb, world.stores[B], satellite=SAT, partner=B)
        with pytest.raises(RelayError, match="more than|blocks shared"):
            await offer(la, world.stores[A], satellite=SAT, partner=B, blocks=10)  # 5 left
    finally:
        for lk in (la, lb):
            lk.close()
            lk.pool.close()


class Tamperer:
    """A man in the middle on the classical channel that flips one bit of the xor frame
    of every relay_reply passing through."""

    def __init__(self, upstream: str):
        self.ctx = zmq.asyncio.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.bind("tcp://127.0.0.1:*")
        self.endpoint = self.front.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.connect(upstream)
        self.flipped = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            ident, *frames = await self.front.recv_multipart()
            await self.back.send_multipart(frames)
            reply = await self.back.recv_multipart()
            if b'"type":"relay_reply"' in reply[0]:
                xor = bytearray(reply[1])
                xor[0] ^= 0x01
                reply[1] = bytes(xor)
                self.flipped += 1
            await self.front.send_multipart([ident, *reply])

    async def close(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


async def test_tampered_relay_announcement_is_refused_and_nothing_is_stored(world):
    la = world.link(A)
    await offer(la, world.stores[A], satellite=SAT, partner=B, blocks=RELAYED)
    la.close()
    la.pool.close()
    mitm = Tamperer(world.endpoint)
    lb = world.link(B, mitm.endpoint)
    try:
        with pytest.raises(RelayError, match="refused"):
            await receive(lb, world.stores[B], satellite=SAT, partner=A)
        assert mitm.flipped == 1
    finally:
        lb.close()
        lb.pool.close()
        await mitm.close()
    sb = world.stores[B]
    assert sb.level(A).available_blocks == 0  # nothing half-written
    assert sb.level(SAT).available_blocks == B_BLOCKS  # own pad blocks untouched


def _kme_config(name, d, ca_file, server, saes, link) -> KmeConfig:
    return KmeConfig.model_validate({
        "kme_id": f"{name}-kme", "port": 0, "store_dir": d,
        "tls": {"certificate": server.cert, "private_key": server.key, "client_ca": ca_file},
        "saes": saes, "links": [link]})


class ThreadedKme:
    def __init__(self, config: KmeConfig, store: KeyStore):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = KmeServer(config, store)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.port = self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


async def test_both_kmes_serve_the_relayed_key_under_the_same_ids_and_no_bits_leak(
        world, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    await relay(world)
    d = tmp_path / "pki"
    ca = CertificateAuthority("relay-ca")
    ca_file = ca.write_cert((d.mkdir() or d) / "ca.crt")
    sa_app, sb_app = ca.issue("beijing-app", d), ca.issue("stellenbosch-app", d)
    link = {"master_sae_id": "beijing-app", "slave_sae_id": "stellenbosch-app"}
    kme_a = ThreadedKme(_kme_config(
        "beijing", world.root / A / "keys", ca_file, ca.issue("beijing-kme", d, server=True),
        [{"sae_id": "beijing-app", "certificate_sha256": sa_app.sha256}],
        {**link, "peer": B, "target_kme_id": "stellenbosch-kme"}), world.stores[A])
    kme_b = ThreadedKme(_kme_config(
        "stellenbosch", world.root / B / "keys", ca_file,
        ca.issue("stellenbosch-kme", d, server=True),
        [{"sae_id": "stellenbosch-app", "certificate_sha256": sb_app.sha256}],
        {**link, "peer": A, "source_kme_id": "beijing-kme"}), world.stores[B])
    try:
        master = ETSI014Client(f"https://127.0.0.1:{kme_a.port}", verify=str(ca_file),
                               client_cert=(str(sa_app.cert), str(sa_app.key)))
        slave = ETSI014Client(f"https://127.0.0.1:{kme_b.port}", verify=str(ca_file),
                              client_cert=(str(sb_app.cert), str(sb_app.key)))
        status = await asyncio.to_thread(master.status, "stellenbosch-app")
        assert (status.source_kme_id, status.target_kme_id) == ("beijing-kme", "stellenbosch-kme")
        assert status.stored_key_count == RELAYED and status.min_key_size == 256
        keys = await asyncio.to_thread(master.get_enc_keys, "stellenbosch-app", number=4)
        got = await asyncio.to_thread(slave.get_dec_keys, "beijing-app",
                                      key_ids=[k.key_id for k in keys])
        assert [g.key for g in got] == [k.key for k in keys]
        expected = np.packbits(world.keys[A][: 4 * 256]).tobytes()
        assert b"".join(k.key for k in keys) == expected  # Beijing's distilled key
        assert [k.key_id for k in keys] == [str(i) for i in world.a_ids[:4]]
        # The demo's use: one-time-pad a picture with Beijing's keys, decrypt at Stellenbosch.
        picture = draw_relay_picture(16, 12)
        more = await asyncio.to_thread(master.get_enc_keys, "stellenbosch-app", number=18)
        pad = b"".join(k.key for k in more)
        cipher = one_time_pad(picture.tobytes(), pad)
        write_png(tmp_path / "encrypted.png", np.frombuffer(cipher, np.uint8).reshape(12, 16, 3))
        theirs = await asyncio.to_thread(slave.get_dec_keys, "beijing-app",
                                         key_ids=[k.key_id for k in more])
        plain = one_time_pad(read_png(tmp_path / "encrypted.png").tobytes(),
                             b"".join(k.key for k in theirs))
        assert plain == picture.tobytes() and cipher != plain
        with pytest.raises(KMEHTTPError):  # once only, at either end
            await asyncio.to_thread(slave.get_dec_keys, "beijing-app", key_ids=[keys[0].key_id])
        with pytest.raises(KMEHTTPError) as e:  # whole blocks across KMEs
            await asyncio.to_thread(master.get_enc_keys, "stellenbosch-app", size=128)
        assert e.value.status_code == 400
    finally:
        kme_a.stop()
        kme_b.stop()
    # No key bytes anywhere but the key stores (and the auth pools, which are key by design).
    secrets = [np.packbits(world.keys[st][i * 256:(i + 1) * 256]).tobytes()
               for st in (A, B) for i in range(len(world.keys[st]) // 256)]
    needles = [n for s in secrets for n in (s, s.hex().encode(), base64.b64encode(s))]
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert b"relay: received 24 blocks" in logs and b"enc_keys beijing-app" in logs
    for path in world.root.rglob("*"):
        if path.is_file() and "keys.sqlite3" not in path.name and "pool" not in path.name:
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), path
    assert not any(n in logs for n in needles)
