"""The KME the station daemon runs beside itself (``[keys] embedded = true``, ``kme_port``).

At first start this makes demo TLS material in the KME's directory (``tls/``, 0700): a CA,
the KME's server certificate and one demo SAE client certificate (``demo-sae``), private
keys 0600, and the CA's key is never written (no one can issue more certificates from
it). Every start then writes the KME's config (``kme.toml``, 0600) from the station's config: the station's key store, one link from the
demo SAE to the satellite's application (keys shared with the satellite, whole blocks),
and the levels publisher on the station's broker. A real station uses its operator's PKI
and its own KME config (docs/key-delivery.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from postprocessing.kme.config import KmeConfig, dump_kme_config
from postprocessing.kme.levels import LevelsMqttConfig
from postprocessing.kme.pki import CertificateAuthority

DEMO_SAE = "demo-sae"
#: The demo PKI's lifetime: a simulation's state directory lives for months.
DEMO_VALID_DAYS = 825


def _files(tls: Path, kme_id: str) -> dict[str, Path]:
    return {"ca": tls / "ca.crt", "server_cert": tls / f"{kme_id}.crt",
            "server_key": tls / f"{kme_id}.key", "sae_cert": tls / f"{DEMO_SAE}.crt",
            "sae_key": tls / f"{DEMO_SAE}.key"}


def ensure_demo_pki(tls: Path, kme_id: str) -> dict[str, Path]:
    """The demo CA, server and SAE certificates in ``tls``, made once; their paths."""
    files = _files(tls, kme_id)
    if all(p.is_file() for p in files.values()):
        return files
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(tls, 0o700)
    ca = CertificateAuthority(f"{kme_id}-demo-ca", valid_days=DEMO_VALID_DAYS)
    ca.issue(kme_id, tls, server=True)
    ca.issue(DEMO_SAE, tls)
    ca.write_cert(files["ca"])  # last: its presence means the set is whole
    return files


def _sha256(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def write_embedded_kme_config(directory: Path, *, station_id: str, port: int, store_dir: Path,
                              satellite: str, mqtt: LevelsMqttConfig | None) -> Path:
    """Make the demo PKI if missing and write ``directory/kme.toml``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    kme_id = f"{station_id}-kme"
    files = ensure_demo_pki(directory / "tls", kme_id)
    config = KmeConfig.model_validate({
        "kme_id": kme_id, "host": "127.0.0.1", "port": port, "store_dir": store_dir,
        "tls": {"certificate": files["server_cert"], "private_key": files["server_key"],
                "client_ca": files["ca"]},
        "saes": [{"sae_id": DEMO_SAE, "certificate_sha256": _sha256(files["sae_cert"])}],
        "links": [{"master_sae_id": DEMO_SAE, "slave_sae_id": f"{satellite}-sae",
                   "peer": satellite, "target_kme_id": f"{satellite}-kme"}],
        "mqtt": mqtt,
    })
    path = directory / "kme.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(dump_kme_config(config))
    os.chmod(path, 0o600)
    return path


__all__ = ["DEMO_SAE", "ensure_demo_pki", "write_embedded_kme_config"]
