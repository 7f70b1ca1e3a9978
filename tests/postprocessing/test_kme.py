"""ETSI GS QKD 014 key delivery against two third-party clients from PyPI.

Real TLS: a CA, the KME's server certificate, two SAE client certificates, an unregistered
client certificate from the same CA and a rogue one (same CN, another CA), all made here
with ``cryptography``. Clients: ``etsi-qkd-014-client`` (QKD014Client) and ``qkdsec``'s
ETSI014Client. The KME runs in a thread with its own loop (the clients are blocking) or,
for the restart test, as ``qkd-station kme`` in a process of its own that is killed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from etsi_qkd_014_client import QKD014Client
from qkdsec.client import ETSI014Client
from qkdsec.client.errors import KMEHTTPError

from postprocessing.keystore import KeyStore
from postprocessing.kme import KmeConfig, KmeServer
from postprocessing.kme.config import dump_kme_config, load_kme_config
from postprocessing.kme.levels import LevelsMqttConfig
from postprocessing.kme.pki import CertificateAuthority, Issued

REPO = Path(__file__).resolve().parents[2]
PEER = "jinan1-sim"
N_BLOCKS = 12


@dataclass
class Pki:
    ca_file: Path
    server: Issued
    master: Issued      # SAE "sae-a", registered by fingerprint
    slave: Issued       # SAE "sae-b", registered by subject CN
    stranger: Issued    # same CA, not registered
    rogue: Issued       # CN "sae-a", signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority("qkd-test-ca")
    rogue_ca = CertificateAuthority("rogue-ca")
    return Pki(
        ca_file=ca.write_cert(d / "ca.crt"),
        server=ca.issue("kme-test", d, server=True),
        master=ca.issue("sae-a", d),
        slave=ca.issue("sae-b", d),
        stranger=ca.issue("sae-c", d),
        rogue=rogue_ca.issue("sae-a", d / "rogue"),
    )


def kme_config(pki: Pki, store_dir: Path, port: int = 0) -> KmeConfig:
    return KmeConfig.model_validate({
        "kme_id": "kme-test", "host": "127.0.0.1", "port": port, "store_dir": store_dir,
        "tls": {"certificate": pki.server.cert, "private_key": pki.server.key,
                "client_ca": pki.ca_file},
        "saes": [{"sae_id": "sae-a", "certificate_sha256": pki.master.sha256},
                 {"sae_id": "sae-b", "subject_cn": "sae-b"}],
        "links": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", "peer": PEER}],
        "max_key_per_request": 8,
    })


def seed_store(store_dir: Path, n_blocks: int = N_BLOCKS) -> dict[str, bytes]:
    """Deposit a pass key; the packed bytes of each block by key ID."""
    bits = np.random.default_rng(7).integers(0, 2, n_blocks * 256 + 100, dtype=np.uint8)
    with KeyStore(store_dir) as store:
        infos = store.deposit(PEER, "pass-1", bits)
    packed = np.packbits(bits[: n_blocks * 256]).tobytes()
    return {str(i.key_id): packed[k * 32:(k + 1) * 32] for k, i in enumerate(infos)}


class ThreadedKme:
    """A KmeServer on its own event loop in a thread (the clients under test block)."""

    def __init__(self, config: KmeConfig):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = KmeServer(config)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.port = self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def kme(pki, tmp_path):
    keys = seed_store(tmp_path / "keys")
    server = ThreadedKme(kme_config(pki, tmp_path / "keys"))
    server.keys = keys
    yield server
    server.stop()


def etsi_client(pki: Pki, who: Issued, port: int) -> QKD014Client:
    return QKD014Client(f"127.0.0.1:{port}", str(who.cert), str(who.key), str(pki.ca_file))


def qkdsec_client(pki: Pki, who: Issued, port: int) -> ETSI014Client:
    return ETSI014Client(f"https://127.0.0.1:{port}", client_cert=(str(who.cert), str(who.key)),
                         verify=str(pki.ca_file), timeout=30)


# -- status, enc_keys, dec_keys ------------------------------------------------------------

def test_status_reports_the_link_and_the_stored_keys(pki, kme):
    code, status = etsi_client(pki, pki.master, kme.port).get_status("sae-b")
    assert code == 200
    assert (status.source_kme_id, status.target_kme_id) == ("kme-test", "kme-test")
    assert (status.master_sae_id, status.slave_sae_id) == ("sae-a", "sae-b")
    assert status.key_size == 256 and status.stored_key_count == N_BLOCKS
    assert status.max_key_per_request == 8 and status.max_sae_id_count == 0
    s2 = qkdsec_client(pki, pki.master, kme.port).status("sae-b")
    assert s2.stored_key_count == N_BLOCKS and s2.min_key_size == 8 and s2.max_key_size == 256


def test_enc_keys_get_then_dec_keys_post_gives_the_stored_key_once(pki, kme):
    master = qkdsec_client(pki, pki.master, kme.port)
    slave = qkdsec_client(pki, pki.slave, kme.port)
    keys = master.get_enc_keys("sae-b", number=2, size=256, method="GET")
    assert len(keys) == 2
    for k in keys:
        assert k.key == kme.keys[k.key_id]  # the store's bits, packed big-endian
    got = slave.get_dec_keys("sae-a", key_ids=[k.key_id for k in keys])
    assert [g.key for g in got] == [k.key for k in keys]
    with pytest.raises(KMEHTTPError) as again:  # never twice
        slave.get_dec_keys("sae-a", key_ids=[keys[0].key_id])
    assert again.value.status_code == 400
    assert master.status("sae-b").stored_key_count == N_BLOCKS - 2


def test_enc_keys_post_and_dec_keys_get_with_the_other_client(pki, kme):
    master = etsi_client(pki, pki.master, kme.port)
    code, container = master.get_key("sae-b", number=3, size=128)
    assert code == 200 and len(container.keys) == 3
    key_ids = [k.key_id for k in container.keys]
    for k in container.keys:
        assert base64.b64decode(k.key) == kme.keys[k.key_id][:16]  # 128 bits: the first 16 bytes
    slave = etsi_client(pki, pki.slave, kme.port)
    code, dec = slave.get_key_with_key_IDs("sae-a", key_ids)
    assert code == 200 and [k.key for k in dec.keys] == [k.key for k in container.keys]
    # GET dec_keys (key_ID as query parameter) with qkdsec's session for the slave cert.
    code, more = master.get_key("sae-b", number=1, size=64)
    r = requests.get(f"https://127.0.0.1:{kme.port}/api/v1/keys/sae-a/dec_keys",
                     params={"key_ID": more.keys[0].key_id}, cert=(pki.slave.cert, pki.slave.key),
                     verify=pki.ca_file, timeout=30)
    assert r.status_code == 200
    assert base64.b64decode(r.json()["keys"][0]["key"]) == kme.keys[more.keys[0].key_id][:8]


def test_default_get_enc_keys_is_one_key_of_key_size(pki, kme):
    code, container = etsi_client(pki, pki.master, kme.port).get_key("sae-b")
    assert code == 200 and len(container.keys) == 1
    assert len(base64.b64decode(container.keys[0].key)) == 32


# -- refusals ------------------------------------------------------------------------------

def test_rogue_certificate_is_refused_at_the_handshake(pki, kme):
    client = qkdsec_client(pki, pki.rogue, kme.port)
    # Under TLS 1.3 the client learns of the refusal as an alert or a closed connection.
    refused = (requests.exceptions.SSLError, requests.exceptions.ConnectionError)
    with pytest.raises(refused):
        client.status("sae-b")
    with pytest.raises(refused):  # and no certificate at all
        requests.get(f"https://127.0.0.1:{kme.port}/api/v1/keys/sae-b/status",
                     verify=pki.ca_file, timeout=30)


def test_unregistered_certificate_gets_401_and_nothing(pki, kme):
    code, err = etsi_client(pki, pki.stranger, kme.port).get_status("sae-b")
    assert code == 401 and "not registered" in err.message
    code, err = etsi_client(pki, pki.stranger, kme.port).get_key("sae-b", number=1)
    assert code == 401
    code, err = etsi_client(pki, pki.stranger, kme.port).get_key_with_key_IDs(
        "sae-a", [next(iter(kme.keys))])
    assert code == 401
    assert qkdsec_client(pki, pki.master, kme.port).status("sae-b").stored_key_count == N_BLOCKS


def test_wrong_sae_cannot_take_keys(pki, kme):
    master = qkdsec_client(pki, pki.master, kme.port)
    slave = qkdsec_client(pki, pki.slave, kme.port)
    # The slave asks for enc_keys towards the master: no such link.
    with pytest.raises(KMEHTTPError) as e:
        slave.get_enc_keys("sae-a", number=1)
    assert e.value.status_code == 401
    keys = master.get_enc_keys("sae-b", number=1)
    # The master itself cannot dec_keys its own key (it is not the slave it was issued for).
    with pytest.raises(KMEHTTPError) as e:
        master.get_dec_keys("sae-a", key_ids=[keys[0].key_id])
    assert e.value.status_code == 401
    # The slave naming a wrong master gets nothing, and the key is still its to take.
    with pytest.raises(KMEHTTPError) as e:
        slave.get_dec_keys("sae-c", key_ids=[keys[0].key_id])
    assert e.value.status_code == 401
    assert slave.get_dec_keys("sae-a", key_ids=[keys[0].key_id])[0].key == keys[0].key


def test_unknown_and_unissued_key_ids_are_400(pki, kme):
    slave = etsi_client(pki, pki.slave, kme.port)
    code, err = slave.get_key_with_key_IDs("sae-a", ["00000000-0000-0000-0000-000000000000"])
    assert code == 400 and "not available" in err.message
    # A stored key the master never asked for is not the slave's to take.
    code, err = slave.get_key_with_key_IDs("sae-a", [next(iter(kme.keys))])
    assert code == 400
    code, err = slave.get_key_with_key_IDs("sae-a", ["not-a-uuid"])
    assert code == 400 and "UUID" in err.message


def test_more_keys_than_stored_or_allowed_per_request(pki, kme):
    master = qkdsec_client(pki, pki.master, kme.port)
    with pytest.raises(KMEHTTPError) as e:
        master.get_enc_keys("sae-b", number=9)  # max_key_per_request 8
    assert e.value.status_code == 400 and "max_key_per_request" in e.value.message
    master.get_enc_keys("sae-b", number=8)
    with pytest.raises(KMEHTTPError) as e:
        master.get_enc_keys("sae-b", number=5)  # 4 left
    assert e.value.status_code == 400 and "4 stored" in e.value.message
    assert master.status("sae-b").stored_key_count == 4  # a refused request takes nothing


@pytest.mark.parametrize("size", [1, 100, 257, 255])
def test_key_sizes_not_multiples_of_8_are_400(pki, kme, size):
    code, err = etsi_client(pki, pki.master, kme.port).get_key("sae-b", number=1, size=size)
    assert code == 400 and "multiple of 8" in err.message


def test_key_size_out_of_range_and_unsupported_options_are_400(pki, kme):
    master = etsi_client(pki, pki.master, kme.port)
    assert master.get_key("sae-b", number=1, size=512)[0] == 400
    with pytest.raises(KMEHTTPError) as e:  # (the other client drops a falsy size)
        qkdsec_client(pki, pki.master, kme.port).get_enc_keys("sae-b", number=1, size=0)
    assert e.value.status_code == 400
    code, err = master.get_key("sae-b", number=1, additional_slave_sae_ids=["sae-c"])
    assert code == 400 and "additional_slave_SAE_IDs" in err.message
    code, err = master.get_key("sae-b", number=1, extension_mandatory=[{"x": 1}])
    assert code == 400 and "mandatory" in err.message
    # Optional extensions may be ignored, never refused.
    code, _ = master.get_key("sae-b", number=1, extension_optional=[{"vendor": {"a": 1}}])
    assert code == 200


HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,                     # deep and over the size cap
    b'{"number": ' + b"[" * 5000 + b"]" * 5000 + b"}",     # deep, under the cap
    b'{"number": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}',
    b'{"number": "1"}', b'{"number": true}', b'{"number": 1.5}', b'{"size": null, "number": -1}',
    b'{"number": 1e999}', b'{"number": ' + b"9" * 5000 + b"}",
    b'{"number": 1, "size": 256, "surprise": 1}', b"[]", b'"text"', b"\xff\xfe", b"",
    b'{"additional_slave_SAE_IDs": "sae-b"}', b'{"number": 1' ,
]


def test_hostile_json_is_refused_with_400_and_the_kme_keeps_serving(pki, kme):
    base = f"https://127.0.0.1:{kme.port}/api/v1"
    session = requests.Session()

    def call(method: str, url: str, who: Issued, **kw) -> requests.Response:
        # verify per request: a session-level verify loses to REQUESTS_CA_BUNDLE
        return session.request(method, url, cert=(str(who.cert), str(who.key)),
                               verify=str(pki.ca_file), timeout=30, **kw)

    url = f"{base}/keys/sae-b/enc_keys"
    for body in HOSTILE:
        r = call("POST", url, pki.master, data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body[:40], r.status_code, r.text[:200])
        err = r.json()
        assert set(err) <= {"message", "details"} and err["message"]
    dec = f"{base}/keys/sae-a/dec_keys"
    for body in [b'{"key_IDs": []}', b'{"key_IDs": [{"key_ID": 5}]}', b'{"key_IDs": "x"}',
                 json.dumps({"key_IDs": [{"key_ID": "0" * 36}] * 100}).encode()]:
        r = call("POST", dec, pki.slave, data=body)
        assert r.status_code == 400, (body[:40], r.text[:200])
    for q in ["number=abc", "number=1&number=2", "size=" + "9" * 50, "number=-1"]:
        assert call("GET", url + "?" + q, pki.master).status_code == 400
    assert call("GET", f"{base}/keys/%00%0a/status", pki.master).status_code == 400
    r = call("GET", f"{base}/nothing", pki.master)
    assert r.status_code == 404 and r.json()["message"]
    # Nothing was taken; the service still answers.
    assert qkdsec_client(pki, pki.master, kme.port).status("sae-b").stored_key_count == N_BLOCKS


def test_errors_and_reprs_never_carry_key_bytes(pki, kme):
    master = qkdsec_client(pki, pki.master, kme.port)
    keys = master.get_enc_keys("sae-b", number=1)
    r = requests.post(f"https://127.0.0.1:{kme.port}/api/v1/keys/sae-a/dec_keys",
                      json={"key_IDs": [{"key_ID": keys[0].key_id}]},
                      cert=(pki.master.cert, pki.master.key), verify=pki.ca_file, timeout=30)
    assert r.status_code == 401
    b64 = base64.b64encode(keys[0].key).decode()
    assert b64 not in r.text and keys[0].key.hex() not in r.text


# -- durability across a restart -----------------------------------------------------------

class KmeProcess:
    """``qkd-station kme --config FILE`` in a process of its own."""

    def __init__(self, config_file: Path, log_file: Path):
        self.log = open(log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station", "kme", "--config", str(config_file)],
            stdout=subprocess.PIPE, stderr=self.log, cwd=REPO,
        )
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            self.stop()
            raise AssertionError(f"the KME did not start: {line!r}; log {log_file}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no clean shutdown: durability or nothing
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc.stdout.close()
        if not self.log.closed:
            self.log.close()


def test_restart_between_enc_and_dec_keys_delivers_once_never_twice(pki, tmp_path):
    from tests.conftest import free_port

    keys = seed_store(tmp_path / "keys")
    config_file = tmp_path / "kme.toml"
    config_file.write_text(dump_kme_config(kme_config(pki, tmp_path / "keys", free_port())))
    config = load_kme_config(config_file)
    first = KmeProcess(config_file, tmp_path / "kme.log")
    try:
        taken = qkdsec_client(pki, pki.master, config.port).get_enc_keys("sae-b", number=2,
                                                                          method="POST")
    finally:
        first.kill()
    second = KmeProcess(config_file, tmp_path / "kme.log")
    try:
        slave = qkdsec_client(pki, pki.slave, config.port)
        master = qkdsec_client(pki, pki.master, config.port)
        # The reserved keys are not offered again to the master after the restart ...
        again = master.get_enc_keys("sae-b", number=8)
        again += master.get_enc_keys("sae-b", number=N_BLOCKS - 10)
        assert master.status("sae-b").stored_key_count == 0
        assert not {k.key_id for k in again} & {k.key_id for k in taken}
        # ... the slave gets each exactly once, with the same bits ...
        got = slave.get_dec_keys("sae-a", key_ids=[k.key_id for k in taken])
        assert [g.key for g in got] == [k.key for k in taken] == [keys[k.key_id] for k in taken]
    finally:
        second.kill()
    third = KmeProcess(config_file, tmp_path / "kme.log")
    try:
        # ... and never twice, after another restart either.
        with pytest.raises(KMEHTTPError) as e:
            qkdsec_client(pki, pki.slave, config.port).get_dec_keys(
                "sae-a", key_ids=[taken[0].key_id])
        assert e.value.status_code == 400
    finally:
        third.stop()
    log_text = (tmp_path / "kme.log").read_bytes()
    for k in taken:
        assert base64.b64encode(k.key) not in log_text and k.key.hex().encode() not in log_text
    assert b"enc_keys sae-a -> sae-b" in log_text  # it does log, by key ID


def test_store_files_are_private(pki, kme, tmp_path):
    qkdsec_client(pki, pki.master, kme.port).get_enc_keys("sae-b", number=1)
    store_dir = tmp_path / "keys"
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    for f in store_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_plain_http_gets_no_answer(pki, kme):
    with pytest.raises(Exception):  # noqa: B017 - any failure: there is no plain-HTTP service
        urllib.request.urlopen(f"http://127.0.0.1:{kme.port}/api/v1/keys/sae-b/status",
                               timeout=10).read()


def test_two_worker_processes_share_the_store_and_never_hand_a_key_out_twice(pki, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import free_port

    n_blocks = 40
    keys = seed_store(tmp_path / "keys", n_blocks)
    config_file = tmp_path / "kme.toml"
    config_file.write_text(dump_kme_config(kme_config(pki, tmp_path / "keys", free_port())))
    port = load_kme_config(config_file).port
    log = open(tmp_path / "kme.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "station", "kme", "--config", str(config_file), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=log, cwd=REPO)
    try:
        assert "listening" in proc.stdout.readline().decode()

        def take(_: int) -> list:
            # A fresh client (connection) each time, so the kernel spreads them over both.
            client = qkdsec_client(pki, pki.master, port)
            try:
                return client.get_enc_keys("sae-b", number=1)
            finally:
                client.close()

        with ThreadPoolExecutor(8) as ex:
            got = [k for ks in ex.map(take, range(n_blocks)) for k in ks]
        assert len(got) == n_blocks and len({k.key_id for k in got}) == n_blocks
        assert all(k.key == keys[k.key_id] for k in got)
        with pytest.raises(KMEHTTPError):
            take(0)
        slave = qkdsec_client(pki, pki.slave, port)
        back = slave.get_dec_keys("sae-a", key_ids=[k.key_id for k in got[:8]])
        assert [b.key for b in back] == [k.key for k in got[:8]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc.stdout.close()
        log.close()


@pytest.mark.parametrize("links, saes, why", [
    ([{"master_sae_id": "x", "slave_sae_id": "y", "peer": "p"}], ["a"], "neither SAE"),
    ([{"master_sae_id": "a", "slave_sae_id": "y", "peer": "p"}], ["a"], "target_kme_id"),
    ([{"master_sae_id": "a", "slave_sae_id": "a", "peer": "p"}], ["a"], "the same"),
    ([{"master_sae_id": "a", "slave_sae_id": "y", "peer": "p", "target_kme_id": "k"},
      {"master_sae_id": "a", "slave_sae_id": "b", "peer": "p"}], ["a", "b"], "of its own"),
    ([{"master_sae_id": "a", "slave_sae_id": "b", "peer": "p"}] * 2, ["a", "b"], "twice"),
])
def test_config_refuses_links_that_break_once_only_delivery(pki, tmp_path, links, saes, why):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=why):
        KmeConfig.model_validate({
            "kme_id": "k1", "store_dir": tmp_path, "links": links,
            "tls": {"certificate": pki.server.cert, "private_key": pki.server.key,
                    "client_ca": pki.ca_file},
            "saes": [{"sae_id": s, "subject_cn": s} for s in saes]})


def test_kme_config_round_trips_through_toml(pki, tmp_path):
    cfg = kme_config(pki, tmp_path / "keys", 8443)
    path = tmp_path / "kme.toml"
    path.write_text(dump_kme_config(cfg))
    assert load_kme_config(path) == cfg


def test_kme_config_with_mqtt_round_trips_through_toml(pki, tmp_path):
    cfg = kme_config(pki, tmp_path / "keys", 8443).model_copy(update={"mqtt": LevelsMqttConfig(
        station_id="beijing-sim", interval_s=2.5, peers=["jinan1-sim", "stellenbosch-sim"])})
    path = tmp_path / "kme.toml"
    path.write_text(dump_kme_config(cfg))
    assert load_kme_config(path) == cfg
