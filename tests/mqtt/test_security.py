"""Real Mosquitto with the shipped config/mosquitto/ ACL and config, TLS with certificates
made here (openssl), passwords made by mosquitto_passwd: a dashboard cannot command the
station (the broker drops its publish; no reply, no motion) while an operator can."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from station.mqtt.service import MqttService
from tests.conftest import REPO, Broker, _start_mosquitto, find_tool, free_port
from tests.mqtt.helpers import LabStation, collector, make_cfg

STATION = "xinglong"  # the station user of the shipped ACL
PASSWORDS = {"xinglong": "station-secret", "operator": "op-secret", "dashboard": "dash-secret"}


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([find_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, *, ca_only: bool = False) -> Pki:
    """A CA, a broker certificate for 127.0.0.1/localhost and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in () if ca_only else (("server", "localhost"), ("client", STATION)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d)
    return Pki(d / "ca.crt", d / "client.crt", d / "client.key")


def shipped_conf(d: Path, port: int) -> str:
    """config/mosquitto/mosquitto.conf with its file paths and port pointed into ``d``."""
    paths = {"password_file": d / "passwd", "acl_file": REPO / "config/mosquitto/acl",
             "cafile": d / "ca.crt", "certfile": d / "server.crt", "keyfile": d / "server.key",
             "persistence_location": f"{d}/"}
    out = []
    for line in (REPO / "config/mosquitto/mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in paths:
            line = f"{key} {paths[key]}"
        elif key == "listener":
            line = f"listener {port} 127.0.0.1"
        out.append(line)
    # Started as root, mosquitto would switch to its own user, who cannot read pytest's tmp.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    return "\n".join(out) + f"\nlog_dest stderr\nlog_type error\n{run_as}"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[tuple[Broker, Pki]]:
    d = tmp_path_factory.mktemp("secure-mqtt")
    pki = make_pki(d)
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in PASSWORDS.items():
        subprocess.run([find_tool("mosquitto_passwd"), "-b", str(passwd), user, pw], check=True)
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(shipped_conf(d, port))
    broker = Broker("127.0.0.1", port, _start_mosquitto(conf, port), conf)
    yield broker, pki
    broker.stop()


def tls_client(broker: Broker, pki: Pki, user: str | None, password: str | None = None) -> dict:
    return {"hostname": "127.0.0.1", "port": broker.port, "username": user,
            "password": password if password is not None else PASSWORDS.get(user or ""),
            "tls_params": aiomqtt.TLSParameters(ca_certs=str(pki.ca)), "timeout": 5}


def test_shipped_acl_has_the_three_roles():
    acl = (REPO / "config/mosquitto/acl").read_text()
    users = re.findall(r"^user (\S+)", acl, re.M)
    assert users == ["xinglong", "operator", "dashboard"]
    dashboard = acl.split("user dashboard", 1)[1]
    assert "write" not in dashboard  # read-only


async def test_dashboard_cannot_command_operator_can(secure_broker, tmp_path, clock, station: LabStation):
    broker, pki = secure_broker
    pw_file = tmp_path / "station-password"
    pw_file.write_text(PASSWORDS[STATION] + "\n")
    cfg = make_cfg(tmp_path, "127.0.0.1", broker.port, station_id=STATION, username=STATION,
                   password_file=pw_file,
                   tls={"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key})
    prefix = f"qkd/{STATION}"
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()

        async with collector(**tls_client(broker, pki, "dashboard"), topics=(f"{prefix}/#",)) as dash, \
                collector(**tls_client(broker, pki, "operator"), topics=(f"{prefix}/reply/#",)) as op:
            # The dashboard reads the station's tree ...
            await dash.wait_for(lambda: dash.payloads(f"{prefix}/status"))
            assert dash.payloads(f"{prefix}/status") == [b"online"]
            # ... but its commands and a forged status never get through.
            await dash.client.publish(f"{prefix}/cmd/goto",
                                      json.dumps({"request_id": "dash-1", "az_deg": 90, "el_deg": 45}),
                                      qos=1)
            await dash.client.publish(f"{prefix}/status", b"offline", qos=1, retain=True)
            # The operator can: set manual mode, then move the telescope.
            for rid, verb, args in (("op-1", "set_mode", {"mode": "manual"}),
                                    ("op-2", "goto", {"az_deg": 45.0, "el_deg": 30.0})):
                await op.client.publish(f"{prefix}/cmd/{verb}",
                                        json.dumps({"request_id": rid, **args}), qos=1)
                await op.wait_for(lambda rid=rid: op.payloads(f"{prefix}/reply/{rid}"))
                assert op.json(f"{prefix}/reply/{rid}")[0]["ok"] is True

        assert station.calls == [("set_mode", "manual"), ("goto", (45.0, 30.0))]
        assert [(c.kind, c.az_deg, c.el_deg) for c in station.mount.commands] == [("slew", 45.0, 30.0)]
        assert service.dispatcher.stats.received == 2
        assert dash.payloads(f"{prefix}/reply/dash-1") == []
        assert dash.payloads(f"{prefix}/status") == [b"online"]


@pytest.mark.parametrize(("user", "password"), [(None, None), ("operator", "wrong"), ("intruder", "x")])
async def test_anonymous_and_bad_passwords_are_refused(secure_broker, user, password):
    broker, pki = secure_broker
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(**tls_client(broker, pki, user, password or "")):
            pass


async def test_a_broker_certificate_from_another_ca_is_refused(secure_broker, tmp_path, clock):
    broker, _ = secure_broker
    other = make_pki(tmp_path, ca_only=True)  # a CA the broker's certificate was not signed by
    cfg = make_cfg(tmp_path, "127.0.0.1", broker.port, station_id=STATION, username=STATION,
                   password=PASSWORDS[STATION], tls={"ca_file": other.ca})
    async with MqttService(cfg, clock) as service:
        for _ in range(200):
            if service.stats.connect_failures:
                break
            await asyncio.sleep(0.02)
        assert service.stats.connect_failures >= 1 and not service.connected
        assert "certificate" in service.stats.last_error.lower()
