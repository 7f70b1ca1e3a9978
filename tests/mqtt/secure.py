"""Real Mosquitto with the shipped config/mosquitto/ files: mosquitto.conf (TLS, passwords,
client ids bound to accounts) and the ACL, certificates made here with openssl, passwords
made by mosquitto_passwd. Used by test_security.py and test_hostile.py."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from station.config.root import StationConfig
from tests.conftest import REPO, Broker, _start_mosquitto, find_tool, free_port
from tests.mqtt.helpers import make_cfg

STATION = "xinglong"  # the station user of the shipped ACL
PREFIX = f"qkd/{STATION}"
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


def shipped_conf(d: Path, port: int, extra: str = "", replace: dict[str, str] | None = None) -> str:
    """config/mosquitto/mosquitto.conf with its file paths and port pointed into ``d``;
    every other line (TLS, client-id binding, limits) exactly as shipped, except the
    settings named in ``replace`` (key -> new value)."""
    paths = {"password_file": d / "passwd", "acl_file": REPO / "config/mosquitto/acl",
             "cafile": d / "ca.crt", "certfile": d / "server.crt", "keyfile": d / "server.key",
             "persistence_location": f"{d}/"}
    out = []
    for line in (REPO / "config/mosquitto/mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in paths:
            line = f"{key} {paths[key]}"
        elif replace and key in replace:
            line = f"{key} {replace[key]}"
        elif key == "listener":
            line = f"listener {port} 127.0.0.1"
        out.append(line)
    # Started as root, mosquitto would switch to its own user, who cannot read pytest's tmp.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    return "\n".join(out) + f"\nlog_dest stderr\nlog_type error\n{run_as}{extra}"


def start_secure_broker(d: Path, replace: dict[str, str] | None = None) -> tuple[Broker, Pki]:
    """The shipped broker on a free loopback port; the caller stops it."""
    pki = make_pki(d)
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in PASSWORDS.items():
        subprocess.run([find_tool("mosquitto_passwd"), "-b", str(passwd), user, pw], check=True)
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(shipped_conf(d, port, replace=replace))
    return Broker("127.0.0.1", port, _start_mosquitto(conf, port), conf), pki


def tls_client(broker: Broker, pki: Pki, user: str | None, password: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for ``user`` on the shipped broker."""
    return {"hostname": "127.0.0.1", "port": broker.port, "username": user,
            "password": password if password is not None else PASSWORDS.get(user or ""),
            "tls_params": aiomqtt.TLSParameters(ca_certs=str(pki.ca)), "timeout": 5, **extra}


def station_cfg(tmp_path: Path, broker: Broker, pki: Pki, **mqtt: Any) -> StationConfig:
    """The station's config for the shipped broker: its own user, password file, TLS."""
    pw_file = tmp_path / "station-password"
    pw_file.write_text(PASSWORDS[STATION] + "\n")
    return make_cfg(tmp_path, "127.0.0.1", broker.port, station_id=STATION, username=STATION,
                    password_file=pw_file,
                    tls={"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key},
                    **mqtt)
