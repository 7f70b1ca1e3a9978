"""The web view over HTTPS with a real certificate made here: Secure cookies, HSTS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO, free_port, stop_process, wait_for_port
from tests.web.conftest import OPERATOR


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qkd-station web test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "web.crt", tmp / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.slow
def test_https_login_sets_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "QKD_STATION__STATE_DIR": str(tmp_path / "state"),
           "QKD_STATION__MQTT__PORT": str(free_port()), "QKD_STATION__MQTT__EMBEDDED": "false",
           "QKD_STATION__WEB__PORT": str(port), "QKD_STATION__WEB__ANONYMOUS_VIEW": "false",
           "QKD_STATION__WEB__TLS": json.dumps({"cert_file": str(cert), "key_file": str(key)})}
    env.pop("NOTIFY_SOCKET", None)
    # On its own, without a broker: the page and logins work; commands say the broker is away.
    proc = subprocess.Popen([sys.executable, "-m", "station", "web", "--config",
                             str(REPO / "config" / "sim.toml")], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout_s=60)
        ctx = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/session", context=ctx, timeout=30) as resp:
            assert json.loads(resp.read())["may_view"] is False   # accounts, no anonymous view
            assert "max-age" in resp.headers["Strict-Transport-Security"]
        req = urllib.request.Request(f"{base}/api/login", method="POST",
                                     data=json.dumps({"name": OPERATOR[0], "password": OPERATOR[1]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            cookie = resp.headers["Set-Cookie"]
            csrf = json.loads(resp.read())["csrf"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        req = urllib.request.Request(f"{base}/api/cmd/park", method="POST", data=b"{}", headers={
            "Content-Type": "application/json", "Cookie": cookie.split(";", 1)[0], "X-CSRF-Token": csrf})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=30)
            raise AssertionError("a command without a broker should not succeed")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["error"]["code"] == "broker_unavailable"
        # Plain HTTP to the HTTPS port gets nothing useful.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=10).read()
    finally:
        stop_process(proc)
