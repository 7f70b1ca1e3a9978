"""Configuration of one key manager (KME): its TLS material, its SAEs and its key links.

A KME config is a TOML file of its own (``qkd-station kme --config FILE``); relative paths
in it are relative to the file. See docs/key-delivery.md for every field.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError, model_validator

from postprocessing.keystore import DEFAULT_BLOCK_BITS
from postprocessing.kme.levels import LevelsMqttConfig
from station.config.base import CONFIG_DIR, ConfigPath, Strict
from station.config.loader import ConfigError, format_errors

_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _fingerprint(value: str) -> str:
    hexed = value.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexed):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits (colons allowed)")
    return hexed


Fingerprint = Annotated[str, AfterValidator(_fingerprint)]


class TlsConfig(Strict):
    """The KME's server certificate and the CA that signs its SAEs' client certificates."""

    certificate: ConfigPath = Field(description="PEM server certificate (chain).")
    private_key: ConfigPath = Field(description="PEM private key of the server certificate.")
    client_ca: ConfigPath = Field(description="PEM CA certificate(s) SAE client certs must chain to.")


class SaeConfig(Strict):
    """An SAE served by this KME, recognised by its client certificate."""

    sae_id: str = Field(pattern=_ID_RE)
    certificate_sha256: Fingerprint | None = Field(
        default=None, description="SHA-256 of the SAE's DER client certificate (preferred)."
    )
    subject_cn: str | None = Field(
        default=None, description="Subject common name of the SAE's client certificate."
    )

    @model_validator(mode="after")
    def _one_identity(self) -> SaeConfig:
        if self.certificate_sha256 is None and self.subject_cn is None:
            raise ValueError(f"SAE {self.sae_id!r} needs certificate_sha256 or subject_cn")
        return self


class LinkConfig(Strict):
    """A (master SAE → slave SAE) pair and the key store peer whose blocks serve it."""

    master_sae_id: str = Field(pattern=_ID_RE)
    slave_sae_id: str = Field(pattern=_ID_RE)
    peer: str = Field(description="Key-store peer (the other end of the QKD or relayed key).")
    target_kme_id: str | None = Field(
        default=None, description="KME of the slave SAE (status' target_KME_ID); "
        "default: this KME when the slave is local, else required.",
    )
    source_kme_id: str | None = Field(
        default=None, description="KME of the master SAE, when the master is remote."
    )


class KmeConfig(Strict):
    """One KME: where it listens, its TLS material, its store, its SAEs and links."""

    kme_id: str = Field(pattern=_ID_RE)
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535, description="0: any free port (tests).")
    reuse_port: bool = Field(False, description="SO_REUSEPORT (several worker processes).")
    store_dir: ConfigPath = Field(description="The station's key store (postprocessing.keystore).")
    tls: TlsConfig
    saes: list[SaeConfig] = Field(min_length=1)
    links: list[LinkConfig] = Field(min_length=1)
    key_size_bits: int = Field(DEFAULT_BLOCK_BITS, description="Default key size (= block size).")
    min_key_size_bits: int = Field(8, ge=8)
    max_key_per_request: int = Field(128, ge=1, le=4096)
    max_key_count: int = Field(1_000_000, ge=1, description="Reported capacity (status).")
    max_request_bytes: int = Field(65536, ge=1024, le=1 << 22)
    max_json_depth: int = Field(8, ge=3, le=64)
    mqtt: LevelsMqttConfig | None = Field(
        default=None, description="Publish the store's levels and low-store alarms (numbers only).")

    @model_validator(mode="after")
    def _consistent(self) -> KmeConfig:
        if self.key_size_bits % 8 or self.min_key_size_bits % 8:
            raise ValueError("key sizes must be multiples of 8 bits")
        if self.min_key_size_bits > self.key_size_bits:
            raise ValueError("min_key_size_bits exceeds key_size_bits")
        ids = [s.sae_id for s in self.saes]
        if len(set(ids)) != len(ids):
            raise ValueError("an SAE ID appears twice in [[saes]]")
        local = set(ids)
        pairs = set()
        for link in self.links:
            pair = (link.master_sae_id, link.slave_sae_id)
            if pair in pairs:
                raise ValueError(f"link {pair[0]} -> {pair[1]} appears twice")
            pairs.add(pair)
            if link.master_sae_id == link.slave_sae_id:
                raise ValueError(f"link {pair[0]} -> {pair[1]}: master and slave are the same")
            m_local, s_local = link.master_sae_id in local, link.slave_sae_id in local
            if not (m_local or s_local):
                raise ValueError(f"link {pair[0]} -> {pair[1]}: neither SAE is served here")
            if not s_local and link.target_kme_id is None:
                raise ValueError(f"link {pair[0]} -> {pair[1]}: remote slave needs target_kme_id")
            if not (m_local and s_local):
                # Without a KME-to-KME link, a key's binding to one slave rests on a peer's
                # store serving one remote pair only (docs/key-delivery.md).
                if any(lk.peer == link.peer for lk in self.links if lk is not link):
                    raise ValueError(
                        f"peer {link.peer!r} serves a link with a remote SAE and another link;"
                        " a remote pair needs a peer store of its own"
                    )
        return self

    def is_local(self, sae_id: str) -> bool:
        return any(s.sae_id == sae_id for s in self.saes)

    def link(self, master: str, slave: str) -> LinkConfig | None:
        for lk in self.links:
            if lk.master_sae_id == master and lk.slave_sae_id == slave:
                return lk
        return None


def load_kme_config(path: str | Path) -> KmeConfig:
    """Load a KME TOML file; :class:`ConfigError` names every problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"(file): not valid TOML: {exc}"]) from None
    token = CONFIG_DIR.set(path.resolve().parent)
    try:
        return KmeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc)) from None
    finally:
        CONFIG_DIR.reset(token)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # a Python float repr is a valid TOML float (finite values only)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {type(v).__name__} to a KME config")


def dump_kme_config(config: KmeConfig) -> str:
    """TOML text of ``config`` (absolute paths), readable back by :func:`load_kme_config`."""
    data = config.model_dump(exclude_none=True)
    lines = []
    tables = {k: data.pop(k) for k in ("tls", "saes", "links")}
    mqtt = data.pop("mqtt", None)
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items()]
    lines.append("\n[tls]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in tables["tls"].items()]
    if mqtt is not None:
        lines.append("\n[mqtt]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in mqtt.items() if not isinstance(v, list)]
        if mqtt.get("peers"):
            lines.append("peers = [" + ", ".join(_toml_value(v) for v in mqtt["peers"]) + "]")
    for name in ("saes", "links"):
        for item in tables[name]:
            lines.append(f"\n[[{name}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"
